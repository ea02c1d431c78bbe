//! `cargo xtask bench stream`: what the broadcaster does for its streams, measured in one run by
//! a load generator in a process of its own. Commit-to-receive latency (one thread with 1, 100
//! and 1,000 subscribers; 1,000 threads with one each), the RSS of idle streams, fan-out at
//! saturation with the CPU time it took, the open rate of fresh streams and a restart with
//! thousands of them open (until every one is back and has resumed exactly), a flood of
//! notifications from a connect-only role (the replies' latency meanwhile, RSS, CPU), and the
//! dashboard cases (one connection following 1,000 threads: latency and RSS per connection; 100
//! dashboards x 100 threads with writers over all of them: latency and CPU per event). Prints the
//! tables for docs/benchmarks.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::stack::{self, Stack};

#[derive(clap::Args)]
pub struct Args {
    /// Latency cases as THREADSxSUBSCRIBERS.
    #[arg(long, default_value = "1x1,1x100,1x1000,1000x1")]
    cases: String,
    /// Events committed per latency case (at least one per thread).
    #[arg(long, default_value_t = 300)]
    events: u32,
    /// Idle streams to measure RSS with.
    #[arg(long, default_value = "10000,50000")]
    counts: String,
    /// Subscribers of the one thread in the fan-out measurement.
    #[arg(long, default_value_t = 1000)]
    fanout_subscribers: u32,
    /// Seconds per fan-out step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// The measurements to make, of latency, capacity, fanout, restart, flood, dashboard.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,capacity,fanout,restart,flood,dashboard"
    )]
    phases: Vec<String>,
    /// Streams held through the restart (19,800: the open-files limit on the machine of
    /// docs/benchmarks.md), for each spread of `--restart-per-thread`.
    #[arg(long, default_value_t = 19_800)]
    restart_streams: usize,
    /// Streams per thread in the restart, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    restart_per_thread: Vec<usize>,
    /// Notifications in the flood (half forged, half replayed).
    #[arg(long, default_value_t = 1_000_000)]
    flood_notifications: u64,
    /// Use the extension already installed in the PostgreSQL of `PG_BIN` (no set-up, no
    /// `cargo pgrx install`).
    #[arg(long)]
    no_install: bool,
    /// Another broadcaster binary to measure side by side with this build's (for example the
    /// main branch's, built into another target dir): each measurement runs for it, then for
    /// this build, and a table compares the two.
    #[arg(long)]
    before: Option<PathBuf>,
    /// Measure only what batched delivery adds to commit-to-event latency: one thread and one
    /// writer, and 32 threads with 32 writers committing at once, per transaction and batched,
    /// interleaved over `--rounds`.
    #[arg(long)]
    compare_delivery: bool,
    /// Threads one dashboard connection follows.
    #[arg(long, default_value_t = 1000)]
    dashboard_threads: u32,
    /// Dashboards of the many-dashboards case, and threads each follows.
    #[arg(long, default_value_t = 100)]
    dashboards: u32,
    #[arg(long, default_value_t = 100)]
    per_dashboard: u32,
    /// Inserts per second, over all of the many dashboards' threads, and for how long.
    #[arg(long, default_value_t = 500.0)]
    dashboard_rate: f64,
    #[arg(long, default_value_t = 10)]
    dashboard_secs: u64,
    /// Only the dashboard cases (this build's broadcaster; no --before).
    #[arg(long)]
    dashboard_only: bool,
    /// Latency rounds: with `--before`, the latency cases run this many times for each binary,
    /// alternating, and the comparison takes the median of each one's rounds (a shared machine's
    /// load comes and goes; alternating spreads it over both). With `--compare-delivery`, the
    /// rounds of that comparison.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Run the multi-replica cases (capacity over several replicas, failover, the primary's
    /// cost per listening replica) instead of the single-replica ones.
    #[arg(long)]
    multi_replica: bool,
    #[command(flatten)]
    multi: crate::bench_replicas::Args,
}

/// The targets of issue 3, on a 2-core machine.
const P99_TARGET_US: u64 = 5_000;
const BYTES_PER_STREAM_TARGET: f64 = 8.0 * 1024.0;
const STREAMS_TARGET: u64 = 50_000;

pub fn run(args: Args) -> Result<()> {
    // The writers' commits need not wait for the disk: what is measured starts when COMMIT
    // returns, and a shared machine's disk would only make the write rate jitter.
    let stack = Stack::up(
        "bench-stream",
        &[("synchronous_commit", "off")],
        !args.no_install,
    )?;
    let machine = stack::machine();
    if args.compare_delivery {
        return crate::bench_delivery::run(&stack, &machine, args.rounds.max(1) as u32);
    }
    if args.dashboard_only {
        let dashboard = dashboard_cases(&stack, &args)?;
        eprintln!("broadcaster log: {}", stack.log_path().display());
        println!("\n{machine}\n");
        return print_dashboard(&dashboard["dashboard"]);
    }
    if args.multi_replica {
        println!("\n{machine}\n");
        return crate::bench_replicas::run(&stack, &args.multi);
    }

    let mut bins = Vec::new();
    if let Some(before) = &args.before {
        bins.push(("before", before.clone()));
    }
    bins.push(("after", stack.broadcaster_bin()));
    // Capacity first, on a fresh broadcaster, so that RSS with no streams means what it says.
    let most: usize = args
        .counts
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .max()
        .unwrap_or(0);
    let mut runs: Vec<Run> = bins
        .iter()
        .map(|(label, bin)| Run {
            label,
            bin: bin.clone(),
            capacity: Value::Null,
            shared: Value::Null,
            latency: Vec::new(),
            fanout: Value::Null,
            restart: Vec::new(),
            flood: Value::Null,
        })
        .collect();
    let phase = |name: &str| args.phases.iter().any(|p| p == name);
    for run in runs.iter_mut().filter(|_| phase("capacity")) {
        let broadcaster = stack.broadcaster_from(&run.bin, most + 1000)?;
        run.capacity = stack.loadgen(&broadcaster, &["capacity", "--counts", &args.counts])?;
        broadcaster.stop()?;
    }
    // The same with ten streams per thread: the difference is what a thread task costs.
    for run in runs.iter_mut().filter(|_| phase("capacity")) {
        let broadcaster = stack.broadcaster_from(&run.bin, 11_000)?;
        run.shared = stack.loadgen(
            &broadcaster,
            &["capacity", "--counts", "10000", "--per-thread", "10"],
        )?;
        broadcaster.stop()?;
    }
    for _ in 0..args.rounds.max(1) {
        for run in runs.iter_mut().filter(|_| phase("latency")) {
            let broadcaster = stack.broadcaster_from(&run.bin, 10_000)?;
            run.latency.push(stack.loadgen(
                &broadcaster,
                &[
                    "latency",
                    "--cases",
                    &args.cases,
                    "--events",
                    &args.events.to_string(),
                ],
            )?);
            broadcaster.stop()?;
        }
    }
    for run in runs.iter_mut().filter(|_| phase("fanout")) {
        let broadcaster = stack.broadcaster_from(&run.bin, 10_000)?;
        run.fanout = stack.loadgen(
            &broadcaster,
            &[
                "fanout",
                "--subscribers",
                &args.fanout_subscribers.to_string(),
                "--step-secs",
                &args.step_secs.to_string(),
            ],
        )?;
        broadcaster.stop()?;
    }
    for run in runs.iter_mut().filter(|_| phase("restart")) {
        for per_thread in &args.restart_per_thread {
            run.restart.push(restart(
                &stack,
                &run.bin,
                args.restart_streams,
                *per_thread,
            )?);
        }
    }
    for run in runs.iter_mut().filter(|_| phase("flood")) {
        let broadcaster = stack.broadcaster_from(&run.bin, 10_000)?;
        run.flood = stack.loadgen(
            &broadcaster,
            &[
                "flood",
                "--notifications",
                &args.flood_notifications.to_string(),
            ],
        )?;
        broadcaster.stop()?;
    }
    if runs.len() > 1 {
        print_comparison(&runs);
    }
    let mut this = runs.pop().expect("this build was measured");

    eprintln!("broadcaster log: {}", stack.log_path().display());
    println!("\n{machine}\n");
    let mut verdicts = Vec::new();
    if let Some(latency) = this.latency.pop() {
        verdicts.extend(print_latency(&latency["latency"])?);
    }
    if phase("capacity") {
        verdicts.extend(print_capacity(
            &this.capacity["capacity"],
            "one thread each",
            true,
        )?);
        verdicts.extend(print_capacity(
            &this.shared["capacity"],
            "ten per thread",
            false,
        )?);
    }
    if phase("fanout") {
        print_fanout(&this.fanout["fanout"])?;
    }
    if phase("restart") {
        for run in runs.iter().chain([&this]) {
            println!("{}:\n", run.label);
            verdicts.extend(print_restart(&run.restart));
        }
    }
    if phase("flood") {
        for run in runs.iter().chain([&this]) {
            println!("{}:\n", run.label);
            print_flood(&run.flood["flood"]);
        }
    }
    if phase("dashboard") {
        let dashboard = dashboard_cases(&stack, &args)?;
        print_dashboard(&dashboard["dashboard"])?;
    }
    println!();
    for line in &verdicts {
        println!("- {line}");
    }
    Ok(())
}

/// The dashboard cases, on a fresh broadcaster of this build.
fn dashboard_cases(stack: &Stack, args: &Args) -> Result<Value> {
    let broadcaster = stack.broadcaster_from(&stack.broadcaster_bin(), 10_000)?;
    let result = stack.loadgen(
        &broadcaster,
        &[
            "dashboard",
            "--threads",
            &args.dashboard_threads.to_string(),
            "--dashboards",
            &args.dashboards.to_string(),
            "--per-dashboard",
            &args.per_dashboard.to_string(),
            "--rate",
            &args.dashboard_rate.to_string(),
            "--seconds",
            &args.dashboard_secs.to_string(),
        ],
    )?;
    broadcaster.stop()?;
    Ok(result)
}

fn print_dashboard(d: &Value) -> Result<()> {
    let (single, rss, many) = (&d["single"], &d["rss"], &d["many"]);
    if single.is_null() {
        bail!("no dashboard results");
    }
    println!(
        "\nDashboards: project tokens, many threads per connection (GET /api/dashboard/stream)\n"
    );
    println!(
        "| case | events | receipts | p50 | p99 | max | missing | broadcaster CPU per event |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, c) in [
        (
            format!(
                "1 connection x {} threads, one commit at a time",
                thousands(single["threads"].as_u64().unwrap_or(0))
            ),
            single,
        ),
        (
            format!(
                "{} dashboards x {} threads, {} inserts/s for {} s",
                many["dashboards"],
                many["threads_per_dashboard"],
                many["offered_inserts_per_s"],
                many["seconds"]
            ),
            many,
        ),
    ] {
        let l = &c["latency"];
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {:.1} µs |",
            thousands(c["events"].as_u64().or(c["inserts"].as_u64()).unwrap_or(0)),
            thousands(l["samples"].as_u64().unwrap_or(0)),
            ms(&l["p50_us"]),
            ms(&l["p99_us"]),
            ms(&l["max_us"]),
            c["missing"],
            c["broadcaster_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "\nmany dashboards: broadcaster {:.2} cores, load generator {:.1} µs of CPU per event; events of a thread not followed: {}",
        many["broadcaster_cpu_cores"].as_f64().unwrap_or(0.0),
        many["loadgen_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        many["foreign"].as_u64().unwrap_or(0) + single["foreign"].as_u64().unwrap_or(0)
    );
    println!(
        "RSS: {:.1} MiB with no dashboard, {:.1} MiB with {} connections of {} threads each: {} bytes per connection ({} per followed thread, its thread task included)",
        rss["rss0_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        rss["rss_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        rss["connections"],
        thousands(rss["threads_per_connection"].as_u64().unwrap_or(0)),
        thousands(rss["bytes_per_connection"].as_f64().unwrap_or(0.0) as u64),
        thousands(rss["bytes_per_thread"].as_f64().unwrap_or(0.0) as u64),
    );
    Ok(())
}

/// One broadcaster binary's measurements.
struct Run {
    label: &'static str,
    bin: PathBuf,
    capacity: Value,
    shared: Value,
    /// One result per latency round.
    latency: Vec<Value>,
    fanout: Value,
    /// One measurement per spread of the restart.
    restart: Vec<Value>,
    flood: Value,
}

impl Run {
    /// RSS per idle stream at the most streams measured, one thread each.
    fn bytes_per_stream(&self) -> Option<f64> {
        self.capacity["capacity"]["points"]
            .as_array()?
            .iter()
            .filter_map(|p| p["bytes_per_stream"].as_f64())
            .next_back()
    }

    /// p99 commit-to-receive at one thread with 1,000 subscribers, in µs, of each latency round.
    fn p99s_1x1000(&self) -> Vec<f64> {
        self.latency
            .iter()
            .filter_map(|round| {
                round["latency"]
                    .as_array()?
                    .iter()
                    .find(|c| c["threads"] == 1 && c["subscribers_per_thread"] == 1000)?["latency"]
                    ["p99_us"]
                    .as_f64()
            })
            .collect()
    }

    /// The median of [`Run::p99s_1x1000`].
    fn p99_1x1000(&self) -> Option<f64> {
        let mut p99s = self.p99s_1x1000();
        p99s.sort_by(f64::total_cmp);
        p99s.get(p99s.len() / 2).copied()
    }

    /// Events delivered per second at saturation.
    fn fanout(&self) -> Option<f64> {
        self.fanout["fanout"]["best"]["events_per_s"].as_f64()
    }
}

/// The side-by-side table of `--before`.
fn print_comparison(runs: &[Run]) {
    println!("\nSide by side, measured in this one run (each measurement for one binary, then the other)\n");
    let labels: Vec<String> = runs
        .iter()
        .map(|r| format!("{} (`{}`)", r.label, r.bin.display()))
        .collect();
    println!("| measure | {} | ratio |", labels.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(runs.len()));
    type Measure = fn(&Run) -> Option<f64>;
    type Show = fn(f64) -> String;
    let rows: [(&str, Measure, Show); 3] = [
        (
            "bytes per idle stream (lower is better)",
            Run::bytes_per_stream,
            |v| thousands(v as u64),
        ),
        ("p99 at 1 x 1,000 (lower is better)", Run::p99_1x1000, |v| {
            format!("{:.2} ms", v / 1000.0)
        }),
        (
            "fan-out events/s at saturation (higher is better)",
            Run::fanout,
            |v| thousands(v as u64),
        ),
    ];
    for (name, value, show) in rows {
        let values: Vec<Option<f64>> = runs.iter().map(value).collect();
        let cells: Vec<String> = values
            .iter()
            .map(|v| v.map_or_else(|| "?".to_owned(), show))
            .collect();
        let ratio = match (
            values.first().copied().flatten(),
            values.last().copied().flatten(),
        ) {
            (Some(before), Some(after)) if before > 0.0 => format!("{:.2}", after / before),
            _ => "?".to_owned(),
        };
        println!("| {name} | {} | {ratio} |", cells.join(" | "));
    }
    for run in runs {
        println!(
            "\np99 at 1 x 1,000 per round, {}: {} ms",
            run.label,
            run.p99s_1x1000()
                .iter()
                .map(|us| format!("{:.2}", us / 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!();
}

fn ms(us: &Value) -> String {
    format!("{:.2} ms", us.as_u64().unwrap_or(0) as f64 / 1000.0)
}

/// `n` with a comma every three digits, as the tables print numbers.
pub(crate) fn thousands(n: u64) -> String {
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

fn print_latency(cases: &Value) -> Result<Vec<String>> {
    let Some(cases) = cases.as_array() else {
        bail!("no latency results")
    };
    println!("Commit to event received (COMMIT returned in the writer -> frame read by the client, one monotonic clock)\n");
    println!("| threads x subscribers | events | receipts | p50 | p99 | max | missing | CPU per receipt: broadcaster | load generator |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for case in cases {
        let l = &case["latency"];
        println!(
            "| {} x {} | {} | {} | {} | {} | {} | {} | {:.1} µs | {:.1} µs |",
            thousands(case["threads"].as_u64().unwrap_or(0)),
            thousands(case["subscribers_per_thread"].as_u64().unwrap_or(0)),
            case["events"],
            thousands(l["samples"].as_u64().unwrap_or(0)),
            ms(&l["p50_us"]),
            ms(&l["p99_us"]),
            ms(&l["max_us"]),
            case["missing"],
            case["broadcaster_cpu_us_per_receipt"]
                .as_f64()
                .unwrap_or(0.0),
            case["loadgen_cpu_us_per_receipt"].as_f64().unwrap_or(0.0),
        );
        if case["threads"] == 1 && case["subscribers_per_thread"] == 1000 {
            let p99 = l["p99_us"].as_u64().unwrap_or(u64::MAX);
            verdicts.push(format!(
                "p99 at 1,000 subscribers: {} (target under 5 ms): {}",
                ms(&l["p99_us"]),
                if p99 < P99_TARGET_US {
                    "met"
                } else {
                    "NOT met"
                }
            ));
        }
    }
    println!();
    Ok(verdicts)
}

fn print_capacity(capacity: &Value, spread: &str, judge: bool) -> Result<Vec<String>> {
    let Some(points) = capacity["points"].as_array() else {
        bail!("no capacity results")
    };
    let rss0 = capacity["rss0_bytes"].as_u64().unwrap_or(0);
    println!("Idle streams, {spread} (broadcaster RSS from /proc/<pid>/status)\n");
    println!("| idle streams | held | broadcaster RSS | bytes per stream |");
    println!("|---:|---:|---:|---:|");
    println!("| 0 | 0 | {:.1} MiB | |", rss0 as f64 / 1048576.0);
    let mut verdicts = Vec::new();
    let mut most_held = 0;
    for p in points {
        let held = p["held"].as_u64().unwrap_or(0);
        most_held = most_held.max(held);
        let note = if p["limited_by_open_files"] == true {
            format!(
                " (open-files limit: broadcaster {})",
                capacity["open_files_limit"]["broadcaster_soft"]
            )
        } else if p["held"].is_null() {
            format!(" ({})", p["error"])
        } else {
            String::new()
        };
        println!(
            "| {} | {}{note} | {:.1} MiB | {} |",
            thousands(p["wanted"].as_u64().unwrap_or(0)),
            thousands(held),
            p["rss_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
            thousands(p["bytes_per_stream"].as_f64().unwrap_or(0.0) as u64),
        );
        if let Some(per) = p["bytes_per_stream"].as_f64().filter(|_| judge) {
            verdicts.push(format!(
                "RSS per idle stream at {} streams: {} bytes (target at most 8 KiB = 8,192): {}",
                thousands(held),
                thousands(per as u64),
                if per <= BYTES_PER_STREAM_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            ));
        }
    }
    if !judge {
        println!();
        return Ok(verdicts);
    }
    verdicts.push(format!(
        "concurrent streams held: {} (target 50,000): {}",
        thousands(most_held),
        if most_held >= STREAMS_TARGET {
            "met".to_owned()
        } else {
            format!(
                "NOT met here (open-files limits: broadcaster {}, load generator {} soft / {} hard)",
                capacity["open_files_limit"]["broadcaster_soft"],
                capacity["open_files_limit"]["loadgen_soft"],
                capacity["open_files_limit"]["loadgen_hard"]
            )
        }
    ));
    println!(
        "\nstreams the server ended while idle: {}\n",
        capacity["streams_ended_by_server"]
    );
    Ok(verdicts)
}

fn print_fanout(fanout: &Value) -> Result<()> {
    let Some(steps) = fanout["steps"].as_array() else {
        bail!("no fan-out results")
    };
    println!(
        "Fan-out: {} thread(s) x {} subscribers, writers at a rate that doubles each step\n",
        fanout["threads"], fanout["subscribers_per_thread"]
    );
    println!("| inserts/s offered | inserts | events delivered/s | broadcaster CPU | CPU per event | load generator CPU | kept up |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for s in steps {
        let kept_up = s["drained"] == true && s["cut_off"] == 0;
        println!(
            "| {} | {} | {} | {:.2} cores | {:.2} µs | {:.2} cores | {} |",
            s["offered_inserts_per_s"],
            s["inserts"],
            thousands(s["events_per_s"].as_f64().unwrap_or(0.0) as u64),
            s["broadcaster_cpu_cores"].as_f64().unwrap_or(0.0),
            s["broadcaster_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            s["loadgen_cpu_cores"].as_f64().unwrap_or(0.0),
            if kept_up {
                "yes".to_owned()
            } else {
                format!("no ({} cut off, drained {})", s["cut_off"], s["drained"])
            }
        );
    }
    let best = &fanout["best"];
    println!(
        "\nsaturation: {} events delivered/s at {:.2} broadcaster cores ({:.2} µs of CPU per event)",
        thousands(best["events_per_s"].as_f64().unwrap_or(0.0) as u64),
        best["broadcaster_cpu_cores"].as_f64().unwrap_or(0.0),
        best["broadcaster_cpu_us_per_event"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// The target of issue 10: every stream back and resumed within 10 s of a restart.
const RECOVERY_TARGET_SECS: f64 = 10.0;

/// Opens `streams` streams on a fresh broadcaster from `bin`, `per_thread` on each thread, and
/// restarts it (SIGTERM, then a new process on the same address) when the load generator says it
/// is READY; returns what the load generator measured, with the new broadcaster's table reads
/// for the recovery.
fn restart(
    stack: &Stack,
    bin: &std::path::Path,
    streams: usize,
    per_thread: usize,
) -> Result<Value> {
    let limit = streams + 1000;
    let first = stack.broadcaster_from(bin, limit)?;
    let (addr, pid) = (first.addr, first.pid());
    let mut first = Some(first);
    let mut second = None;
    let mut measured = stack.loadgen_with(
        addr,
        pid,
        &[
            "restart",
            "--streams",
            &streams.to_string(),
            "--per-thread",
            &per_thread.to_string(),
        ],
        |line| {
            if line == "READY" {
                if let Some(first) = first.take() {
                    let stopped = first.stop()?;
                    eprintln!(
                        "restart: the broadcaster stopped in {stopped:.1?}; starting it again"
                    );
                    second = Some(stack.broadcaster_at(bin, addr, limit)?);
                }
            }
            Ok(())
        },
    )?;
    let second = second.context("the load generator never said READY")?;
    let reads = |purpose: &str| {
        second.metric(&format!(
            "threadcast_table_reads_total{{purpose=\"{purpose}\"}}"
        ))
    };
    measured["restart"]["table_reads"] = serde_json::json!({
        "baseline": reads("baseline"),
        "catch_up": reads("catch_up"),
        "repair": reads("repair"),
    });
    second.stop()?;
    Ok(measured)
}

fn print_restart(runs: &[Value]) -> Vec<String> {
    println!("Open rate and a restart (SIGTERM, a new process on the same address; streams come back as EventSource does)\n");
    println!("| streams | per thread | open rate | replies written while down | back (joined) | resumed exactly | table reads after: baseline / catch-up / repair | doubled / lost |");
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    let mut verdicts = Vec::new();
    for run in runs {
        let r = &run["restart"];
        let seconds = |v: &Value| v.as_f64().map_or("-".to_owned(), |s| format!("{s:.2} s"));
        println!(
            "| {} | {} | {}/s | {} | {} | {} | {} / {} / {} | {} / {} |",
            thousands(r["streams"].as_u64().unwrap_or(0)),
            thousands(
                r["streams"].as_u64().unwrap_or(0) / r["threads"].as_u64().unwrap_or(1).max(1)
            ),
            thousands(r["open_rate"].as_f64().unwrap_or(0.0) as u64),
            thousands(r["writes_while_down"].as_u64().unwrap_or(0)),
            seconds(&r["rejoined_seconds"]),
            seconds(&r["recovered_seconds"]),
            r["table_reads"]["baseline"],
            r["table_reads"]["catch_up"],
            r["table_reads"]["repair"],
            r["doubled"],
            r["lost"],
        );
        let recovered = r["recovered_seconds"].as_f64().unwrap_or(f64::MAX);
        let exact =
            r["doubled"] == 0 && r["lost"] == 0 && r["out_of_order"] == 0 && r["all_back"] == true;
        verdicts.push(format!(
            "restart with {} streams ({} per thread): back and resumed in {:.2} s, {} (target: within {RECOVERY_TARGET_SECS} s, exactly): {}",
            thousands(r["streams"].as_u64().unwrap_or(0)),
            r["streams"].as_u64().unwrap_or(0) / r["threads"].as_u64().unwrap_or(1).max(1),
            recovered,
            if exact { "exactly" } else { "NOT exactly" },
            if exact && recovered <= RECOVERY_TARGET_SECS { "met" } else { "NOT met" }
        ));
    }
    println!();
    verdicts
}

fn print_flood(flood: &Value) {
    let mib = |v: &Value| format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / 1048576.0);
    println!(
        "Flood: a connect-only role sends {} notifications ({} forged, {} replays of genuine ones) while {} replies/s flow to {} streams on {} threads\n",
        thousands(flood["notifications"].as_u64().unwrap_or(0)),
        thousands(flood["forged"].as_u64().unwrap_or(0)),
        thousands(flood["replayed"].as_u64().unwrap_or(0)),
        flood["reply_rate"],
        flood["streams"],
        flood["threads"],
    );
    println!("| replies | receipts | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (label, key) in [
        ("without the flood", "latency_without"),
        ("during the flood", "latency_during"),
    ] {
        let l = &flood[key];
        println!(
            "| {label} | {} | {} | {} | {} |",
            thousands(l["samples"].as_u64().unwrap_or(0)),
            ms(&l["p50_us"]),
            ms(&l["p99_us"]),
            ms(&l["max_us"]),
        );
    }
    println!(
        "\nsent in {:.1} s, taken by the broadcaster in {:.1} s ({} notifications/s, {:.1} s of CPU); RSS {} before, peak {}; {} rejected, {} stale, {} dropped for a full buffer (every live thread then read the table); replies doubled {}, lost {}, all arrived: {}",
        flood["sent_seconds"].as_f64().unwrap_or(0.0),
        flood["taken_seconds"].as_f64().unwrap_or(0.0),
        thousands(flood["taken_per_second"].as_f64().unwrap_or(0.0) as u64),
        flood["broadcaster_cpu_seconds"].as_f64().unwrap_or(0.0),
        mib(&flood["rss_before_bytes"]),
        mib(&flood["peak_rss_bytes"]),
        thousands(flood["rejected"].as_f64().unwrap_or(0.0) as u64),
        thousands(flood["stale"].as_f64().unwrap_or(0.0) as u64),
        thousands(flood["dropped"].as_f64().unwrap_or(0.0) as u64),
        flood["doubled"],
        flood["lost"],
        flood["all_arrived"],
    );
}
