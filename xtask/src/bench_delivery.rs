//! `cargo xtask bench stream --compare-delivery`: what batched delivery adds to the time from a
//! writer's COMMIT to the event on a stream, against per-transaction delivery, in one run on one
//! stack. Cells: one writer on one thread, and 32 writers committing at once on 32 threads (one
//! subscriber each); the two modes alternate within every round, so drift on a shared machine
//! falls on both. The mode is switched with `threadcast.enable(..., delivery => ...)` between
//! cells; the broadcaster reads both forms of notification, so it is not restarted.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd;
use crate::stack::Stack;

/// The target: batched adds at most this much to p99 (issue 13).
const ADDED_P99_TARGET_MS: f64 = 3.0;

/// Each round's (p50, p99) in ms, per (mode, writers).
type Figures<'a> = Vec<((&'a str, u32), Vec<(f64, f64)>)>;

/// (writers, case, events) of each cell.
const CELLS: [(u32, &str, u32); 2] = [(1, "1x1", 300), (32, "32x1", 1600)];
const MODES: [&str; 2] = ["transaction", "batched"];

pub fn run(stack: &Stack, machine: &str, rounds: u32) -> Result<()> {
    let broadcaster = stack.broadcaster(1_000)?;
    // (mode, writers) -> p50 and p99 of each round, in ms.
    let mut figures: Figures = Vec::new();
    for round in 0..rounds.max(1) {
        for (writers, case, events) in CELLS {
            for mode in MODES {
                cmd::output(stack.cluster.psql("threadcast").args([
                    "-c",
                    &format!(
                        "SELECT threadcast.enable('public.feedback_replies', \
                         replica_identity_full => true, delivery => '{mode}')"
                    ),
                ]))?;
                let result = stack.loadgen(
                    &broadcaster,
                    &[
                        "latency",
                        "--cases",
                        case,
                        "--events",
                        &events.to_string(),
                        "--writers",
                        &writers.to_string(),
                    ],
                )?;
                let latency = &result["latency"][0];
                let (p50, p99) = (
                    ms(&latency["latency"]["p50_us"])?,
                    ms(&latency["latency"]["p99_us"])?,
                );
                eprintln!(
                    "round {} {mode:<11} {writers:>2} writer(s): p50 {p50:.2} ms, p99 {p99:.2} ms, missing {}",
                    round + 1,
                    latency["missing"]
                );
                match figures.iter_mut().find(|(k, _)| *k == (mode, writers)) {
                    Some((_, runs)) => runs.push((p50, p99)),
                    None => figures.push(((mode, writers), vec![(p50, p99)])),
                }
            }
        }
    }
    broadcaster.stop()?;

    println!("\n{machine}\n");
    println!(
        "Commit to event received, per transaction and batched (median over {rounds} rounds of each round's p50 and p99)\n"
    );
    println!("| writers | per transaction p50 | p99 | batched p50 | p99 | added p99 |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let mut verdicts = Vec::new();
    for (writers, _, _) in CELLS {
        let cell = |mode: &str| {
            let runs = &figures
                .iter()
                .find(|(k, _)| *k == (mode, writers))
                .expect("measured")
                .1;
            (
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
            )
        };
        let ((t50, t99), (b50, b99)) = (cell("transaction"), cell("batched"));
        println!(
            "| {writers} | {t50:.2} ms | {t99:.2} ms | {b50:.2} ms | {b99:.2} ms | {:+.2} ms |",
            b99 - t99
        );
        verdicts.push(format!(
            "added p99 at {writers} writer(s): {:+.2} ms (target at most {ADDED_P99_TARGET_MS} ms): {}",
            b99 - t99,
            if b99 - t99 <= ADDED_P99_TARGET_MS { "met" } else { "NOT met" }
        ));
    }
    println!();
    for v in verdicts {
        println!("- {v}");
    }
    Ok(())
}

fn ms(us: &Value) -> Result<f64> {
    Ok(us.as_u64().context("a latency figure")? as f64 / 1000.0)
}
