//! `cargo xtask bench trigger`: what a notifying trigger costs an insert. pgbench inserts into
//! `feedback_replies` on one cluster, in one run, for the set-ups side by side (no trigger, a
//! hand-written PL/pgSQL one, contrib's tcn, threadcast per transaction, threadcast batched with
//! full rows and keys only, threadcast's numbering alone, and with `--baseline REV` the threadcast
//! of an earlier git revision, built and installed beside it as `threadcast_baseline`), while a
//! consumer LISTENs and drains each database (counting each change of a batch). `--logical` runs
//! the cluster at `wal_level = logical` and adds the known alternative to NOTIFY: a trigger that
//! emits transactional logical messages, drained through a replication slot. Prints the median
//! TPS of each cell and the ratio to no trigger.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use threadcast_payload::Notification;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::cluster::{self, Cluster};
use crate::cmd;
use crate::setup;

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
    /// Run the cluster at wal_level = logical and add the `logical` set-up:
    /// pg_logical_emit_message per row, read from a replication slot.
    #[arg(long)]
    logical: bool,
    /// Measure only these set-ups (comma-separated names; `none` is always measured).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use the extension already installed in the PostgreSQL of `PG_BIN` (no `cargo pgrx install`).
    #[arg(long)]
    no_install: bool,
    /// Add the numbering variants that issue 13 asks to measure: a per-thread advisory lock with
    /// the next number read from the table (what a shared-memory counter would cost on a miss,
    /// with no counter row), and threadcast's numbering over a non-unique (thread, seq) index.
    #[arg(long)]
    variants: bool,
    /// Extra cluster settings, NAME=VALUE (for example synchronous_commit=off, to take the disk
    /// out of the measurement).
    #[arg(long = "setting", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((name.to_owned(), value.to_owned()))
}

/// The numbering variants of `--variants`: nothing is announced; only how a number is taken differs.
const VARIANTS: &[(&str, Feed, &str)] = &[
    (
        "lock+max",
        Feed::Silent,
        "CREATE FUNCTION number_reply() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_advisory_xact_lock(hashtext(NEW.feedback_id::text));
           NEW.thread_seq := coalesce((SELECT max(r.thread_seq) FROM feedback_replies r
                                        WHERE r.feedback_id = NEW.feedback_id), 0) + 1;
           RETURN NEW;
         END $$;
         ALTER TABLE feedback_replies ADD COLUMN thread_seq bigint;
         CREATE UNIQUE INDEX ON feedback_replies (feedback_id, thread_seq);
         CREATE TRIGGER number_reply BEFORE INSERT ON feedback_replies
           FOR EACH ROW EXECUTE FUNCTION number_reply();",
    ),
    (
        "nonunique",
        Feed::Silent,
        "SELECT threadcast.enable('public.feedback_replies');
         ALTER TABLE feedback_replies DISABLE TRIGGER threadcast_notify;
         DROP INDEX feedback_replies_feedback_id_thread_seq_idx;
         CREATE INDEX ON feedback_replies (feedback_id, thread_seq);",
    ),
];

/// One set-up of the table: its column name, the extension it uses, how its changes are
/// announced, and the SQL that attaches its trigger.
struct Setup {
    name: String,
    extension: &'static str,
    feed: Feed,
    sql: String,
}

/// The extension a baseline revision is installed as, beside today's.
const BASELINE: &str = "threadcast_baseline";

/// How a set-up's changes reach a consumer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Nothing is announced.
    Silent,
    /// NOTIFY on channel `threadcast` (one change each, or a batch of them).
    Notify,
    /// Transactional logical messages, read from the replication slot `threadcast_bench`.
    Logical,
}

/// (name, how it announces, SQL that attaches the set-up's trigger to feedback_replies).
const SETUPS: &[(&str, Feed, &str)] = &[
    ("none", Feed::Silent, ""),
    (
        "plpgsql",
        Feed::Notify,
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
        Feed::Notify,
        "CREATE EXTENSION tcn;
         CREATE TRIGGER tcn AFTER INSERT OR UPDATE OR DELETE ON feedback_replies
           FOR EACH ROW EXECUTE FUNCTION triggered_change_notification('threadcast');",
    ),
    (
        "threadcast",
        Feed::Notify,
        "SELECT threadcast.enable('public.feedback_replies');",
    ),
    (
        "batched",
        Feed::Notify,
        "SELECT threadcast.enable('public.feedback_replies', delivery => 'batched');",
    ),
    (
        "batched keys",
        Feed::Notify,
        "SELECT threadcast.enable('public.feedback_replies', payload => 'keys', delivery => 'batched');",
    ),
    (
        // The ceiling of any delivery that keeps threadcast's numbering: the counter row update
        // and the (thread, seq) index, with nothing announced.
        "numbering",
        Feed::Silent,
        "SELECT threadcast.enable('public.feedback_replies');
         ALTER TABLE feedback_replies DISABLE TRIGGER threadcast_notify;",
    ),
];

/// The known alternative to NOTIFY (with `--logical`): the same payload as the PL/pgSQL set-up,
/// as a transactional logical message, which a consumer reads from a replication slot.
const LOGICAL: (&str, Feed, &str) = (
    "logical",
    Feed::Logical,
    "CREATE FUNCTION emit_reply() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       PERFORM pg_logical_emit_message(true, 'threadcast', json_build_object(
         'op', TG_OP, 'table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
         'thread', NEW.feedback_id, 'id', NEW.id, 'row', row_to_json(NEW))::text);
       RETURN NEW;
     END $$;
     CREATE TRIGGER emit_reply AFTER INSERT OR UPDATE ON feedback_replies
       FOR EACH ROW EXECUTE FUNCTION emit_reply();
     CREATE PUBLICATION threadcast_bench_none;",
);

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

/// What a consumer has drained: changes (each member of a batch), and resync notices (batched
/// delivery dropped changes, a ring overflow: a reader would have read its threads again).
#[derive(Default)]
struct Drained {
    changes: AtomicU64,
    resyncs: AtomicU64,
}

/// A LISTEN connection that counts the changes it drains (each member of a batch), for as long
/// as the runtime lives.
async fn consumer(url: String) -> Result<(tokio_postgres::Client, Arc<Drained>)> {
    let (client, mut conn) = tokio_postgres::connect(&url, NoTls).await?;
    let count = Arc::new(Drained::default());
    let seen = count.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let changes = match Notification::parse(n.payload()) {
                    Ok(Notification::Batch(members)) => members.len() as u64,
                    Ok(Notification::Resync(_)) => {
                        seen.resyncs.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                    _ => 1,
                };
                seen.changes.fetch_add(changes, Ordering::Relaxed);
            }
        }
    });
    client.batch_execute("LISTEN threadcast").await?;
    Ok((client, count))
}

/// A consumer of the logical messages of the slot `threadcast_bench` (pgoutput, with messages,
/// through a publication of no table): reads what is there every 20 ms, counts the messages.
async fn slot_consumer(url: String) -> Result<(tokio_postgres::Client, Arc<Drained>)> {
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    let (reader, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    let count = Arc::new(Drained::default());
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let read = reader
                .query_one(
                    "SELECT count(*) FILTER (WHERE get_byte(data, 0) = 77) -- 'M', a message
                       FROM pg_logical_slot_get_binary_changes('threadcast_bench', NULL, NULL,
                            'proto_version', '1', 'publication_names', 'threadcast_bench_none',
                            'messages', 'true')",
                    &[],
                )
                .await;
            match read {
                Ok(row) => seen
                    .changes
                    .fetch_add(row.get::<_, i64>(0) as u64, Ordering::Relaxed),
                Err(_) => return,
            };
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
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
    if !args.no_install {
        setup::run()?;
        let repo = cmd::repo();
        cmd::run(
            Command::new("cargo")
                .current_dir(repo.join("pg_ext"))
                .args([
                    "pgrx",
                    "install",
                    "--release",
                    "--pg-config",
                    &setup::pg_config(),
                ]),
        )?;
    }
    let wanted =
        |name: &str| name == "none" || args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut setups: Vec<Setup> = SETUPS
        .iter()
        .chain(args.logical.then_some(&LOGICAL))
        .chain(VARIANTS.iter().filter(|_| args.variants))
        .filter(|(name, _, _)| wanted(name))
        .map(|(name, feed, sql)| Setup {
            name: name.to_string(),
            extension: "threadcast",
            feed: *feed,
            sql: sql.to_string(),
        })
        .collect();
    if let Some(rev) = &args.baseline {
        install_baseline(rev)?;
        setups.push(Setup {
            name: format!("threadcast {rev}"),
            extension: BASELINE,
            feed: Feed::Notify,
            sql: "SELECT threadcast.enable('public.feedback_replies');".into(),
        });
    }
    let mut settings = vec![("max_connections", "100"), ("shared_buffers", "256MB")];
    if args.logical {
        settings.extend([("wal_level", "logical"), ("max_replication_slots", "4")]);
    }
    settings.extend(args.settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let cluster = cluster::create("bench", &settings)?;
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
            .args([
                "pgrx",
                "package",
                "--pg-config",
                &setup::pg_config(),
                "--out-dir",
            ])
            .arg(&out),
    )?;
    let libdir = cmd::output(Command::new(setup::pg_config()).arg("--pkglibdir"))?;
    let sharedir = cmd::output(Command::new(setup::pg_config()).arg("--sharedir"))?;
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

fn measure(cluster: &Cluster, args: &Args, setups: &[Setup]) -> Result<()> {
    let tables = tables_sql()?;
    let script = cluster.dir().join("insert.sql");
    std::fs::write(&script, INSERT_SCRIPT)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut consumers = Vec::new();
    for (si, setup) in setups.iter().enumerate() {
        let db = format!("bench_{si}");
        cluster.create_db(&db)?;
        cmd::output(
            cluster
                .psql(&db)
                .args(["-c", &format!("CREATE EXTENSION {}", setup.extension)]),
        )?;
        cmd::output(cluster.psql(&db).args(["-c", &tables]))?;
        cmd::output(cluster.psql(&db).args(["-c", &format!(
            "INSERT INTO feedback (id) SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid FROM generate_series(1, {}) g",
            args.threads
        )]))?;
        if !setup.sql.is_empty() {
            cmd::output(cluster.psql(&db).args(["-c", &setup.sql]))?;
        }
        if setup.feed == Feed::Logical {
            // A statement of its own: a slot cannot be made in a transaction that wrote.
            cmd::output(cluster.psql(&db).args([
                "-c",
                "SELECT pg_create_logical_replication_slot('threadcast_bench', 'pgoutput')",
            ]))?;
        }
        let url = cluster.uri(&db, "postgres");
        consumers.push(rt.block_on(match setup.feed {
            Feed::Logical => futures::future::Either::Left(slot_consumer(url)),
            _ => futures::future::Either::Right(consumer(url)),
        })?);
    }

    // tps[clients][setup] = one figure per run; set-ups interleave so that drift hits them alike.
    let mut tps = vec![vec![Vec::new(); setups.len()]; args.clients.len()];
    for run in 0..args.runs {
        for (ci, &clients) in args.clients.iter().enumerate() {
            for (si, setup) in setups.iter().enumerate() {
                let name = &setup.name;
                let db = format!("bench_{si}");
                cmd::output(cluster.psql(&db).args([
                    "-c",
                    // Every set-up starts from empty tables, threadcast's counters included.
                    "TRUNCATE feedback_replies, threadcast.counters, threadcast.tombstones",
                    "-c",
                    "CHECKPOINT",
                ]))?;
                let before = consumers[si].1.changes.load(Ordering::Relaxed);
                let resyncs_before = consumers[si].1.resyncs.load(Ordering::Relaxed);
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
                    &consumers[si].1.changes,
                    before,
                    if setup.feed == Feed::Silent { 0 } else { rows },
                );
                // A resync notice (a ring overflowed) explains changes that were not drained.
                let resyncs = consumers[si].1.resyncs.load(Ordering::Relaxed) - resyncs_before;
                let resyncs = match resyncs {
                    0 => String::new(),
                    n => format!(", {n} resync notice(s)"),
                };
                eprintln!("run {} clients {clients:>2} {name:<12} {figure:>9.1} tps  ({rows} rows, {drained} changes drained{resyncs})", run + 1);
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
            .map(|s| s.name.as_str())
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
