//! No Docker engine runs here, so Dockerfile.postgres is kept honest by reading it: its pins must
//! be the workspace's own.

use std::path::Path;

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The value after `prefix` on the first line that starts with it, up to a quote or a space.
fn pinned(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"));
    line[prefix.len()..]
        .trim_matches(|c| c == '"' || c == '=')
        .split(['"', ' '])
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn dockerfile_builds_with_the_same_pgrx_as_the_workspace() {
    let cargo = pinned(&read("Cargo.toml"), "pgrx = \"=");
    let docker = pinned(&read("Dockerfile.postgres"), "ARG PGRX_VERSION=");
    assert_eq!(
        docker, cargo,
        "Dockerfile.postgres pins cargo-pgrx {docker}, Cargo.toml pins pgrx {cargo}"
    );
    let xtask = pinned(
        &read("xtask/src/setup.rs"),
        "pub const PGRX_VERSION: &str = ",
    );
    assert_eq!(
        xtask, cargo,
        "cargo xtask setup installs cargo-pgrx {xtask}"
    );
}

#[test]
fn dockerfile_uses_the_workspace_toolchain_and_postgresql_15() {
    let rust_version = pinned(&read("Cargo.toml"), "rust-version = ");
    let dockerfile = read("Dockerfile.postgres");
    assert!(
        dockerfile.contains(&format!("FROM rust:{rust_version}-bookworm AS build")),
        "the build stage uses rust {rust_version}"
    );
    assert_eq!(pinned(&dockerfile, "ARG PG_MAJOR="), "15");
    assert!(
        dockerfile.contains("FROM postgres:15-bookworm"),
        "the image is PostgreSQL 15"
    );
    for copied in ["sql/docker-init.sql", "sql/schema.sql"] {
        assert!(
            dockerfile.contains(&format!("COPY {copied} /docker-entrypoint-initdb.d/")),
            "{copied} runs at first start"
        );
        read(copied);
    }
}
