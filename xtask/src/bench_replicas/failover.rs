//! The failover case: a loaded replica is killed (SIGKILL), its clients reconnect to the others
//! with Last-Event-ID, and every stream is checked against the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::*;
use crate::procstat;
use crate::stack::Stack;

pub fn run(stack: &Stack, args: &Args) -> Result<String> {
    let threads = args.replicas * args.failover_streams_per_replica / args.failover_per_thread;
    // Whole threads: the streams actually held.
    let total = threads * args.failover_per_thread;
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
    // When each cut stream was live again, from the kill.
    let mut rejoins: Vec<u64> = reports
        .iter()
        .flat_map(|r| r["rejoined_ns"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .map(|at| at.saturating_sub(killed_at))
        .collect();
    rejoins.sort_unstable();
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
        "| kill -> cut streams rejoined: p50, p90, p99 | {}, {}, {} |\n",
        ms(percentile(&rejoins, 50)),
        ms(percentile(&rejoins, 90)),
        ms(percentile(&rejoins, 99))
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
