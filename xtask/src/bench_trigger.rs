//! `cargo xtask bench trigger`: what a notifying trigger costs an insert. pgbench inserts into
//! `feedback_replies` on one cluster, in one run, for the set-ups side by side (no trigger, a
//! hand-written PL/pgSQL one, contrib's tcn, threadcast, and with `--baseline REV` the threadcast
//! of an earlier git revision, built and installed beside it as `threadcast_baseline`), while a
//! consumer LISTENs and drains each database. Prints the median TPS of each cell and the ratio to
//! no trigger.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::cluster::{self, Cluster};
use crate::cmd;
use crate::setup::{self, PG_CONFIG};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Runs per cell; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<u32>,
    /// Feedback threads the inserts spread over.
    #[arg(long, default_value_t = 1000)]
    threads: u32,
    /// Also measure the extension as of this git revision (for example `v0.1.0`), side by side.
    #[arg(long)]
    baseline: Option<String>,
}

/// The extension a baseline revision is installed as, beside today's.
const BASELINE: &str = "threadcast_baseline";

/// (name, SQL that attaches the set-up's trigger to feedback_replies).
const SETUPS: &[(&str, &str)] = &[
    ("none", ""),
    (
        "plpgsql",
        // What people write by hand: one pg_notify per row with json_build_object.
        "CREATE FUNCTION notify_reply() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_notify('threadcast', json_build_object(
             'op', TG_OP, 'table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
             'thread', NEW.feedback_id, 'id', NEW.id, 'row', row_to_json(NEW))::text);
           RETURN NEW;
         END $$;
         CREATE TRIGGER notify_reply AFTER INSERT OR UPDATE ON feedback_replies
           FOR EACH ROW EXECUTE FUNCTION notify_reply();",
    ),
    (
        "tcn",
        "CREATE EXTENSION tcn;
         CREATE TRIGGER tcn AFTER INSERT OR UPDATE OR DELETE ON feedback_replies
           FOR EACH ROW EXECUTE FUNCTION triggered_change_notification('threadcast');",
    ),
    (
        "threadcast",
        "SELECT threadcast.enable('public.feedback_replies');",
    ),
];

const INSERT_SCRIPT: &str = "\\set t random(1, :threads)
INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
VALUES (('00000000-0000-4000-8000-' || lpad(:t::text, 12, '0'))::uuid, 'end_user', 'bench',
        'A reply of ordinary length, about as long as people write in a feedback thread.');
";

fn tables_sql() -> Result<String> {
    // schema.sql without its last statement, threadcast.enable(): each set-up adds its own trigger.
    let schema = std::fs::read_to_string(cmd::repo().join("sql/schema.sql"))?;
    Ok(schema
        .lines()
        .filter(|l| !l.starts_with("SELECT threadcast.enable"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A LISTEN connection that counts what it drains, for as long as the runtime lives.
async fn consumer(url: String) -> Result<(tokio_postgres::Client, Arc<AtomicU64>)> {
    let (client, mut conn) = tokio_postgres::connect(&url, NoTls).await?;
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    client.batch_execute("LISTEN threadcast").await?;
    Ok((client, count))
}

fn pgbench(
    cluster: &Cluster,
    db: &str,
    script: &std::path::Path,
    clients: u32,
    args: &Args,
) -> Result<f64> {
    let out = cmd::output(
        Command::new(threadcast_harness::cluster::pg_bin("pgbench"))
            .args(["-n", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(cluster.port().to_string())
            .arg("-c")
            .arg(clients.to_string())
            .arg("-j")
            .arg(clients.min(2).to_string())
            .arg("-T")
            .arg(args.seconds.to_string())
            .arg("-D")
            .arg(format!("threads={}", args.threads))
            .arg("-f")
            .arg(script)
            .arg(db),
    )?;
    let line = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .context("pgbench printed no tps")?;
    Ok(line["tps = ".len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .parse()?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn run(args: Args) -> Result<()> {
    if args.runs == 0 || args.clients.is_empty() {
        bail!("--runs and --clients must not be empty");
    }
    setup::run()?;
    let repo = cmd::repo();
    cmd::run(
        Command::new("cargo")
            .current_dir(repo.join("pg_ext"))
            .args(["pgrx", "install", "--release", "--pg-config", PG_CONFIG]),
    )?;
    let mut setups: Vec<(String, &str, &str)> = SETUPS
        .iter()
        .map(|(name, sql)| (name.to_string(), "threadcast", *sql))
        .collect();
    if let Some(rev) = &args.baseline {
        install_baseline(rev)?;
        setups.push((
            format!("threadcast {rev}"),
            BASELINE,
            "SELECT threadcast.enable('public.feedback_replies');",
        ));
    }
    let cluster = cluster::create(
        "bench",
        &[("max_connections", "100"), ("shared_buffers", "256MB")],
    )?;
    let result = measure(&cluster, &args, &setups);
    let _ = cluster.stop();
    result
}

/// Builds the extension as of git revision `rev` (in a worktree under `target/`, sharing the
/// build cache) and installs it as [`BASELINE`]: its own library, control file and install
/// script, so that both versions can be measured in one cluster.
fn install_baseline(rev: &str) -> Result<()> {
    let repo = cmd::repo();
    let tree = repo.join("target").join("bench-baseline");
    if tree.exists() {
        let _ = cmd::run(
            Command::new("git")
                .current_dir(&repo)
                .args(["worktree", "remove", "--force"])
                .arg(&tree),
        );
    }
    cmd::run(
        Command::new("git")
            .current_dir(&repo)
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&tree)
            .arg(rev),
    )?;
    let out = tree.join("target").join("package");
    cmd::run(
        Command::new("cargo")
            .current_dir(tree.join("pg_ext"))
            .env("CARGO_TARGET_DIR", repo.join("target").join("baseline"))
            .args(["pgrx", "package", "--pg-config", PG_CONFIG, "--out-dir"])
            .arg(&out),
    )?;
    let libdir = cmd::output(Command::new(PG_CONFIG).arg("--pkglibdir"))?;
    let sharedir = cmd::output(Command::new(PG_CONFIG).arg("--sharedir"))?;
    let (libdir, extdir) = (
        std::path::PathBuf::from(libdir.trim()),
        std::path::Path::new(sharedir.trim()).join("extension"),
    );
    let packaged = |dir: &std::path::Path| out.join(dir.strip_prefix("/").unwrap_or(dir));
    std::fs::copy(
        packaged(&libdir).join("threadcast.so"),
        libdir.join(format!("{BASELINE}.so")),
    )?;
    let mut version = None;
    for entry in std::fs::read_dir(packaged(&extdir))? {
        let name = entry?.file_name().into_string().unwrap_or_default();
        if let Some(v) = name
            .strip_prefix("threadcast--")
            .and_then(|n| n.strip_suffix(".sql"))
            .filter(|v| !v.contains("--"))
        {
            std::fs::copy(
                packaged(&extdir).join(&name),
                extdir.join(format!("{BASELINE}--{v}.sql")),
            )?;
            version = Some(v.to_owned());
        }
    }
    let version = version.context("the baseline's package has no install script")?;
    std::fs::write(
        extdir.join(format!("{BASELINE}.control")),
        format!(
            "comment = 'threadcast as of {rev}, for benchmarks'\ndefault_version = '{version}'\n\
             module_pathname = '$libdir/{BASELINE}'\nschema = threadcast\nrelocatable = false\n\
             superuser = true\ntrusted = false\n"
        ),
    )?;
    Ok(())
}

fn measure(cluster: &Cluster, args: &Args, setups: &[(String, &str, &str)]) -> Result<()> {
    let tables = tables_sql()?;
    let script = cluster.dir().join("insert.sql");
    std::fs::write(&script, INSERT_SCRIPT)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut consumers = Vec::new();
    for (si, (_, extension, trigger_sql)) in setups.iter().enumerate() {
        let db = format!("bench_{si}");
        cluster.create_db(&db)?;
        cmd::output(
            cluster
                .psql(&db)
                .args(["-c", &format!("CREATE EXTENSION {extension}")]),
        )?;
        cmd::output(cluster.psql(&db).args(["-c", &tables]))?;
        cmd::output(cluster.psql(&db).args(["-c", &format!(
            "INSERT INTO feedback (id) SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid FROM generate_series(1, {}) g",
            args.threads
        )]))?;
        if !trigger_sql.is_empty() {
            cmd::output(cluster.psql(&db).args(["-c", trigger_sql]))?;
        }
        consumers.push(rt.block_on(consumer(cluster.uri(&db, "postgres")))?);
    }

    // tps[clients][setup] = one figure per run; set-ups interleave so that drift hits them alike.
    let mut tps = vec![vec![Vec::new(); setups.len()]; args.clients.len()];
    for run in 0..args.runs {
        for (ci, &clients) in args.clients.iter().enumerate() {
            for (si, (name, _, _)) in setups.iter().enumerate() {
                let db = format!("bench_{si}");
                cmd::output(cluster.psql(&db).args([
                    "-c",
                    // Every set-up starts from empty tables, threadcast's counters included.
                    "TRUNCATE feedback_replies, threadcast.counters, threadcast.tombstones",
                    "-c",
                    "CHECKPOINT",
                ]))?;
                let before = consumers[si].1.load(Ordering::Relaxed);
                let figure = pgbench(cluster, &db, &script, clients, args)?;
                let rows: u64 = cmd::output(cluster.psql(&db).args([
                    "-t",
                    "-A",
                    "-c",
                    "SELECT count(*) FROM feedback_replies",
                ]))?
                .trim()
                .parse()?;
                // The consumer must keep up, or the figure would not include draining.
                let drained = wait_drained(
                    &consumers[si].1,
                    before,
                    if *name == "none" { 0 } else { rows },
                );
                eprintln!("run {} clients {clients:>2} {name:<10} {figure:>9.1} tps  ({rows} rows, {drained} notifications drained)", run + 1);
                tps[ci][si].push(figure);
            }
        }
    }
    drop(consumers);

    println!(
        "\nmedian TPS of {} runs of {} s each, {} threads (ratio to no trigger)\n",
        args.runs, args.seconds, args.threads
    );
    println!(
        "| clients | {} |",
        setups
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---:|{}", "---:|".repeat(setups.len()));
    for (ci, clients) in args.clients.iter().enumerate() {
        let base = median(tps[ci][0].clone());
        let cells: Vec<String> = tps[ci]
            .iter()
            .map(|runs| {
                let m = median(runs.clone());
                format!("{m:.0} ({:.2}x)", m / base)
            })
            .collect();
        println!("| {clients} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// Waits (bounded) until the consumer has drained `expected` notifications since `before`.
fn wait_drained(count: &AtomicU64, before: u64, expected: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let drained = count.load(Ordering::Relaxed) - before;
        if drained >= expected || std::time::Instant::now() > deadline {
            return drained;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
