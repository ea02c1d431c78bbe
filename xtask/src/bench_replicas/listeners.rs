//! What each listening replica costs the primary: CPU of the LISTEN backends and of the whole
//! cluster per insert, and the writer's insert latency, at a fixed rate, for 0, 1, 2, ... replicas.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::*;
use crate::procstat;
use crate::stack::{Broadcaster, Stack};

pub fn run(stack: &Stack, args: &Args) -> Result<String> {
    let counts: Vec<usize> = args
        .listeners
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let threads = 1000;
    create_threads(stack, LISTENER_THREADS, threads)?;
    let postmaster: u32 = std::fs::read_to_string(stack.cluster.dir().join("data/postmaster.pid"))
        .context("read postmaster.pid")?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster pid")?;
    let mut out = format!(
        "The primary with N listening replicas: {} inserts/s for {} s into {} threads with no subscribers (every replica still receives and decodes every notification)\n\n",
        args.listener_rate, args.listener_secs, threads
    );
    out.push_str("| listening replicas | inserts | insert p50 | insert p99 | primary CPU per insert, besides the inserting backend | per LISTEN backend, per notification | per replica, per notification | queue usage after |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
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
        // The writer's backend has gone with its connection, so the primary's figure is everyone
        // else's: the LISTEN backends, the WAL writer, autovacuum.
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
