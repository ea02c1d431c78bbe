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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::procstat;
use crate::stack::{Broadcaster, Loadgen, Stack};

#[derive(clap::Args)]
#[group(skip)]
pub struct Args {
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
    let capacity = capacity(stack, args)?;
    let failover = failover(stack, args)?;
    let listeners = listeners(stack, args)?;
    println!("{capacity}\n{failover}\n{listeners}");
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
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let insert = client
                .prepare(
                    "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                     VALUES ($1::text::uuid, 'agency', 'Bench', 'A reply of ordinary length, about as long as people write.')
                     RETURNING thread_seq",
                )
                .await?;
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

fn capacity(stack: &Stack, args: &Args) -> Result<String> {
    let total = args.replicas * args.streams_per_replica;
    let threads = total / args.per_thread;
    create_threads(stack, CAPACITY_THREADS, threads)?;
    let mut replicas = Vec::new();
    for _ in 0..args.replicas {
        replicas.push(stack.broadcaster(args.streams_per_replica + 500)?);
    }
    let rss0: Vec<u64> = replicas
        .iter()
        .map(|r| procstat::rss_bytes(r.pid()))
        .collect::<Result<_>>()?;
    eprintln!(
        "capacity: {} replicas, {total} streams ({threads} threads x {}), {} load generators",
        args.replicas, args.per_thread, args.loadgens
    );
    let opening = Instant::now();
    let mut loadgens = hold(
        stack,
        &replicas,
        CAPACITY_THREADS,
        threads,
        args.per_thread,
        args.loadgens,
        &["--record"],
    )?;
    let opened_in = opening.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let listens = listen_pids(stack)?;

    let mut out = String::new();
    out.push_str(&format!(
        "Multi-replica capacity: {} replicas, {} streams in all ({} threads x {} streams, each thread's streams spread over every replica), {} load-generator processes; all open in {:.1} s\n\n",
        args.replicas, thousands(total as u64), thousands(threads as u64), args.per_thread, args.loadgens, opened_in.as_secs_f64()
    ));
    out.push_str("| replica | streams open | RSS idle | RSS with streams | bytes per stream | open files (limit) |\n|---|---:|---:|---:|---:|---:|\n");
    let mut held = 0.0;
    for (i, replica) in replicas.iter().enumerate() {
        let streams = metric(replica, "threadcast_open_streams");
        held += streams;
        let rss = procstat::rss_bytes(replica.pid())?;
        out.push_str(&format!(
            "| {i} | {} | {} | {} | {} | {} ({}) |\n",
            thousands(streams as u64),
            mib(rss0[i]),
            mib(rss),
            thousands(((rss.saturating_sub(rss0[i])) as f64 / streams.max(1.0)) as u64),
            thousands(procstat::open_fds(replica.pid())? as u64),
            thousands(procstat::open_files_limit(replica.pid())?),
        ));
    }
    out.push_str(&format!(
        "\nstreams held: {} of {}; LISTEN connections on the primary: {} (one per replica: {})\n\n",
        thousands(held as u64),
        thousands(total as u64),
        listens.len(),
        if listens.len() == args.replicas {
            "yes"
        } else {
            "NO"
        }
    ));

    // Latency: one reply at a time to threads across the range; each reaches its thread's
    // streams on every replica.
    let probe_threads: Vec<u64> = (0..args.probes)
        .map(|i| CAPACITY_THREADS + (i * threads / args.probes.max(1)) as u64)
        .collect();
    let commits = write(
        &stack.url,
        probe_threads,
        50,
        Some(args.probes),
        Arc::new(AtomicBool::new(false)),
    )
    .join()
    .expect("the writer does not panic")?;
    std::thread::sleep(Duration::from_secs(2));
    let mut reports = Vec::new();
    for loadgen in &mut loadgens {
        reports.push(loadgen.ask("report")?);
    }
    let committed: HashMap<(u64, i64), Commit> =
        commits.iter().map(|c| ((c.thread, c.seq), *c)).collect();
    // Latency from the COMMIT's return (a receipt that beat it counts as 0: the NOTIFY travels in
    // parallel with the COMMIT's answer), and from the INSERT's sending (an upper bound).
    let (mut receipts, mut from_sent, mut early) = (Vec::new(), Vec::new(), 0u64);
    let mut everyone: HashMap<(u64, i64), (usize, u64, u64)> = HashMap::new();
    for report in &reports {
        for stamp in report["stamps"].as_array().into_iter().flatten() {
            let key = (
                stamp[0].as_u64().unwrap_or(0),
                stamp[1].as_i64().unwrap_or(0),
            );
            if let Some(commit) = committed.get(&key) {
                let at = stamp[2].as_u64().unwrap_or(0);
                if at < commit.returned {
                    early += 1;
                }
                let latency = at.saturating_sub(commit.returned);
                let sent = at.saturating_sub(commit.sent);
                receipts.push(latency);
                from_sent.push(sent);
                let entry = everyone.entry(key).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(latency);
                entry.2 = entry.2.max(sent);
            }
        }
    }
    receipts.sort_unstable();
    from_sent.sort_unstable();
    let reached: Vec<&(usize, u64, u64)> = everyone
        .values()
        .filter(|(n, _, _)| *n == args.per_thread)
        .collect();
    let mut all_reached: Vec<u64> = reached.iter().map(|r| r.1).collect();
    let mut all_reached_sent: Vec<u64> = reached.iter().map(|r| r.2).collect();
    all_reached.sort_unstable();
    all_reached_sent.sort_unstable();
    let expected = commits.len() * args.per_thread;
    out.push_str(&format!(
        "A reply committed reaches its thread's {} streams on {} replicas ({} replies, one every 20 ms, while all {} streams are open)\n\n",
        args.per_thread, args.replicas, commits.len(), thousands(total as u64)
    ));
    out.push_str("| measured | samples | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n");
    for (what, samples, count) in [
        ("COMMIT returned -> each stream", &receipts, receipts.len()),
        (
            "COMMIT returned -> every stream of the thread",
            &all_reached,
            all_reached.len(),
        ),
        ("INSERT sent -> each stream", &from_sent, from_sent.len()),
        (
            "INSERT sent -> every stream of the thread",
            &all_reached_sent,
            all_reached_sent.len(),
        ),
    ] {
        out.push_str(&format!(
            "| {what} | {} | {} | {} | {} |\n",
            thousands(count as u64),
            ms(percentile(samples, 50)),
            ms(percentile(samples, 99)),
            ms(samples.last().copied().unwrap_or(0))
        ));
    }
    out.push_str(&format!(
        "\nreceipts that arrived before the writer saw its COMMIT return (counted as 0 above): {}\n",
        thousands(early)
    ));
    out.push_str(&format!(
        "\nreceipts missing: {}; streams checked against the table: {}\n",
        expected.saturating_sub(receipts.len()),
        exactly_once_line(&reports)
    ));
    drop(loadgens);
    for replica in replicas {
        replica.stop()?;
    }
    Ok(out)
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

fn failover(stack: &Stack, args: &Args) -> Result<String> {
    let total = args.replicas * args.failover_streams_per_replica;
    let threads = total / args.failover_per_thread;
    create_threads(stack, FAILOVER_THREADS, threads)?;
    let mut replicas = Vec::new();
    for _ in 0..args.replicas {
        // Room for their own clients and a share of a dead replica's, within the open-files limit.
        replicas.push(stack.broadcaster(19_800)?);
    }
    eprintln!("failover: {} replicas, {total} streams", args.replicas);
    let mut loadgens = hold(
        stack,
        &replicas,
        FAILOVER_THREADS,
        threads,
        args.failover_per_thread,
        args.loadgens,
        &["--failover"],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write(
        &stack.url,
        (FAILOVER_THREADS..FAILOVER_THREADS + threads as u64).collect(),
        args.failover_rate,
        None,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let victim = replicas.remove(0);
    let victim_streams = metric(&victim, "threadcast_open_streams");
    let killed_at = now_ns();
    victim.kill()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let all_live_at;
    loop {
        let mut live = 0;
        for loadgen in &mut loadgens {
            live += loadgen.ask("status")?["live"].as_u64().unwrap_or(0);
        }
        if live as usize >= total {
            all_live_at = now_ns();
            break;
        }
        if Instant::now() > deadline {
            bail!("only {live} of {total} streams live 180 s after the kill");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Keep writing a while after, then let the last replies arrive.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("the writer does not panic")?;
    std::thread::sleep(Duration::from_secs(3));
    let mut survivors = Vec::new();
    for replica in &replicas {
        survivors.push((
            metric(replica, "threadcast_open_streams"),
            procstat::rss_bytes(replica.pid())?,
        ));
    }
    let mut statuses = Vec::new();
    let mut reports = Vec::new();
    for loadgen in &mut loadgens {
        let report = loadgen.ask("report")?;
        statuses.push(report["status"].clone());
        reports.push(report);
    }
    let sum = |field: &str| -> u64 {
        statuses
            .iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .sum()
    };
    let last_rejoin = statuses
        .iter()
        .filter_map(|s| s["last_rejoin_ns"].as_u64())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "Failover: {} replicas holding {} streams ({} threads x {}); replica 0 ({} streams) killed with SIGKILL while replies were written at {}/s\n\n",
        args.replicas, thousands(total as u64), thousands(threads as u64), args.failover_per_thread,
        thousands(victim_streams as u64), args.failover_rate
    ));
    out.push_str("| measured | value |\n|---|---:|\n");
    out.push_str(&format!(
        "| streams cut | {} |\n| reconnections (after the 2 s retry: EventSource waits) | {} |\n| refused reconnection attempts | {} |\n",
        thousands(sum("disconnects")), thousands(sum("rejoins")), sum("failed_reconnects")
    ));
    out.push_str(&format!(
        "| kill -> last stream rejoined (resumed from its Last-Event-ID) | {} |\n| kill -> every stream live again (polled every 100 ms) | {} |\n",
        ms(last_rejoin.saturating_sub(killed_at)),
        ms(all_live_at.saturating_sub(killed_at))
    ));
    out.push_str(&format!(
        "| replies written during the case | {} |\n",
        thousands(written.len() as u64)
    ));
    for (i, (streams, rss)) in survivors.iter().enumerate() {
        out.push_str(&format!(
            "| survivor {} afterwards: streams, RSS | {}, {} |\n",
            i + 1,
            thousands(*streams as u64),
            mib(*rss)
        ));
    }
    out.push_str(&format!(
        "\nevery stream against the table: {}\n",
        exactly_once_line(&reports)
    ));
    drop(loadgens);
    for replica in replicas {
        replica.stop()?;
    }
    Ok(out)
}

fn listeners(stack: &Stack, args: &Args) -> Result<String> {
    let counts: Vec<usize> = args
        .listeners
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let threads = 1000;
    create_threads(stack, LISTENER_THREADS, threads)?;
    let postmaster: u32 = std::fs::read_to_string(stack.cluster.dir.join("data/postmaster.pid"))
        .context("read postmaster.pid")?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster pid")?;
    let mut out = format!(
        "The primary with N listening replicas: {} inserts/s for {} s into {} threads with no subscribers (every replica still receives and decodes every notification)\n\n",
        args.listener_rate, args.listener_secs, threads
    );
    out.push_str("| listening replicas | inserts | insert p50 | insert p99 | primary CPU per insert | per LISTEN backend, per notification | per replica, per notification | queue usage after |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for k in counts {
        let mut replicas = Vec::new();
        for _ in 0..k {
            replicas.push(stack.broadcaster(100)?);
        }
        let listens = listen_pids(stack)?;
        if listens.len() != k {
            bail!("{k} replicas hold {} LISTEN connections", listens.len());
        }
        let primary = |pids: &[u32]| -> f64 {
            pids.iter()
                .filter_map(|p| procstat::cpu_seconds(*p).ok())
                .sum()
        };
        let mut all = procstat::children(postmaster);
        all.push(postmaster);
        let replica_pids: Vec<u32> = replicas.iter().map(Broadcaster::pid).collect();
        let (all0, listen0, replicas0) = (primary(&all), primary(&listens), primary(&replica_pids));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = write(
            &stack.url,
            (LISTENER_THREADS..LISTENER_THREADS + threads as u64).collect(),
            args.listener_rate,
            Some((u64::from(args.listener_rate) * args.listener_secs) as usize),
            stop,
        );
        let written = writer.join().expect("the writer does not panic")?;
        // Let the listeners drain what was queued before reading their CPU time.
        std::thread::sleep(Duration::from_millis(500));
        let mut all1 = procstat::children(postmaster);
        all1.push(postmaster);
        let (all_cpu, listen_cpu, replica_cpu) = (
            primary(&all1) - all0,
            primary(&listens) - listen0,
            primary(&replica_pids) - replicas0,
        );
        let usage = crate::cmd::output(stack.psql().args([
            "-At",
            "-c",
            "SELECT pg_notification_queue_usage()",
        ]))?;
        let mut rtts: Vec<u64> = written.iter().map(|w| w.rtt.as_nanos() as u64).collect();
        rtts.sort_unstable();
        let n = written.len().max(1) as f64;
        let per_listener = |cpu: f64| {
            if k == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} µs", cpu * 1e6 / n / k as f64)
            }
        };
        out.push_str(&format!(
            "| {k} | {} | {} | {} | {:.1} µs | {} | {} | {} |\n",
            thousands(written.len() as u64),
            ms(percentile(&rtts, 50)),
            ms(percentile(&rtts, 99)),
            all_cpu * 1e6 / n,
            per_listener(listen_cpu),
            per_listener(replica_cpu),
            usage.trim()
        ));
        for replica in replicas {
            replica.stop()?;
        }
    }
    Ok(out)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
