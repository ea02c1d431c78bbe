//! The stack that `bench stream` and `soak` run against: the release build of the extension in a
//! throwaway cluster, the release broadcaster as a process of its own on a loopback port, and the
//! load generator (`xtask/loadgen`) as another process next to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{self, Cluster};
use crate::cmd;
use crate::setup;

/// PostgreSQL with the extension and the feedback schema in database `threadcast`, and the
/// release binaries.
pub struct Stack {
    pub cluster: Cluster,
    /// A superuser's connection string, for the load generator's writers.
    pub url: String,
    /// The broadcaster's: its least-privilege role from sql/roles.sql, as in production.
    broadcaster_url: String,
    secret: String,
    bin: PathBuf,
}

impl Stack {
    /// Sets up and installs the release build of the extension (unless `install` is false: then
    /// the extension already installed in the PostgreSQL of `PG_BIN` is used), builds the
    /// release broadcaster and load generator, and creates the cluster `name` with the database
    /// and `settings`.
    pub fn up(name: &str, settings: &[(&str, &str)], install: bool) -> Result<Stack> {
        let repo = cmd::repo();
        if install {
            setup::run()?;
            install_extension(&repo)?;
        }
        cmd::run(Command::new("cargo").current_dir(&repo).args([
            "build",
            "--release",
            "-p",
            "threadcast-broadcaster",
            "-p",
            "threadcast-loadgen",
        ]))?;

        let mut all = vec![("max_connections", "200")];
        all.extend_from_slice(settings);
        let cluster = cluster::create(name, &all)?;
        let db = "threadcast";
        cluster.create_db(db)?;
        cmd::output(cluster.psql(db).args(["-c", "CREATE EXTENSION threadcast"]))?;
        cmd::output(cluster.psql(db).arg("-f").arg(repo.join("sql/schema.sql")))?;
        cmd::output(cluster.psql(db).arg("-f").arg(repo.join("sql/roles.sql")))?;
        Ok(Stack {
            broadcaster_url: cluster.uri(db, "threadcast_broadcaster"),
            url: cluster.uri(db, "postgres"),
            cluster,
            secret: format!("bench-secret-of-32-bytes-or-more-{}", std::process::id()),
            bin: cmd::target_dir().join("release"),
        })
    }

    /// Starts a fresh broadcaster of this build allowing `max_connections` streams, and waits
    /// until it is ready.
    pub fn broadcaster(&self, max_connections: usize) -> Result<Broadcaster> {
        self.broadcaster_from(&self.broadcaster_bin(), max_connections)
    }

    /// This build's release broadcaster.
    pub fn broadcaster_bin(&self) -> PathBuf {
        self.bin.join("threadcast-broadcaster")
    }

    /// Starts a fresh broadcaster from the binary `bin` allowing `max_connections` streams, and
    /// waits until it is ready.
    pub fn broadcaster_from(&self, bin: &Path, max_connections: usize) -> Result<Broadcaster> {
        let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        self.broadcaster_at(bin, addr, max_connections)
    }

    /// Starts a broadcaster from `bin` on `addr` (a restart on a stopped one's address, where
    /// its clients come back) and waits until it is ready. The caps per token subject and per
    /// thread are as high as `max_connections`: the benchmarks put many streams on one thread
    /// with one token.
    pub fn broadcaster_at(
        &self,
        bin: &Path,
        addr: SocketAddr,
        max_connections: usize,
    ) -> Result<Broadcaster> {
        let mut command = Command::new(bin);
        command
            .env("DATABASE_URL", &self.broadcaster_url)
            .env("THREADCAST_ADDR", addr.to_string())
            .env("THREADCAST_JWT_SECRET", &self.secret)
            .env("THREADCAST_MAX_CONNECTIONS", max_connections.to_string())
            // Dashboard tokens scoped to projects (bench stream's dashboard cases).
            .env("THREADCAST_PROJECT_TABLE", "public.feedback")
            .env(
                "THREADCAST_MAX_STREAMS_PER_SUBJECT",
                max_connections.to_string(),
            )
            .env(
                "THREADCAST_MAX_STREAMS_PER_THREAD",
                max_connections.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log()?);
        // The broadcaster logs as deployed (info), unless an inherited RUST_LOG says otherwise,
        // into broadcaster.log next to the cluster's postgres.log.
        // SAFETY: only async-signal-safe calls (getrlimit/setrlimit) run between fork and exec.
        unsafe {
            command.pre_exec(|| {
                raise_open_files();
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let broadcaster = Broadcaster { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_status(addr, "/readyz") != Some(200) {
            if Instant::now() > deadline {
                bail!("the broadcaster was not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broadcaster)
    }

    /// Where the broadcasters log (each appends).
    pub fn log_path(&self) -> PathBuf {
        self.cluster.dir().join("broadcaster.log")
    }

    fn log(&self) -> Result<std::fs::File> {
        let path = self.log_path();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Runs the load generator against `broadcaster` with `args`; returns the JSON it printed.
    pub fn loadgen(&self, broadcaster: &Broadcaster, args: &[&str]) -> Result<serde_json::Value> {
        self.loadgen_with(broadcaster.addr, broadcaster.pid(), args, |_| Ok(()))
    }

    /// [`Stack::loadgen`], calling `on_line` with each line it prints before its result (the
    /// restart phase prints `READY` when it is time to restart the broadcaster).
    pub fn loadgen_with(
        &self,
        addr: SocketAddr,
        pid: u32,
        args: &[&str],
        mut on_line: impl FnMut(&str) -> Result<()>,
    ) -> Result<serde_json::Value> {
        let mut command = Command::new(self.bin.join("loadgen"));
        command
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--pid")
            .arg(pid.to_string())
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("THREADCAST_JWT_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: as above.
        unsafe {
            command.pre_exec(|| {
                raise_open_files();
                Ok(())
            });
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the load generator")?;
        let stdout = child.stdout.take().expect("piped");
        let mut last = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.context("read the load generator's output")?;
            if line.trim_start().starts_with('{') {
                last = line;
            } else {
                on_line(line.trim())?;
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("the load generator failed with {status}");
        }
        serde_json::from_str(last.trim()).with_context(|| format!("load generator output: {last}"))
    }
}

impl Stack {
    /// Starts a load generator that keeps running (`loadgen hold`), talking over its stdin and
    /// stdout; `first` stands for the replicas in the flags every phase takes.
    pub fn loadgen_process(&self, first: &Broadcaster, args: &[String]) -> Result<Loadgen> {
        let mut command = Command::new(self.bin.join("loadgen"));
        command
            .arg("--addr")
            .arg(first.addr.to_string())
            .arg("--pid")
            .arg(first.pid().to_string())
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("THREADCAST_JWT_SECRET", &self.secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: as above.
        unsafe {
            command.pre_exec(|| {
                raise_open_files();
                Ok(())
            });
        }
        let mut child = command.spawn().context("cannot start the load generator")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Loadgen {
            child,
            stdin,
            stdout,
        })
    }

    /// A one-hour token for `thread`, from the broadcaster's own `token` command.
    pub fn token(&self, thread: &str) -> Result<String> {
        let out = cmd::output(
            Command::new(self.bin.join("threadcast-broadcaster"))
                .args(["token", "--feedback-id", thread, "--ttl", "1h"])
                .env("THREADCAST_JWT_SECRET", &self.secret),
        )?;
        Ok(out.trim().to_owned())
    }

    /// psql on the database.
    pub fn psql(&self) -> Command {
        self.cluster.psql("threadcast")
    }
}

/// A running `loadgen hold`: one JSON object per line each way.
pub struct Loadgen {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Loadgen {
    /// The next line it prints, as JSON.
    pub fn read(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the load generator exited ({:?})", self.child.try_wait()?);
        }
        serde_json::from_str(line.trim()).with_context(|| format!("load generator said {line}"))
    }

    /// Sends `command` and reads its answer.
    pub fn ask(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.read()
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

/// `cargo pgrx install --release` into Debian's PostgreSQL 15 (or `PG_BIN`'s).
fn install_extension(repo: &std::path::Path) -> Result<()> {
    let mut install = Command::new("cargo");
    install.current_dir(repo.join("pg_ext")).args([
        "pgrx",
        "install",
        "--release",
        "--pg-config",
        &setup::pg_config(),
    ]);
    if !cmd::is_root() {
        install.arg("--sudo");
    }
    cmd::run(&mut install)
}

/// The broadcaster process; dropping it stops it.
pub struct Broadcaster {
    child: Child,
    pub addr: SocketAddr,
}

impl Broadcaster {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of metric `series` (the whole series, labels included), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        get_body(self.addr, "/metrics")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// SIGKILL, as a crash would: its connections are closed by the kernel, mid-stream.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, as an orchestrator would, then waits for the graceful shutdown; returns how
    /// long it took.
    pub fn stop(mut self) -> Result<Duration> {
        let started = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the broadcaster exited with {status}");
                }
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                bail!("the broadcaster did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sets the soft open-files limit to the hard one: every stream is a descriptor on both sides.
/// (Raising the hard limit itself needs CAP_SYS_RESOURCE.)
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A writer's connection to `url` and its statement that inserts one reply into a thread (`$1`,
/// the thread key as text) and returns its seq.
pub async fn reply_writer(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio_postgres::Statement)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let insert = client
        .prepare(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
             VALUES ($1::text::uuid, 'agency', 'Bench', 'A reply of ordinary length, about as long as people write.')
             RETURNING thread_seq",
        )
        .await?;
    Ok((client, insert))
}

/// The body of `GET path` on `addr` (HTTP/1.1, `Connection: close`), or None.
pub fn get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    // The body may be chunked; chunk-size lines never look like `name value` series lines.
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// The status of `GET path` on `addr`, or None when it does not answer.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// This machine, as the benchmark tables state it.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB memory, Linux {}, load average {} at the start",
        mem_kib as f64 / (1024.0 * 1024.0),
        kernel.trim(),
        load.join(" ")
    )
}
