//! Where `cargo xtask` keeps its throwaway clusters (the `Cluster` type itself is the harness's,
//! shared with the tests): under `target/` when `postgres` can reach that folder (a checkout in
//! /root cannot be reached), and under /tmp otherwise. The folder stays after a run, with the
//! server's log.

use std::path::{Path, PathBuf};

use anyhow::Result;
pub use threadcast_harness::Cluster;

use std::process::Command;

use threadcast_harness::cluster::as_postgres;

use crate::cmd;

fn postgres_can_use(dir: &Path) -> bool {
    as_postgres(Command::new("test").arg("-x").arg(dir))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Creates a fresh cluster named `name` (an old one of that name is removed) and starts it with
/// the given extra settings.
pub fn create(name: &str, settings: &[(&str, &str)]) -> Result<Cluster> {
    let target = cmd::repo().join("target");
    std::fs::create_dir_all(&target)?;
    let base = if postgres_can_use(&target) {
        target
    } else {
        PathBuf::from("/tmp")
    };
    Ok(Cluster::create(
        &base.join(format!("threadcast-pg-{name}")),
        settings,
    )?)
}
