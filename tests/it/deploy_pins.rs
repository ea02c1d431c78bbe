//! No Docker engine runs here, so Dockerfile.broadcaster and compose.yaml are kept honest by
//! reading them against what they build and run: the workspace, the broadcaster's sources, and the
//! nginx configuration that tests/it/deploy.rs runs.

use std::path::Path;

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn exists(file: &str) -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(file)
        .exists()
}

/// The quoted strings of the first line starting with `key` in a TOML manifest (`members = [...]`).
fn toml_strings(text: &str, key: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in the manifest"));
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The value after `prefix` on the first line that starts with it (trimmed), up to a quote.
fn after(text: &str, prefix: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// The sources of every `COPY` of the build stage (not `COPY --from`).
fn copied(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn covered(path: &str, copies: &[String]) -> bool {
    copies
        .iter()
        .any(|c| path == c || path.starts_with(&format!("{}/", c.trim_end_matches('/'))))
}

/// The part of the Dockerfile after its last `FROM`: what the image runs.
fn run_stage(dockerfile: &str) -> &str {
    let start = dockerfile.rfind("\nFROM ").expect("a run stage");
    &dockerfile[start..]
}

#[test]
fn broadcaster_image_builds_with_the_workspace_toolchain_and_lock_file() {
    let dockerfile = read("Dockerfile.broadcaster");
    let rust_version = after(&read("Cargo.toml"), "rust-version = ");
    assert!(
        dockerfile.contains(&format!("FROM rust:{rust_version}-bookworm AS build")),
        "the build stage uses rust {rust_version}, the workspace's rust-version"
    );
    assert!(
        dockerfile.contains("cargo build --release --locked -p threadcast-broadcaster"),
        "the image builds the release binary from Cargo.lock as committed"
    );
}

#[test]
fn broadcaster_image_copies_every_workspace_member_and_every_file_compiled_into_the_binary() {
    let dockerfile = read("Dockerfile.broadcaster");
    let copies = copied(&dockerfile);
    assert!(covered("Cargo.lock", &copies), "Cargo.lock is copied");
    for member in toml_strings(&read("Cargo.toml"), "members") {
        assert!(
            covered(&member, &copies),
            "workspace member {member} is copied (cargo loads every member): {copies:?}"
        );
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broadcaster/src");
    let mut included = Vec::new();
    for entry in walk(&sources) {
        let text = std::fs::read_to_string(&entry).unwrap();
        for piece in text.split("include_str!(\"").skip(1) {
            let relative = piece.split('"').next().unwrap();
            // Relative to the including file: broadcaster/src/x.rs -> ../../widget/... is widget/...
            let resolved = entry.parent().unwrap().join(relative);
            let resolved = resolved.canonicalize().unwrap_or_else(|e| {
                panic!(
                    "{} includes {relative}, which is missing: {e}",
                    entry.display()
                )
            });
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .canonicalize()
                .unwrap();
            included.push(resolved.strip_prefix(&root).unwrap().display().to_string());
        }
    }
    assert!(
        !included.is_empty(),
        "the broadcaster compiles the widget in"
    );
    for file in included {
        assert!(
            covered(&file, &copies),
            "{file} (include_str!) is copied: {copies:?}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn broadcaster_image_runs_as_a_non_root_user_and_listens_beyond_loopback() {
    let dockerfile = read("Dockerfile.broadcaster");
    let run = run_stage(&dockerfile);
    assert!(
        run.contains("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "a small base without a shell or a package manager"
    );
    let user = after(run, "USER ");
    assert!(
        !user.is_empty() && !user.starts_with("root") && !user.starts_with('0'),
        "the image runs as a user other than root, not {user:?}"
    );
    let addr = after(run, "ENV THREADCAST_ADDR=");
    assert!(
        addr.starts_with("0.0.0.0:"),
        "a container listens on every interface: {addr}"
    );
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(
        after(run, "EXPOSE "),
        port,
        "EXPOSE names the port it listens on"
    );
}

#[test]
fn nothing_in_the_workspace_builds_openssl_or_another_c_tls_library() {
    let lock = read("Cargo.lock");
    for c_library in ["openssl-sys", "aws-lc-sys", "native-tls"] {
        assert!(
            !lock.contains(&format!("name = \"{c_library}\"")),
            "Cargo.lock has {c_library}: TLS must stay rustls on ring"
        );
    }
}

#[test]
fn compose_runs_both_images_and_nginx_with_the_tested_configuration() {
    let compose = read("compose.yaml");
    let version = after(&read("Cargo.toml"), "version = ");
    for (dockerfile, image) in [
        ("Dockerfile.postgres", "threadcast-postgres"),
        ("Dockerfile.broadcaster", "threadcast-broadcaster"),
    ] {
        assert!(
            compose.contains(&format!("dockerfile: {dockerfile}")),
            "compose builds {dockerfile}"
        );
        assert!(
            compose.contains(&format!("image: {image}:{version}")),
            "{image} is tagged with the workspace version {version}"
        );
    }
    // Every file mounted from the repository exists (the certificates are the operator's).
    for line in compose.lines().map(str::trim) {
        if let Some(mount) = line.strip_prefix("- ./") {
            let local = mount.split(':').next().unwrap();
            if local != "certs" {
                assert!(
                    exists(local),
                    "compose.yaml mounts ./{local}, which is missing"
                );
            }
        }
    }
    assert!(
        compose.contains("- ./deploy/nginx/threadcast.conf:/etc/nginx/conf.d/threadcast.conf:ro"),
        "nginx runs the configuration the deploy tests run"
    );
    let nginx_image = after(&compose, "image: nginx:");
    assert!(
        nginx_image.starts_with("1.22.") && nginx_image.split('.').count() == 3,
        "nginx is pinned to an exact 1.22 release, the Debian 12 line the tests run: {nginx_image}"
    );
}

#[test]
fn compose_publishes_the_replicas_where_the_nginx_configuration_expects_them() {
    let compose = read("compose.yaml");
    let nginx = read("deploy/nginx/threadcast.conf");
    let upstreams: Vec<String> = nginx
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("server "))
        .filter(|l| l.starts_with("127.0.0.1:"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(upstreams.len(), 2, "two replicas upstream: {upstreams:?}");
    let container_port = after(&read("Dockerfile.broadcaster"), "EXPOSE ");
    for upstream in &upstreams {
        assert!(
            compose.contains(&format!("- \"{upstream}:{container_port}\"")),
            "a broadcaster is published on {upstream}, where nginx sends requests"
        );
    }
    assert!(
        compose.contains("network_mode: host"),
        "nginx reaches the published ports"
    );
    // Each stream is a file descriptor: the limit must exceed the streams a replica accepts.
    let max: u64 = after(&compose, "THREADCAST_MAX_CONNECTIONS:")
        .parse()
        .unwrap();
    let nofile: u64 = after(&compose, "soft:").parse().unwrap();
    assert!(
        nofile > max,
        "nofile {nofile} leaves room above {max} streams"
    );
}

/// `Key=value` of a systemd unit (the first one with that key).
fn unit_value(unit: &str, key: &str) -> String {
    after(unit, &format!("{key}="))
}

#[test]
fn the_systemd_unit_runs_unprivileged_replicas_where_nginx_sends_requests_with_room_for_their_streams(
) {
    let unit = read("deploy/systemd/threadcast-broadcaster@.service");
    let nofile: u64 = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    let max: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=THREADCAST_MAX_CONNECTIONS="))
        .expect("the unit sets THREADCAST_MAX_CONNECTIONS")
        .parse()
        .unwrap();
    assert!(
        nofile >= max + 1000,
        "LimitNOFILE {nofile} leaves 1,000 descriptors above {max} streams"
    );
    assert_eq!(
        unit_value(&unit, "DynamicUser"),
        "yes",
        "no root, no fixed user"
    );
    assert!(
        unit.contains("Environment=THREADCAST_ADDR=127.0.0.1:%i"),
        "the instance name is the replica's port"
    );
    assert!(
        unit.contains("THREADCAST_JWT_SECRET_FILE=%d/jwt-secret"),
        "the secret comes as a credential file, not in the environment"
    );
    // The replicas nginx expects are instances of this unit.
    let nginx = read("deploy/nginx/threadcast.conf");
    for line in nginx
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server 127.0.0.1:"))
    {
        let port = line["server 127.0.0.1:".len()..]
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            port.parse::<u16>().is_ok(),
            "nginx upstream port {port} is a unit instance name"
        );
    }
}
