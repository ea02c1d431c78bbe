//! `cargo xtask lint`: formatting and clippy with warnings as errors, over every crate, the
//! extension included (built with its `pg15` feature, which needs PostgreSQL's headers but no
//! server). `cargo xtask test` runs it first, so CI fails on a lint before it spends time on tests.

use std::process::Command;

use anyhow::Result;

use crate::cmd;

pub fn run() -> Result<()> {
    let repo = cmd::repo();
    cmd::run(
        Command::new("cargo")
            .current_dir(&repo)
            .args(["fmt", "--all", "--check"]),
    )?;
    cmd::run(Command::new("cargo").current_dir(&repo).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The extension is not a default member (cargo pgrx builds it); clippy takes it by name.
    cmd::run(Command::new("cargo").current_dir(&repo).args([
        "clippy",
        "-p",
        "threadcast",
        "--all-targets",
        "--no-default-features",
        "--features",
        "pg15 pg_test",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(())
}
