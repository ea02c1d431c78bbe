//! A throwaway PostgreSQL 15 cluster: initdb in a temp folder owned by `postgres`, started on a
//! free loopback port, stopped (and removed) on drop. One per test binary is shared through
//! [`Cluster::shared`]; tests that restart the server start a private one with [`Cluster::start`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The PostgreSQL binaries; `PG_BIN` overrides the Debian location.
fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN").map_or_else(
        || PathBuf::from("/usr/lib/postgresql/15/bin"),
        PathBuf::from,
    );
    dir.join(tool)
}

/// A running PostgreSQL server of its own.
pub struct Cluster {
    root: PathBuf,
    port: u16,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop_and_remove();
    }
}

impl Cluster {
    /// The cluster shared by every test of this binary, started on first use and stopped when the
    /// process exits (statics are never dropped, hence `atexit`).
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let cluster = Cluster::start();
            // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
            unsafe { libc::atexit(stop_shared_cluster) };
            cluster
        })
    }

    /// Initialises and starts a new cluster; panics with the server's log if it cannot.
    pub fn start() -> Cluster {
        Cluster::start_with(|_| {})
    }

    /// Like [`Cluster::start`], but `prepare` may change the new data folder first (settings,
    /// `pg_hba.conf`, certificates; files it writes must belong to `postgres`:
    /// [`chown_to_postgres`]).
    pub fn start_with(prepare: impl FnOnce(&Path)) -> Cluster {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "threadcast-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(root.join("sock")).expect("create the cluster folder");
        chown_to_postgres(&root);
        chown_to_postgres(&root.join("sock"));
        let cluster = Cluster {
            port: free_port(),
            root,
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
        );
        prepare(&cluster.data_dir());
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `dbname` as `user`.
    pub fn url(&self, dbname: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every connection drops.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Stops the server (`-m fast`), until [`Cluster::start_again`].
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Starts the server again after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.root.join("sock").display()
        );
        self.run_as_postgres(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-o", &options])
                .args(args),
        );
    }

    fn run_as_postgres(&self, command: &mut Command) {
        let mut command = as_postgres(command);
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
            panic!(
                "{command:?} failed: {}\n{}\n{}\nserver log:\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn stop_and_remove(&self) {
        let _ = as_postgres(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["stop", "-m", "immediate", "-w"]),
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_and_remove();
    }
}

/// PostgreSQL refuses to run as root: when we are root, run the command as `postgres`.
fn as_postgres(command: &Command) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        return same;
    }
    let mut wrapped = Command::new("runuser");
    wrapped
        .args(["-u", "postgres", "--"])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

/// Gives `path` to `postgres` when we are root (the server must own what it reads).
pub fn chown_to_postgres(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam gets a valid C string; the result is read at once, before any other call.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "there is no `postgres` user to run PostgreSQL as"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .expect("chown the cluster folder to postgres");
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}
