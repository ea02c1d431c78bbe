//! A throwaway PostgreSQL 15 cluster: initdb in a folder owned by `postgres`, started on a free
//! loopback port. The tests start theirs in a temp folder and remove it on drop (one shared per
//! test binary, [`Cluster::shared`]); `cargo xtask` keeps its own under `target/` for the logs.
//! `PG_BIN` names the folder of the PostgreSQL binaries when it is not Debian's.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Debian's PostgreSQL 15 binaries, unless `PG_BIN` says otherwise.
pub const DEBIAN_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Settings for test clusters: nothing waits for the disk, there is room for many connections.
pub const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "300"),
];

/// The path of PostgreSQL tool `tool`.
pub fn pg_bin(tool: &str) -> PathBuf {
    let dir =
        std::env::var_os("PG_BIN").map_or_else(|| PathBuf::from(DEBIAN_PG_BIN), PathBuf::from);
    dir.join(tool)
}

/// A command that failed, with what it printed and the server's log.
#[derive(Debug)]
pub struct ClusterError(String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// A running PostgreSQL server of its own. Dropping it stops it (and removes its folder when it
/// was made by [`Cluster::start`]).
pub struct Cluster {
    root: PathBuf,
    port: u16,
    options: String,
    remove_on_drop: bool,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop_and_remove();
    }
}

impl Cluster {
    /// The cluster shared by every test of this process, started on first use and stopped when
    /// the process exits (statics are never dropped, hence `atexit`).
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let cluster = Cluster::start();
            // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
            unsafe { libc::atexit(stop_shared_cluster) };
            cluster
        })
    }

    /// A new test cluster in a temp folder, removed on drop; panics with the server's log if it
    /// cannot start.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Like [`Cluster::start`], with `extra` settings besides the test ones (`wal_level`, ...).
    pub fn start_with(extra: &[(&str, &str)]) -> Cluster {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "threadcast-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let settings: Vec<(&str, &str)> = TEST_SETTINGS.iter().chain(extra).copied().collect();
        let mut cluster = Cluster::create(&root, &settings).unwrap_or_else(|e| panic!("{e}"));
        cluster.remove_on_drop = true;
        cluster
    }

    /// Initialises a cluster in `root` (a previous one there is stopped and removed first) and
    /// starts it with `settings`. The folder stays after drop, with the server's log.
    pub fn create(root: &Path, settings: &[(&str, &str)]) -> Result<Cluster, ClusterError> {
        if root.join("data").exists() {
            // A cluster left running by an interrupted run would hold the folder.
            let _ = as_postgres(
                Command::new(pg_bin("pg_ctl"))
                    .arg("-D")
                    .arg(root.join("data"))
                    .args(["stop", "-m", "immediate", "-w"]),
            )
            .output();
        }
        let _ = std::fs::remove_dir_all(root);
        let io = |e: std::io::Error| ClusterError(format!("cannot make {}: {e}", root.display()));
        std::fs::create_dir_all(root.join("sock")).map_err(io)?;
        chown_to_postgres(root)?;
        chown_to_postgres(&root.join("sock"))?;
        let port = free_port().map_err(io)?;
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {}",
            root.join("sock").display()
        );
        for (name, value) in settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let cluster = Cluster {
            root: root.to_owned(),
            port,
            options,
            remove_on_drop: false,
        };
        cluster.run_as_postgres(
            Command::new(pg_bin("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "-D",
                ])
                .arg(cluster.data_dir()),
        )?;
        cluster.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(cluster)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's folder (its data, socket and `server.log`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A libpq connection string for `dbname` as `user`.
    pub fn url(&self, dbname: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// The same as a `postgres://` URI (for printing, and for tools that want one).
    pub fn uri(&self, dbname: &str, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every connection drops.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"])
    }

    /// Stops the server (`-m fast`), until [`Cluster::start_again`].
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }

    /// Starts the server again after [`Cluster::stop`].
    pub fn start_again(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["start", "-w", "-t", "60"])
    }

    /// `psql` on `db` as `postgres`, stopping at the first error, quiet.
    pub fn psql(&self, db: &str) -> Command {
        let mut c = Command::new(pg_bin("psql"));
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

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) -> Result<(), ClusterError> {
        run(
            self.psql("postgres")
                .arg("-c")
                .arg(format!("CREATE DATABASE {db}")),
            None,
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        self.run_as_postgres(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-o", &self.options])
                .args(args),
        )
    }

    fn run_as_postgres(&self, command: &mut Command) -> Result<(), ClusterError> {
        run(
            &mut as_postgres(command),
            Some(&self.root.join("server.log")),
        )
    }

    fn stop_and_remove(&self) {
        let _ = as_postgres(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["stop", "-m", "immediate", "-w"]),
        )
        .output();
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_and_remove();
    }
}

/// Runs `command`; an error carries its output and, when given, the server's log.
fn run(command: &mut Command, log: Option<&Path>) -> Result<(), ClusterError> {
    let output = command
        .output()
        .map_err(|e| ClusterError(format!("cannot run {command:?}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let log = log
        .and_then(|log| std::fs::read_to_string(log).ok())
        .unwrap_or_default();
    Err(ClusterError(format!(
        "{command:?} failed: {}\n{}\n{}\nserver log:\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL refuses to run as root: when we are root, run the command as `postgres`.
pub fn as_postgres(command: &Command) -> Command {
    if !is_root() {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        return same;
    }
    let mut wrapped = Command::new("runuser");
    wrapped
        .args(["-u", "postgres", "--"])
        .arg(command.get_program())
        .args(command.get_args())
        // A Rust backtrace in every ERROR's DETAIL is noise for a DBA.
        .env_remove("RUST_BACKTRACE");
    wrapped
}

/// Gives `path` to `postgres` when we are root (files the server reads must be its own).
pub fn chown_to_postgres(path: &Path) -> Result<(), ClusterError> {
    if !is_root() {
        return Ok(());
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam gets a valid C string; the result is read at once, before any other call.
    let ids = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    };
    let (uid, gid) =
        ids.ok_or_else(|| ClusterError("there is no `postgres` user to run PostgreSQL as".into()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| ClusterError(format!("cannot chown {} to postgres: {e}", path.display())))
}

/// A loopback port nobody listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
