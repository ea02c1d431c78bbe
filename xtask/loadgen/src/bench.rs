//! The phases of `cargo xtask bench stream`: commit-to-receive latency, idle-stream capacity,
//! and fan-out at saturation. Each prints one JSON object on stdout.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::fleet::{thread_id, Fleet, Target};
use crate::procfs;
use crate::stats::Summary;
use crate::writer::{self, Writer};

/// How long one event may take to reach every subscriber before it counts as missing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One latency case: `threads` threads with `per_thread` subscribers each.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub threads: u32,
    pub per_thread: u32,
}

impl std::str::FromStr for Case {
    type Err = String;
    /// `THREADSxSUBSCRIBERS`, for example `1x1000` or `1000x1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (t, p) = s.split_once('x').ok_or("expected THREADSxSUBSCRIBERS")?;
        Ok(Case {
            threads: t.parse().map_err(|_| "threads must be a number")?,
            per_thread: p.parse().map_err(|_| "subscribers must be a number")?,
        })
    }
}

/// Commit-to-receive latency of each case: a writer commits one reply at a time (round robin over
/// the case's threads) and waits until every subscriber of its thread has it. With `writers`
/// above one, that many connections commit at once, each on its own share of the threads, each
/// pausing `pause` between its commits without waiting for receipts (writers that waited for
/// each other would not be concurrent).
pub async fn latency(
    target: Arc<Target>,
    db: &str,
    pid: u32,
    cases: &[Case],
    events: u32,
    pause: Duration,
    writers: u32,
) -> Result<Value> {
    let mut results = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        // At least one event per thread, so that every thread's path is measured.
        let events = events.max(case.threads);
        let first = 100_000 * (n as u64 + 1);
        let threads: Vec<Uuid> = (0..case.threads as u64)
            .map(|i| thread_id(first + i))
            .collect();
        writer::create_threads(db, &threads).await?;
        let mut fleet = Fleet::new(true);
        fleet.open(&target, &threads, 0, case.per_thread as usize);
        let failed = fleet.wait_open("latency").await;
        if failed > 0 {
            anyhow::bail!(
                "{failed} streams failed to open: {:?}",
                fleet.first_error.lock().unwrap()
            );
        }
        eprintln!(
            "latency: {} thread(s) x {} subscriber(s), {events} events",
            case.threads, case.per_thread
        );
        // The writer waits on the fleet's counter from its own thread.
        let counts = fleet.counts.clone();
        let (cpu0, own0) = (
            procfs::cpu_seconds(pid)?,
            procfs::cpu_seconds(std::process::id())?,
        );
        let url = db.to_owned();
        let per_thread = case.per_thread as u64;
        let commits = if writers > 1 {
            concurrent_commits(url, threads, events, writers, pause, counts, per_thread).await?
        } else {
            writer::on_own_thread(move || async move {
                let writer = Writer::connect(&url).await?;
                let mut commits = Vec::with_capacity(events as usize);
                let mut timeouts = 0u32;
                for i in 0..events {
                    let t = i % threads.len() as u32;
                    let (seq, at) = writer.insert(threads[t as usize]).await?;
                    commits.push((t, seq, at));
                    let expected = (i as u64 + 1) * per_thread;
                    let deadline = Instant::now() + EVENT_TIMEOUT;
                    while counts.received.load(Ordering::Relaxed) < expected {
                        if Instant::now() > deadline {
                            timeouts += 1;
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    tokio::time::sleep(pause).await;
                }
                Ok((commits, timeouts))
            })
            .await??
        };
        let cpu = procfs::cpu_seconds(pid)? - cpu0;
        let own_cpu = procfs::cpu_seconds(std::process::id())? - own0;
        let (commits, timeouts) = commits;
        let foreign = fleet.counts.foreign.load(Ordering::Relaxed);
        let ended = fleet.counts.ended.load(Ordering::Relaxed);
        let receipts = fleet.close().await;

        let committed: HashMap<(u32, i64), Instant> =
            commits.iter().map(|&(t, seq, at)| ((t, seq), at)).collect();
        let mut early = 0u64;
        let samples: Vec<Duration> = receipts
            .iter()
            .filter_map(|r| {
                let at = committed.get(&(r.thread, r.seq))?;
                if r.at < *at {
                    // Received before the writer saw its COMMIT return: the NOTIFY beat the
                    // CommandComplete. Counted as zero.
                    early += 1;
                }
                Some(r.at.saturating_duration_since(*at))
            })
            .collect();
        let expected = events as u64 * case.per_thread as u64;
        let summary = Summary::of(samples);
        let per_receipt = |seconds: f64| seconds * 1e6 / summary.samples.max(1) as f64;
        eprintln!(
            "  {summary:?}, {early} before the commit returned, {timeouts} timeouts; CPU per receipt: broadcaster {:.1} µs, load generator {:.1} µs",
            per_receipt(cpu),
            per_receipt(own_cpu)
        );
        results.push(json!({
            "threads": case.threads,
            "subscribers_per_thread": case.per_thread,
            "writers": writers.max(1),
            "events": events,
            "expected_receipts": expected,
            "latency": summary,
            "missing": expected.saturating_sub(summary.samples as u64),
            "received_before_commit_returned": early,
            "timeouts": timeouts,
            "foreign": foreign,
            "streams_ended_by_server": ended,
            "broadcaster_cpu_us_per_receipt": per_receipt(cpu),
            "loadgen_cpu_us_per_receipt": per_receipt(own_cpu),
        }));
    }
    Ok(json!({ "latency": results }))
}

/// `writers` connections committing `events` replies in all, at once, on an OS thread of their
/// own; then a wait (bounded) until every receipt is in. Returns the commits (thread index, seq,
/// when COMMIT returned) and 1 timeout if not every receipt came.
async fn concurrent_commits(
    url: String,
    threads: Vec<Uuid>,
    events: u32,
    writers: u32,
    pause: Duration,
    counts: Arc<crate::fleet::Counts>,
    per_thread: u64,
) -> Result<(Vec<(u32, i64, Instant)>, u32)> {
    writer::on_own_thread(move || async move {
        let threads = Arc::new(threads);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (url, threads) = (url.clone(), threads.clone());
            tasks.push(tokio::spawn(async move {
                let writer = Writer::connect(&url).await?;
                let mut commits = Vec::new();
                let mut i = w;
                while i < events {
                    let t = i % threads.len() as u32;
                    let (seq, at) = writer.insert(threads[t as usize]).await?;
                    commits.push((t, seq, at));
                    i += writers;
                    tokio::time::sleep(pause).await;
                }
                anyhow::Ok(commits)
            }));
        }
        let mut commits = Vec::with_capacity(events as usize);
        for task in tasks {
            commits.extend(task.await??);
        }
        let expected = events as u64 * per_thread;
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut timeouts = 0;
        while counts.received.load(Ordering::Relaxed) < expected {
            if Instant::now() > deadline {
                timeouts = 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((commits, timeouts))
    })
    .await?
}

/// The broadcaster's RSS, the median of three samples a second apart (so that one sample taken
/// mid-burst does not decide).
pub(crate) async fn steady_rss(pid: u32) -> Result<u64> {
    let mut samples = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples.push(procfs::rss_bytes(pid)?);
    }
    samples.sort_unstable();
    Ok(samples[1])
}

/// RSS with `counts` idle streams open, `per_thread` on each thread (one each is the costlier
/// case: every stream then has a thread task too), against RSS with none.
pub async fn capacity(
    target: Arc<Target>,
    pid: u32,
    counts: &[usize],
    per_thread: usize,
    settle: Duration,
) -> Result<Value> {
    let per_thread = per_thread.max(1);
    let most = counts.iter().copied().max().unwrap_or(0);
    // Every stream is a socket here and one there; a few more descriptors for everything else.
    const SPARE: u64 = 200;
    let (own_soft, own_hard) = procfs::raise_open_files(most as u64 + SPARE);
    let theirs = procfs::open_files_limit(pid)?;
    let reachable = own_soft.min(theirs).saturating_sub(SPARE) as usize;
    eprintln!(
        "capacity: open-files limits: load generator {own_soft} (hard {own_hard}), broadcaster {theirs}; at most {reachable} streams can be held"
    );
    tokio::time::sleep(settle).await;
    let rss0 = steady_rss(pid).await?;
    eprintln!("  RSS with no streams: {} KiB", rss0 / 1024);

    let mut fleet = Fleet::new(false);
    let mut points = Vec::new();
    for &wanted in counts {
        let n = wanted.min(reachable);
        if n > fleet.len() {
            let started = Instant::now();
            for i in fleet.len()..n {
                let thread = thread_id(1_000_000 + (i / per_thread) as u64);
                fleet.open(&target, &[thread], i as u32, 1);
            }
            let failed = fleet.wait_open("capacity").await;
            if failed > 0 {
                let error = fleet.first_error.lock().unwrap().clone();
                eprintln!("  {failed} streams failed to open: {error:?}");
                points.push(json!({
                    "wanted": wanted, "held": null, "failed": failed, "error": error,
                }));
                break;
            }
            eprintln!(
                "  {n} streams open in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(settle).await;
        let rss = steady_rss(pid).await?;
        let held = fleet.counts.joined.load(Ordering::Relaxed)
            - fleet.counts.ended.load(Ordering::Relaxed);
        let per_stream = (rss.saturating_sub(rss0)) as f64 / held.max(1) as f64;
        eprintln!(
            "  {held} streams held: RSS {} KiB, {per_stream:.0} bytes per stream",
            rss / 1024
        );
        points.push(json!({
            "wanted": wanted,
            "held": held,
            "rss_bytes": rss,
            "bytes_per_stream": per_stream.round(),
            "limited_by_open_files": n < wanted,
        }));
    }
    let ended = fleet.counts.ended.load(Ordering::Relaxed);
    fleet.close().await;
    Ok(json!({
        "capacity": {
            "rss0_bytes": rss0,
            "streams_per_thread": per_thread,
            "points": points,
            "open_files_limit": { "loadgen_soft": own_soft, "loadgen_hard": own_hard, "broadcaster_soft": theirs },
            "streams_ended_by_server": ended,
        }
    }))
}

/// One step of the fan-out search.
struct Step {
    rate: f64,
    inserted: u64,
    delivered: u64,
    seconds: f64,
    cpu_seconds: f64,
    loadgen_cpu_seconds: f64,
    drained: bool,
    ended: u64,
}

/// Fan-out at saturation: `per_thread` subscribers on each of `threads` threads; writers commit
/// at a rate that doubles every step until delivery stops keeping up (a stream is cut off as too
/// slow, the backlog does not drain within a few seconds, or the writers cannot reach the rate).
pub async fn fanout(
    target: Arc<Target>,
    db: &str,
    pid: u32,
    threads: u32,
    per_thread: u32,
    first_rate: f64,
    step: Duration,
) -> Result<Value> {
    let thread_ids: Vec<Uuid> = (0..threads as u64)
        .map(|i| thread_id(900_000 + i))
        .collect();
    writer::create_threads(db, &thread_ids).await?;
    let mut fleet = Fleet::new(false);
    fleet.open(&target, &thread_ids, 0, per_thread as usize);
    let failed = fleet.wait_open("fan-out").await;
    if failed > 0 {
        anyhow::bail!("{failed} streams failed to open");
    }
    let thread_ids = Arc::new(thread_ids);
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = first_rate;
    for _ in 0..10 {
        let received0 = fleet.counts.received.load(Ordering::Relaxed);
        let ended0 = fleet.counts.ended.load(Ordering::Relaxed);
        let cpu0 = procfs::cpu_seconds(pid)?;
        let own0 = procfs::cpu_seconds(std::process::id())?;
        let started = Instant::now();
        let inserted = paced_inserts(db, thread_ids.clone(), rate, step).await?;
        let expected = received0 + inserted * per_thread as u64;
        let drained = fleet.wait_received(expected, Duration::from_secs(5)).await;
        let seconds = started.elapsed().as_secs_f64();
        let s = Step {
            rate,
            inserted,
            delivered: fleet.counts.received.load(Ordering::Relaxed) - received0,
            seconds,
            cpu_seconds: procfs::cpu_seconds(pid)? - cpu0,
            loadgen_cpu_seconds: procfs::cpu_seconds(std::process::id())? - own0,
            drained,
            ended: fleet.counts.ended.load(Ordering::Relaxed) - ended0,
        };
        eprintln!(
            "fan-out: offered {:.0} inserts/s: {} inserts, {:.0} events/s delivered, broadcaster CPU {:.2} cores, load generator {:.2}, drained {}, {} cut off",
            s.rate,
            s.inserted,
            s.delivered as f64 / s.seconds,
            s.cpu_seconds / s.seconds,
            s.loadgen_cpu_seconds / s.seconds,
            s.drained,
            s.ended
        );
        let achieved = s.inserted as f64 / step.as_secs_f64();
        let saturated = !s.drained || s.ended > 0 || achieved < 0.9 * s.rate;
        steps.push(s);
        if saturated || fleet.counts.ended.load(Ordering::Relaxed) > 0 {
            break;
        }
        rate *= 2.0;
    }
    fleet.close().await;
    let best = steps
        .iter()
        .max_by(|a, b| {
            (a.delivered as f64 / a.seconds).total_cmp(&(b.delivered as f64 / b.seconds))
        })
        .context("no step ran")?;
    let to_json = |s: &Step| {
        json!({
            "offered_inserts_per_s": s.rate,
            "inserts": s.inserted,
            "delivered": s.delivered,
            "seconds": s.seconds,
            "events_per_s": s.delivered as f64 / s.seconds,
            "broadcaster_cpu_cores": s.cpu_seconds / s.seconds,
            "broadcaster_cpu_us_per_event": s.cpu_seconds * 1e6 / s.delivered.max(1) as f64,
            "loadgen_cpu_cores": s.loadgen_cpu_seconds / s.seconds,
            "drained": s.drained,
            "cut_off": s.ended,
        })
    };
    Ok(json!({
        "fanout": {
            "threads": threads,
            "subscribers_per_thread": per_thread,
            "best": to_json(best),
            "steps": steps.iter().map(to_json).collect::<Vec<_>>(),
        }
    }))
}

/// Inserts into `threads` (round robin) at `rate` per second for `length`, from eight connections
/// on an OS thread of their own; returns how many committed.
async fn paced_inserts(
    db: &str,
    threads: Arc<Vec<Uuid>>,
    rate: f64,
    length: Duration,
) -> Result<u64> {
    const WRITERS: u64 = 8;
    let url = db.to_owned();
    writer::on_own_thread(move || async move {
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            writers.push(Writer::connect(&url).await?);
        }
        let started = tokio::time::Instant::now();
        let total = (rate * length.as_secs_f64()) as u64;
        let done = Arc::new(Mutex::new(0u64));
        let work = writers.into_iter().enumerate().map(|(w, writer)| {
            let threads = threads.clone();
            let done = done.clone();
            async move {
                let mut k = w as u64;
                while k < total {
                    let due = started + Duration::from_secs_f64(k as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    if started.elapsed() > length + Duration::from_secs(1) {
                        // Far behind schedule: the writers are the limit; stop the step.
                        break;
                    }
                    writer
                        .insert(threads[(k % threads.len() as u64) as usize])
                        .await?;
                    *done.lock().unwrap() += 1;
                    k += WRITERS;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(work).await?;
        let n = *done.lock().unwrap();
        Ok(n)
    })
    .await?
}
