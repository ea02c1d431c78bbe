//! A flood of notifications from a role that may only connect (`cargo xtask bench stream`'s
//! `flood`): it LISTENs, captures genuine notifications, then sends forged ones (bad signatures)
//! and replays of the captured ones, while a writer commits real replies at a steady rate into
//! threads followed by open streams. Measured: the replies' commit-to-receive latency without and
//! with the flood, the broadcaster's RSS and CPU, how fast it took the flood, and that every
//! stream still got every reply exactly once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use threadcast_harness::flood as flood_sql;

use crate::fleet::{thread_id, Fleet, Receipt, Target};
use crate::procfs;
use crate::stats::Summary;
use crate::writer::{self, Writer};

/// Genuine notifications the flooder captures to replay.
const CAPTURED: u64 = 100;
/// Forged notifications per statement (one transaction each).
const FORGED_PER_STATEMENT: u64 = 100_000;

/// What the flood run measures.
pub struct Flood {
    pub notifications: u64,
    pub threads: u32,
    pub per_thread: u32,
    /// Real replies per second, without and with the flood.
    pub rate: f64,
    /// Seconds of replies without the flood, for comparison.
    pub baseline_secs: u64,
}

pub async fn flood(target: Arc<Target>, db: &str, pid: u32, flood: Flood) -> Result<Value> {
    let threads: Vec<Uuid> = (0..u64::from(flood.threads))
        .map(|i| thread_id(4_000_000 + i))
        .collect();
    writer::create_threads(db, &threads).await?;
    let mut fleet = Fleet::new(true);
    fleet.open(&target, &threads, 0, flood.per_thread as usize);
    if fleet.wait_open("flood").await > 0 {
        anyhow::bail!(
            "streams failed to open: {:?}",
            fleet.first_error.lock().unwrap()
        );
    }
    // The streams started live: they are owed what follows each thread's counter now (the
    // threads may carry replies of an earlier run).
    let joined_at = current_seqs(db, &threads).await?;

    // The flooder: a role that may connect and nothing more.
    let admin = writer::connect(db).await?;
    let role = format!("flooder_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))
        .await
        .context("create the flooder's role")?;
    let mut as_flooder: tokio_postgres::Config = db.parse().context("the database URL")?;
    as_flooder.user(&role);
    let (listening, mut heard) = listen(&as_flooder).await?;
    let writer = Writer::connect(db).await?;
    for i in 0..CAPTURED {
        writer.insert(threads[i as usize % threads.len()]).await?;
    }
    let mut captured = Vec::new();
    while (captured.len() as u64) < CAPTURED {
        captured.push(
            tokio::time::timeout(Duration::from_secs(10), heard.recv())
                .await
                .context("a genuine notification within 10 s")?
                .context("the flooder's LISTEN connection ended")?,
        );
    }
    drop(listening);
    eprintln!(
        "flood: {} streams; captured {CAPTURED} genuine notifications",
        fleet.len()
    );

    // The replies' latency without the flood.
    let baseline = paced(
        db,
        threads.clone(),
        flood.rate,
        Some(Duration::from_secs(flood.baseline_secs)),
        None,
    )
    .await?;

    // The flood, with replies going on meanwhile.
    let src: i64 = admin
        .query_one("SELECT 'public.feedback_replies'::regclass::oid::int8", &[])
        .await?
        .get(0);
    let forger = connect(&as_flooder).await?;
    let replayer = connect(&as_flooder).await?;
    replayer.batch_execute(flood_sql::CAPTURED_TABLE).await?;
    replayer
        .batch_execute("SET synchronous_commit = off")
        .await?;
    for payload in &captured {
        replayer
            .execute("INSERT INTO captured VALUES ($1)", &[payload])
            .await?;
    }
    let forged = flood.notifications / 2;
    let rounds = (flood.notifications - forged) / CAPTURED;
    let received_before = metric(target.addr, "threadcast_notifications_received_total")?;
    let rss_before = procfs::rss_bytes(pid)?;
    let cpu_before = procfs::cpu_seconds(pid)?;
    let stop_writing = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(paced(
        db.to_owned(),
        threads.clone(),
        flood.rate,
        None,
        Some(stop_writing.clone()),
    ));
    let started = Instant::now();
    let forge = async {
        let mut sent = 0;
        while sent < forged {
            let n = FORGED_PER_STATEMENT.min(forged - sent);
            let thread = threads[0].to_string();
            forger
                .batch_execute(&flood_sql::forged(src, &thread, sent + 1, sent + n))
                .await?;
            sent += n;
        }
        anyhow::Ok(())
    };
    let replay_sql = flood_sql::replays(rounds);
    let (forge, replay) = tokio::join!(forge, replayer.batch_execute(&replay_sql));
    forge.context("forge notifications")?;
    replay.context("replay notifications")?;
    let sent_seconds = started.elapsed().as_secs_f64();
    let sent = forged + rounds * CAPTURED;
    // Every notification has reached the broadcaster once its counter has counted them all.
    let deadline = Instant::now() + Duration::from_secs(600);
    while metric(target.addr, "threadcast_notifications_received_total")?
        < received_before + sent as f64
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the broadcaster did not take the flood within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken_seconds = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(pid)? - cpu_before;
    stop_writing.store(true, Ordering::SeqCst);
    let during = during.await.context("the writer")??;
    let peak = procfs::peak_rss_bytes(pid)?;
    let replies = (CAPTURED as usize + baseline.len() + during.len()) as u64;
    let all_arrived = fleet
        .wait_received(
            replies * u64::from(flood.per_thread),
            Duration::from_secs(60),
        )
        .await;

    let counts = [
        "threadcast_notifications_rejected_total",
        "threadcast_notifications_stale_total",
        "threadcast_notifications_dropped_total",
    ]
    .map(|name| metric(target.addr, name).unwrap_or(-1.0));
    let receipts = fleet.close().await;
    let (baseline_latency, during_latency) =
        (latency(&receipts, &baseline), latency(&receipts, &during));
    eprintln!(
        "  {sent} notifications sent in {sent_seconds:.1} s, taken in {taken_seconds:.1} s; replies without the flood {baseline_latency:?}, during it {during_latency:?}; RSS {} -> peak {} MiB",
        rss_before >> 20,
        peak >> 20
    );
    let (doubled, lost) =
        exactly_once(&receipts, db, &threads, &joined_at, flood.per_thread).await?;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .ok();
    Ok(json!({
        "flood": {
            "notifications": sent,
            "forged": forged,
            "replayed": rounds * CAPTURED,
            "streams": flood.threads * flood.per_thread,
            "threads": flood.threads,
            "reply_rate": flood.rate,
            "sent_seconds": sent_seconds,
            "taken_seconds": taken_seconds,
            "taken_per_second": sent as f64 / taken_seconds,
            "broadcaster_cpu_seconds": cpu,
            "rss_before_bytes": rss_before,
            "peak_rss_bytes": peak,
            "rejected": counts[0],
            "stale": counts[1],
            "dropped": counts[2],
            "latency_without": baseline_latency,
            "latency_during": during_latency,
            "all_arrived": all_arrived,
            "doubled": doubled,
            "lost": lost,
        }
    }))
}

/// A connection as `config`, driven on the current runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await.context("connect")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A connection as `config` that LISTENs on threadcast's channel; payloads arrive on the
/// receiver.
async fn listen(
    config: &tokio_postgres::Config,
) -> Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let (client, mut connection) = config.connect(NoTls).await.context("connect")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN threadcast").await?;
    Ok((client, rx))
}

/// Commits replies round robin into `threads` at `rate` per second, for `length` or until `stop`
/// is set, on an OS thread of its own; returns (thread index, seq, when the commit returned).
async fn paced(
    db: impl Into<String>,
    threads: Vec<Uuid>,
    rate: f64,
    length: Option<Duration>,
    stop: Option<Arc<AtomicBool>>,
) -> Result<Vec<(u32, i64, Instant)>> {
    let url = db.into();
    writer::on_own_thread(move || async move {
        let writer = Writer::connect(&url).await?;
        let started = tokio::time::Instant::now();
        let mut commits = Vec::new();
        for k in 0u64.. {
            let due = started + Duration::from_secs_f64(k as f64 / rate);
            if length.is_some_and(|l| due > started + l)
                || stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
            {
                break;
            }
            tokio::time::sleep_until(due).await;
            let t = (k % threads.len() as u64) as u32;
            let (seq, at) = writer.insert(threads[t as usize]).await?;
            commits.push((t, seq, at));
        }
        Ok(commits)
    })
    .await?
}

/// Commit-to-receive latency of `commits`, over every receipt of them.
fn latency(receipts: &[Receipt], commits: &[(u32, i64, Instant)]) -> Summary {
    let at: HashMap<(u32, i64), Instant> = commits.iter().map(|&(t, s, a)| ((t, s), a)).collect();
    Summary::of(
        receipts
            .iter()
            .filter_map(|r| Some(r.at.saturating_duration_since(*at.get(&(r.thread, r.seq))?)))
            .collect(),
    )
}

/// Each thread's counter now.
async fn current_seqs(db: &str, threads: &[Uuid]) -> Result<Vec<i64>> {
    let client = writer::connect(db).await?;
    let mut seqs = Vec::with_capacity(threads.len());
    for thread in threads {
        seqs.push(
            client
                .query_one(
                    "SELECT threadcast.current_seq('public.feedback_replies', $1::uuid::text)",
                    &[thread],
                )
                .await?
                .get(0),
        );
    }
    Ok(seqs)
}

/// Counts, over all streams, changes received twice and changes never received: every change of
/// each thread after `joined_at` (its counter when its streams opened), `per_thread` times.
async fn exactly_once(
    receipts: &[Receipt],
    db: &str,
    threads: &[Uuid],
    joined_at: &[i64],
    per_thread: u32,
) -> Result<(u64, u64)> {
    let mut got: HashMap<(u32, i64), u32> = HashMap::new();
    for r in receipts {
        *got.entry((r.thread, r.seq)).or_default() += 1;
    }
    let (mut doubled, mut lost) = (0, 0);
    let now = current_seqs(db, threads).await?;
    for (t, current) in now.into_iter().enumerate() {
        for seq in joined_at[t] + 1..=current {
            let n = got.get(&(t as u32, seq)).copied().unwrap_or(0);
            doubled += u64::from(n.saturating_sub(per_thread));
            lost += u64::from(per_thread.saturating_sub(n));
        }
    }
    Ok((doubled, lost))
}

/// The value of metric `name` at the broadcaster on `addr`.
fn metric(addr: std::net::SocketAddr, name: &str) -> Result<f64> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}
