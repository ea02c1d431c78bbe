//! `cargo xtask setup`: installs what is missing on a Debian 12 machine, and nothing that is
//! already there, so that it is cheap to run before every demo and test.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{self, privileged};

/// Debian's PostgreSQL 15: never a downloaded build.
pub const PG_CONFIG: &str = "/usr/lib/postgresql/15/bin/pg_config";

/// Must equal the pgrx pin in Cargo.toml: cargo-pgrx refuses a pgrx that differs from it.
pub const PGRX_VERSION: &str = "0.18.0";

const APT_PACKAGES: &[&str] = &[
    "postgresql-15",
    "postgresql-server-dev-15",
    "libclang-dev",
    "clang",
    "pkg-config",
    "build-essential",
    "sudo",
    // Browser tests drive Debian's Chromium through its WebDriver; no browser is downloaded.
    "chromium",
    "chromium-driver",
    // The deploy tests run deploy/nginx/ in Debian's nginx, and make Chromium trust their test CA
    // with certutil.
    "nginx",
    "libnss3-tools",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn run() -> Result<()> {
    let mut missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !cmd::has("node") || !cmd::has("npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if !missing.is_empty() {
        eprintln!("installing {}", missing.join(" "));
        cmd::run(privileged("apt-get").arg("update").arg("-q"))?;
        cmd::run(
            privileged("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }

    let pgrx = cmd::output(Command::new("cargo").args(["pgrx", "--version"])).unwrap_or_default();
    if !pgrx.contains(PGRX_VERSION) {
        eprintln!("installing cargo-pgrx {PGRX_VERSION} (about 6 minutes on 2 cores)");
        cmd::run(Command::new("cargo").args([
            "install",
            "cargo-pgrx",
            "--version",
            PGRX_VERSION,
            "--locked",
        ]))?;
    }

    let home = std::env::var("HOME").context("HOME is not set")?;
    let config = std::fs::read_to_string(format!("{home}/.pgrx/config.toml")).unwrap_or_default();
    if !config.contains(PG_CONFIG) {
        cmd::run(Command::new("cargo").args(["pgrx", "init", "--pg15", PG_CONFIG]))?;
    }
    Ok(())
}
