//! The capacity case: replicas near their open-files limit, one LISTEN each, RSS per replica and
//! per stream, and the latency of a reply to its thread's streams on every replica.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::*;
use crate::procstat;
use crate::stack::Stack;

pub fn run(stack: &Stack, args: &Args) -> Result<String> {
    let threads = args.replicas * args.streams_per_replica / args.per_thread;
    // Whole threads: the streams actually held.
    let total = threads * args.per_thread;
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
