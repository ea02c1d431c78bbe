//! A throwaway PostgreSQL cluster owned by `postgres`, on a free loopback port, for the demo and
//! the benchmarks. It lives under `target/` when `postgres` can reach that folder (a checkout in
//! /root cannot be reached), and under /tmp otherwise.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{self, as_postgres};
use crate::setup::pg_bin;

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn postgres_can_use(dir: &Path) -> bool {
    as_postgres("test")
        .arg("-x")
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Creates a fresh cluster named `name` (an old one of that name is removed) and starts it
    /// with the given extra settings.
    pub fn create(name: &str, settings: &[(&str, &str)]) -> Result<Cluster> {
        let target = cmd::repo().join("target");
        std::fs::create_dir_all(&target)?;
        let base = if postgres_can_use(&target) {
            target
        } else {
            PathBuf::from("/tmp")
        };
        let dir = base.join(format!("threadcast-pg-{name}"));
        if dir.exists() {
            // A cluster left running by an interrupted run would hold the folder.
            let _ = cmd::output(
                as_postgres(format!("{}/pg_ctl", pg_bin()))
                    .arg("stop")
                    .arg("-m")
                    .arg("immediate")
                    .arg("-D")
                    .arg(dir.join("data")),
            );
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        cmd::run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        cmd::output(
            as_postgres(format!("{}/initdb", pg_bin()))
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
                .arg(dir.join("data")),
        )?;

        let port = free_port()?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        cmd::run(
            as_postgres(format!("{}/pg_ctl", pg_bin()))
                .args(["start", "-w", "-s", "-D"])
                .arg(dir.join("data"))
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .arg("-o")
                .arg(options),
        )?;
        Ok(Cluster { dir, port })
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs psql against `db` with `args`, stopping at the first error.
    pub fn psql(&self, db: &str) -> Command {
        let mut c = Command::new(format!("{}/psql", pg_bin()));
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db);
        c
    }

    /// Creates a database with the extension installed.
    pub fn create_db(&self, db: &str) -> Result<()> {
        cmd::output(
            self.psql("postgres")
                .arg("-c")
                .arg(format!("CREATE DATABASE {db}")),
        )?;
        Ok(())
    }

    pub fn stop(&self) {
        let _ = cmd::output(
            as_postgres(format!("{}/pg_ctl", pg_bin()))
                .args(["stop", "-m", "fast", "-s", "-D"])
                .arg(self.dir.join("data")),
        );
    }
}
