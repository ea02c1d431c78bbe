//! The dashboard cases of `cargo xtask bench stream`: dashboard streams
//! (`GET /api/dashboard/stream`, threads followed by `POST /api/dashboard/stream/{id}`) under a
//! project token, measured from a process of their own.
//!
//! - one connection following 1,000 threads: commit-to-event latency, one commit at a time,
//!   round robin over the threads;
//! - the broadcaster's RSS per such connection (ten of them, each with its own 1,000 threads);
//! - 100 dashboards of 100 threads each, writers spread over all 10,000 threads at a steady
//!   rate: latency and the broadcaster's CPU per event.
//!
//! Dashboards are few, so they use reqwest rather than the raw client of the widget streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use threadcast_harness::sse::{SseItem, SseParser};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::bench::steady_rss;
use crate::fleet::{thread_id, Target};
use crate::procfs;
use crate::stats::Summary;
use crate::writer::{self, Writer};

/// How long a commit may take to reach its dashboard before it counts as missing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A project token for `project`, signed as the application's backend would.
fn project_token(secret: &[u8], project: Uuid) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = json!({ "projects": [project], "exp": exp, "role": "agency" });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

/// Puts `threads` in `project` (creating them).
async fn create_project(db: &str, project: Uuid, threads: &[Uuid]) -> Result<()> {
    writer::create_threads(db, threads).await?;
    let client = writer::connect(db).await?;
    client
        .execute(
            "UPDATE feedback SET project_id = $1 WHERE id = ANY($2::uuid[])",
            &[&project, &threads],
        )
        .await
        .context("put the threads in their project")?;
    Ok(())
}

/// What the dashboards of a case received.
#[derive(Default)]
struct Counts {
    joined: AtomicU64,
    received: AtomicU64,
    /// Events of a thread the dashboard did not follow (must stay 0).
    foreign: AtomicU64,
}

/// One open dashboard stream and its reader.
struct Dashboard {
    reader: JoinHandle<Vec<(Uuid, i64, Instant)>>,
}

/// Opens a dashboard stream with `token`, follows `threads` from their start, and reads it in a
/// task until `stop`, noting when each event arrived.
async fn open(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    threads: &[Uuid],
    counts: Arc<Counts>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Dashboard> {
    let response = http
        .get(format!("{base}/api/dashboard/stream"))
        .bearer_auth(token)
        .send()
        .await
        .context("open a dashboard stream")?;
    if !response.status().is_success() {
        bail!("the dashboard stream was refused: {}", response.status());
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut queued = Vec::new();
    let id = 'open: loop {
        let bytes = body
            .next()
            .await
            .context("the stream ended before `open`")??;
        for item in parser.feed(&bytes) {
            match item {
                SseItem::Event(e) if e.event == "open" => {
                    let data: Value = serde_json::from_str(&e.data)?;
                    break 'open data["stream"].as_str().context("a stream id")?.to_owned();
                }
                other => queued.push(other),
            }
        }
    };
    let follow: serde_json::Map<String, Value> =
        threads.iter().map(|t| (t.to_string(), json!(0))).collect();
    let answer = http
        .post(format!("{base}/api/dashboard/stream/{id}"))
        .bearer_auth(token)
        .json(&json!({ "follow": follow }))
        .send()
        .await
        .context("follow the threads")?;
    if !answer.status().is_success() {
        bail!("following was refused: {}", answer.text().await?);
    }
    let own: std::collections::HashSet<Uuid> = threads.iter().copied().collect();
    let reader = tokio::spawn(async move {
        let mut receipts = Vec::new();
        loop {
            let bytes = tokio::select! {
                _ = stop.cancelled() => break,
                bytes = body.next() => match bytes {
                    Some(Ok(bytes)) => bytes,
                    _ => break,
                },
            };
            let at = Instant::now();
            for item in parser.feed(&bytes) {
                let SseItem::Event(e) = item else { continue };
                match e.event.as_str() {
                    "joined" => {
                        counts.joined.fetch_add(1, Ordering::Relaxed);
                    }
                    "reply" => {
                        let Ok(data) = serde_json::from_str::<Value>(&e.data) else {
                            continue;
                        };
                        let thread = data["thread"].as_str().and_then(|t| t.parse().ok());
                        match thread.filter(|t| own.contains(t)) {
                            Some(thread) => {
                                receipts.push((thread, data["seq"].as_i64().unwrap_or(0), at));
                                counts.received.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                counts.foreign.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        receipts
    });
    Ok(Dashboard { reader })
}

/// Waits until `counts.joined` reaches `n`.
async fn wait_joined(counts: &Counts, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts.joined.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} threads joined within 120 s",
                counts.joined.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Every case, in one run.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    target: Arc<Target>,
    db: &str,
    secret: &[u8],
    pid: u32,
    threads_per_connection: u32,
    dashboards: u32,
    per_dashboard: u32,
    rate: f64,
    seconds: u64,
) -> Result<Value> {
    let base = format!("http://{}", target.addr);
    let http = reqwest::Client::new();

    // 1. One connection following 1,000 threads: commit-to-event latency.
    let project = Uuid::new_v4();
    let threads: Vec<Uuid> = (0..threads_per_connection as u64)
        .map(|i| thread_id(7_000_000 + i))
        .collect();
    create_project(db, project, &threads).await?;
    let token = project_token(secret, project);
    let counts = Arc::new(Counts::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let one = open(&http, &base, &token, &threads, counts.clone(), stop.clone()).await?;
    wait_joined(&counts, threads.len() as u64).await?;
    eprintln!(
        "dashboard: one connection following {} threads, one commit per thread",
        threads.len()
    );
    let cpu0 = procfs::cpu_seconds(pid)?;
    let (url, received) = (db.to_owned(), counts.clone());
    let written = threads.clone();
    let commits = writer::on_own_thread(move || async move {
        let writer = Writer::connect(&url).await?;
        let mut commits = Vec::new();
        let mut timeouts = 0u32;
        for (i, thread) in written.iter().enumerate() {
            let (seq, at) = writer.insert(*thread).await?;
            commits.push((*thread, seq, at));
            let deadline = Instant::now() + EVENT_TIMEOUT;
            while received.received.load(Ordering::Relaxed) < i as u64 + 1 {
                if Instant::now() > deadline {
                    timeouts += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok((commits, timeouts))
    })
    .await??;
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    stop.cancel();
    let receipts = one.reader.await?;
    let (commits, timeouts) = commits;
    let single = latency_of(&commits, &receipts);
    eprintln!("  {single:?}, {timeouts} timeouts");
    let single_json = json!({
        "threads": threads.len(),
        "events": commits.len(),
        "latency": single,
        "missing": commits.len().saturating_sub(single.samples),
        "foreign": counts.foreign.load(Ordering::Relaxed),
        "broadcaster_cpu_us_per_event": cpu * 1e6 / single.samples.max(1) as f64,
    });

    // 2. RSS per connection: ten connections, each following 1,000 threads of its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = steady_rss(pid).await?;
    const RSS_CONNECTIONS: u64 = 10;
    let counts = Arc::new(Counts::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut held = Vec::new();
    for c in 0..RSS_CONNECTIONS {
        let project = Uuid::new_v4();
        let threads: Vec<Uuid> = (0..threads_per_connection as u64)
            .map(|i| thread_id(8_000_000 + c * 100_000 + i))
            .collect();
        create_project(db, project, &threads).await?;
        let token = project_token(secret, project);
        held.push(open(&http, &base, &token, &threads, counts.clone(), stop.clone()).await?);
    }
    wait_joined(&counts, RSS_CONNECTIONS * threads_per_connection as u64).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = steady_rss(pid).await?;
    stop.cancel();
    for d in held {
        d.reader.await?;
    }
    let per_connection = rss.saturating_sub(rss0) as f64 / RSS_CONNECTIONS as f64;
    eprintln!(
        "dashboard: RSS {:.1} MiB with none, {:.1} MiB with {RSS_CONNECTIONS} x {threads_per_connection} threads: {per_connection:.0} bytes per connection",
        rss0 as f64 / 1048576.0,
        rss as f64 / 1048576.0
    );
    let rss_json = json!({
        "connections": RSS_CONNECTIONS,
        "threads_per_connection": threads_per_connection,
        "rss0_bytes": rss0,
        "rss_bytes": rss,
        "bytes_per_connection": per_connection,
        "bytes_per_thread": per_connection / threads_per_connection.max(1) as f64,
    });

    // 3. Many dashboards of a hundred threads, writers over all their threads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = Arc::new(Counts::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut all_threads = Vec::new();
    let mut held = Vec::new();
    for d in 0..dashboards as u64 {
        let project = Uuid::new_v4();
        let threads: Vec<Uuid> = (0..per_dashboard as u64)
            .map(|i| thread_id(9_000_000 + d * 1_000 + i))
            .collect();
        create_project(db, project, &threads).await?;
        all_threads.extend_from_slice(&threads);
        let token = project_token(secret, project);
        held.push(open(&http, &base, &token, &threads, counts.clone(), stop.clone()).await?);
    }
    wait_joined(&counts, dashboards as u64 * per_dashboard as u64).await?;
    eprintln!(
        "dashboard: {dashboards} dashboards x {per_dashboard} threads, {rate} inserts/s for {seconds} s over all {} threads",
        all_threads.len()
    );
    let (cpu0, own0) = (
        procfs::cpu_seconds(pid)?,
        procfs::cpu_seconds(std::process::id())?,
    );
    let commits = paced(
        db,
        Arc::new(all_threads),
        rate,
        Duration::from_secs(seconds),
    )
    .await?;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while counts.received.load(Ordering::Relaxed) < commits.len() as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let own_cpu = procfs::cpu_seconds(std::process::id())? - own0;
    stop.cancel();
    let mut receipts = Vec::new();
    for d in held {
        receipts.extend(d.reader.await?);
    }
    let many = latency_of(&commits, &receipts);
    eprintln!("  {many:?}");
    let many_json = json!({
        "dashboards": dashboards,
        "threads_per_dashboard": per_dashboard,
        "offered_inserts_per_s": rate,
        "seconds": seconds,
        "inserts": commits.len(),
        "latency": many,
        "missing": commits.len().saturating_sub(many.samples),
        "foreign": counts.foreign.load(Ordering::Relaxed),
        "broadcaster_cpu_cores": cpu / seconds as f64,
        "broadcaster_cpu_us_per_event": cpu * 1e6 / many.samples.max(1) as f64,
        "loadgen_cpu_us_per_event": own_cpu * 1e6 / many.samples.max(1) as f64,
    });
    Ok(json!({ "dashboard": { "single": single_json, "rss": rss_json, "many": many_json } }))
}

/// Commit-to-receipt latencies: each receipt against the commit of its (thread, seq).
fn latency_of(commits: &[(Uuid, i64, Instant)], receipts: &[(Uuid, i64, Instant)]) -> Summary {
    let committed: HashMap<(Uuid, i64), Instant> =
        commits.iter().map(|&(t, s, at)| ((t, s), at)).collect();
    Summary::of(
        receipts
            .iter()
            .filter_map(|(t, s, at)| Some(at.saturating_duration_since(*committed.get(&(*t, *s))?)))
            .collect(),
    )
}

/// Inserts into random threads of `threads` at `rate` per second for `length`, from eight
/// connections on an OS thread of their own; returns each commit's (thread, seq, time).
async fn paced(
    db: &str,
    threads: Arc<Vec<Uuid>>,
    rate: f64,
    length: Duration,
) -> Result<Vec<(Uuid, i64, Instant)>> {
    const WRITERS: u64 = 8;
    let url = db.to_owned();
    writer::on_own_thread(move || async move {
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            writers.push(Writer::connect(&url).await?);
        }
        let started = tokio::time::Instant::now();
        let total = (rate * length.as_secs_f64()) as u64;
        let commits = Arc::new(Mutex::new(Vec::new()));
        let work = writers.into_iter().enumerate().map(|(w, writer)| {
            let threads = threads.clone();
            let commits = commits.clone();
            async move {
                let mut k = w as u64;
                while k < total {
                    let due = started + Duration::from_secs_f64(k as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    if started.elapsed() > length + Duration::from_secs(1) {
                        break;
                    }
                    // Spread over every thread: a multiplicative hash of k.
                    let t =
                        threads[(k.wrapping_mul(2_654_435_761) % threads.len() as u64) as usize];
                    let (seq, at) = writer.insert(t).await?;
                    commits.lock().unwrap().push((t, seq, at));
                    k += WRITERS;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(work).await?;
        let commits = std::mem::take(&mut *commits.lock().unwrap());
        Ok(commits)
    })
    .await?
}
