//! `cargo xtask test`: the lint, then every test, in the order that makes a failure cheapest to
//! read. CI runs exactly this. `--quick` is the inner loop: the lint and every test that needs
//! neither PostgreSQL nor a browser (the payload contract, the delivery core and the whole HTTP
//! API on the in-memory store, the harness, the tools, the widget's client tests).

use std::process::Command;

use anyhow::Result;

use crate::cmd;
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Only what needs no PostgreSQL server and no browser: under two minutes once built.
    #[arg(long)]
    quick: bool,
}

/// The crates whose tests need no PostgreSQL server and no browser.
const QUICK_CRATES: &[&str] = &[
    "threadcast-payload",
    "threadcast-broadcaster",
    "threadcast-harness",
    "xtask",
    "threadcast-loadgen",
];

pub fn run(args: Args) -> Result<()> {
    if args.quick {
        return quick();
    }
    setup::run()?;
    crate::lint::run()?;
    let repo = cmd::repo();
    let pg_ext = repo.join("pg_ext");

    // 1. The #[pg_test]s, inside a PostgreSQL that cargo-pgrx starts as `postgres`.
    let pgdata = std::env::temp_dir().join("threadcast-pgrx-test-pgdata");
    std::fs::create_dir_all(&pgdata)?;
    cmd::run(
        cmd::privileged("chown")
            .arg("postgres:postgres")
            .arg(&pgdata),
    )?;
    cmd::run(
        Command::new("cargo")
            .current_dir(&pg_ext)
            .args(["pgrx", "test", "pg15", "--runas", "postgres", "--pgdata"])
            .arg(&pgdata),
    )?;

    // 2. The extension into Debian's PostgreSQL 15, for the black-box tests' own clusters.
    let mut install = Command::new("cargo");
    install
        .current_dir(&pg_ext)
        .args(["pgrx", "install", "--pg-config", &setup::pg_config()]);
    if !cmd::is_root() {
        install.arg("--sudo");
    }
    cmd::run(&mut install)?;
    install_upgrade_fixture()?;

    // 3. The payload contract, the broadcaster, and the black-box and browser tests in tests/
    // (the dashboard's browser tests build its React page with the widget's esbuild).
    widget_deps()?;
    cmd::run(Command::new("cargo").current_dir(&repo).arg("test"))?;

    // 4. The widget's client tests (Node's test runner; no browser).
    widget()
}

/// The widget's npm dependencies (esbuild, React), exactly as its lock file says.
fn widget_deps() -> Result<()> {
    cmd::run(
        Command::new("npm")
            .current_dir(cmd::repo().join("widget"))
            .args(["ci", "--no-audit", "--no-fund"]),
    )
}

/// The released 0.1.0's install script, which the upgrade tests (`tests/it/upgrade.rs`) start
/// from. It is a test fixture, not part of the package: nobody should install 0.1.0 anew.
fn install_upgrade_fixture() -> Result<()> {
    let sharedir = cmd::output(Command::new(setup::pg_config()).arg("--sharedir"))?;
    let script = "threadcast--0.1.0.sql";
    let target = std::path::Path::new(sharedir.trim())
        .join("extension")
        .join(script);
    cmd::run(
        cmd::privileged("cp")
            .arg(cmd::repo().join("tests/fixtures").join(script))
            .arg(&target),
    )
}

fn quick() -> Result<()> {
    let started = std::time::Instant::now();
    crate::lint::run()?;
    let mut test = Command::new("cargo");
    test.current_dir(cmd::repo()).arg("test");
    for krate in QUICK_CRATES {
        test.args(["-p", krate]);
    }
    cmd::run(&mut test)?;
    widget()?;
    eprintln!("quick tests passed in {:.0?}", started.elapsed());
    Ok(())
}

fn widget() -> Result<()> {
    widget_deps()?;
    cmd::run(
        Command::new("npm")
            .current_dir(cmd::repo().join("widget"))
            .arg("test"),
    )
}
