//! `cargo xtask bench stream --multi-replica`: the broadcaster as deployed at scale, several replicas
//! on one PostgreSQL primary, each with its own LISTEN connection.
//!
//! 1. Capacity: N replicas (processes) holding idle streams near their open-files limit, the
//!    load spread over several load-generator processes (each has the same limit); RSS per
//!    replica and per stream, one LISTEN per replica, and the latency of a reply to every stream
//!    of its thread (its streams are spread over all replicas).
//! 2. Failover: one loaded replica is killed (SIGKILL); its clients reconnect to the others with
//!    Last-Event-ID; the time until all are live again, and every stream checked against the
//!    table (nothing lost, nothing doubled).
//! 3. Listeners: what each LISTENing replica costs the primary, at a fixed insert rate, for
//!    0, 1, 2, 4, ... listening replicas.
//!
//! Latency crosses processes: the writer (here) and the load generators stamp with
//! CLOCK_MONOTONIC, one clock for the whole machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

mod capacity;
mod failover;
mod listeners;

pub(crate) use crate::bench_stream::thousands;
use crate::stack::{Broadcaster, Loadgen, Stack};

#[derive(clap::Args)]
#[group(skip)]
pub struct Args {
    /// Which of the multi-replica cases to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "capacity,failover,listeners"
    )]
    replica_cases: Vec<String>,
    /// Broadcaster replicas of the capacity case.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Idle streams per replica in the capacity case.
    #[arg(long, default_value_t = 19_000)]
    streams_per_replica: usize,
    /// Streams per thread, spread over the replicas.
    #[arg(long, default_value_t = 10)]
    per_thread: usize,
    /// Load-generator processes (each has its own open-files limit).
    #[arg(long, default_value_t = 4)]
    loadgens: usize,
    /// Replies committed one at a time during the capacity case, for the latency figures.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Streams per replica in the failover case: the survivors must have room for the dead
    /// one's clients under their own open-files limit.
    #[arg(long, default_value_t = 12_000)]
    failover_streams_per_replica: usize,
    /// Streams per thread in the failover case: more per thread puts more of each thread's
    /// replies on streams that are moving.
    #[arg(long, default_value_t = 30)]
    failover_per_thread: usize,
    /// Replies per second written while a replica dies.
    #[arg(long, default_value_t = 300)]
    failover_rate: u32,
    /// Listening replicas to measure the primary's cost with.
    #[arg(long, default_value = "0,1,2,4,8,16")]
    listeners: String,
    /// Inserts per second while measuring listeners.
    #[arg(long, default_value_t = 1000)]
    listener_rate: u32,
    /// Seconds per listener measurement.
    #[arg(long, default_value_t = 10)]
    listener_secs: u64,
}

/// Thread numbers of each case (see loadgen's `thread_id`), far apart.
const CAPACITY_THREADS: u64 = 1_000_000;
const FAILOVER_THREADS: u64 = 2_000_000;
const LISTENER_THREADS: u64 = 3_000_000;

/// A thread's key, as the load generator's `thread_id` makes it.
fn thread_key(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// CLOCK_MONOTONIC in nanoseconds, the clock the load generators stamp with.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct passed and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn run(stack: &Stack, args: &Args) -> Result<()> {
    for case in &args.replica_cases {
        let table = match case.as_str() {
            "capacity" => capacity::run(stack, args)?,
            "failover" => failover::run(stack, args)?,
            "listeners" => listeners::run(stack, args)?,
            other => bail!("unknown case {other:?}: capacity, failover or listeners"),
        };
        println!("{table}");
    }
    Ok(())
}

fn create_threads(stack: &Stack, first: u64, count: usize) -> Result<()> {
    crate::cmd::output(stack.psql().arg("-c").arg(format!(
        "INSERT INTO feedback (id) SELECT format('00000000-0000-4000-8000-%s', lpad(g::text, 12, '0'))::uuid
           FROM generate_series({first}, {}) g ON CONFLICT DO NOTHING",
        first + count as u64 - 1
    )))?;
    Ok(())
}

/// Starts `loadgens` processes holding `per_thread` streams on each of `threads` threads from
/// `first`, spread over `replicas`; waits until each says it is ready.
fn hold(
    stack: &Stack,
    replicas: &[Broadcaster],
    first: u64,
    threads: usize,
    per_thread: usize,
    loadgens: usize,
    extra: &[&str],
) -> Result<Vec<Loadgen>> {
    let targets: Vec<String> = replicas.iter().map(|b| b.addr.to_string()).collect();
    let mut processes = Vec::with_capacity(loadgens);
    let mut start = first;
    for i in 0..loadgens {
        let count = threads / loadgens + usize::from(i < threads % loadgens);
        let mut args: Vec<String> = [
            "hold",
            "--targets",
            &targets.join(","),
            "--first-thread",
            &start.to_string(),
            "--threads",
            &count.to_string(),
            "--per-thread",
            &per_thread.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        processes.push(stack.loadgen_process(&replicas[0], &args)?);
        start += count as u64;
    }
    for (i, process) in processes.iter_mut().enumerate() {
        let ready = process.read()?;
        if ready["failed"].as_u64() != Some(0) {
            bail!("load generator {i}: {ready}");
        }
    }
    Ok(processes)
}

/// The value of a metric on a replica's /metrics.
fn metric(replica: &Broadcaster, name: &str) -> f64 {
    crate::stack::get_body(replica.addr, "/metrics")
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                (series == name).then(|| value.parse().ok()).flatten()
            })
        })
        .unwrap_or(0.0)
}

/// `application_name = 'threadcast-broadcaster'` sessions: one LISTEN connection per replica.
fn listen_pids(stack: &Stack) -> Result<Vec<u32>> {
    let out = crate::cmd::output(stack.psql().args([
        "-At",
        "-c",
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'threadcast-broadcaster'",
    ]))?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// One committed reply: its thread and seq, CLOCK_MONOTONIC ns when its INSERT was sent and when
/// its COMMIT returned, and that round trip.
#[derive(Clone, Copy)]
struct Commit {
    thread: u64,
    seq: i64,
    sent: u64,
    returned: u64,
    rtt: Duration,
}

/// Commits one reply to each of `threads` in turn, at `rate` per second, until `stop` (or `count`
/// replies).
fn write(
    url: &str,
    threads: Vec<u64>,
    rate: u32,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Commit>>> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (client, insert) = crate::stack::reply_writer(&url).await?;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut out = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| i < c) {
                tick.tick().await;
                let thread = threads[i % threads.len()];
                let (started, sent) = (Instant::now(), now_ns());
                let row = client.query_one(&insert, &[&thread_key(thread)]).await?;
                out.push(Commit {
                    thread,
                    seq: row.get(0),
                    sent,
                    returned: now_ns(),
                    rtt: started.elapsed(),
                });
                i += 1;
            }
            Ok(out)
        })
    })
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn exactly_once_line(reports: &[Value]) -> String {
    let sum = |field: &str| -> u64 {
        reports
            .iter()
            .map(|r| r["exactly_once"][field].as_u64().unwrap_or(0))
            .sum()
    };
    format!(
        "{} of {} exact, {} lost, {} doubled, {} out of order",
        thousands(sum("exact")),
        thousands(sum("streams")),
        sum("lost"),
        sum("doubled"),
        sum("out_of_order")
    )
}
