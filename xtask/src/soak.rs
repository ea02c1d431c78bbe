//! `cargo xtask soak --minutes N`: the broadcaster under a steady, bounded load on loopback for a
//! while (thousands of streams over many threads, writers at a steady rate, clients dropping and
//! resuming with Last-Event-ID, the LISTEN connection killed now and then), then an exactly-once
//! check of every client against the table. Not part of CI. Prints the figures for
//! docs/reliability.md and fails if anything was lost or doubled.

use anyhow::{bail, Result};

use threadcast_harness::SoakArgs;

use crate::stack::{self, Stack};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    soak: SoakArgs,
    /// Use the extension already installed in the PostgreSQL of `PG_BIN` (no set-up, no
    /// `cargo pgrx install`).
    #[arg(long)]
    no_install: bool,
}

/// RSS may drift this much between the first and the last fifth of the steady part of the run
/// (allocator noise), and no more.
const RSS_TOLERANCE: f64 = 0.05;

pub fn run(args: Args) -> Result<()> {
    let soak = &args.soak;
    if !(soak.minutes > 0.0 && soak.minutes <= 24.0 * 60.0) {
        bail!("--minutes must be between 0 and 1440");
    }
    // Durable commits (the default): a change a client saw must still be in the table if the
    // database crashes and recovers during the soak.
    let stack = Stack::up("soak", &[], !args.no_install)?;
    let machine = stack::machine();
    let broadcaster = stack.broadcaster(soak.streams as usize * 2)?;
    let mut loadgen_args = vec!["soak".to_owned()];
    loadgen_args.extend(soak.to_args());
    let loadgen_args: Vec<&str> = loadgen_args.iter().map(String::as_str).collect();
    let result = stack.loadgen(&broadcaster, &loadgen_args)?;
    let stopped_in = broadcaster.stop()?;
    let s = &result["soak"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let ms = |v: &serde_json::Value| format!("{:.2} ms", n(v) as f64 / 1000.0);

    eprintln!("broadcaster log: {}", stack.log_path().display());
    println!("\n{machine}\n");
    println!(
        "{} minutes, {} streams over {} threads, {} changes/s ({} inserts, {} deletes), {} LISTEN kills, {} connects ({} refused, {} cut off by the server), {} failed database calls of the writers\n",
        s["minutes"], s["streams"], s["threads"], s["write_rate"], n(&s["inserts"]), n(&s["deletes"]),
        n(&s["listen_kills"]), n(&s["connects"]), n(&s["refused"]), n(&s["cut_off_by_server"]),
        n(&s["database_errors"]),
    );
    println!("| events delivered | lost | duplicated | out of order | other thread's |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} |",
        n(&s["delivered"]),
        n(&s["lost"]),
        n(&s["duplicated"]),
        n(&s["out_of_order"]),
        n(&s["foreign"]),
    );
    println!("\nCommit to receive, for events committed while their stream was connected\n");
    println!("| events | receipts | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (what, l) in [
        ("all", &s["latency"]),
        (
            "committed away from a LISTEN kill (not within 0.5 s before to 3 s after one)",
            &s["latency_away_from_kills"],
        ),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            n(&l["samples"]),
            ms(&l["p50_us"]),
            ms(&l["p99_us"]),
            ms(&l["max_us"])
        );
    }
    println!("\nBroadcaster RSS over time (one sample a minute of the samples taken every 5 s)\n");
    println!("| minute | streams connected | events delivered so far | RSS |");
    println!("|---:|---:|---:|---:|");
    let samples = s["rss"]["samples"].as_array().cloned().unwrap_or_default();
    let mut next_minute = 0;
    for sample in &samples {
        let t = n(&sample["t_s"]);
        if t >= next_minute * 60 {
            println!(
                "| {} | {} | {} | {:.1} MiB |",
                t / 60,
                n(&sample["connected"]),
                n(&sample["delivered"]),
                n(&sample["rss_bytes"]) as f64 / 1048576.0
            );
            next_minute = t / 60 + 1;
        }
    }
    let first = s["rss"]["steady_first_fifth_mean_bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let last = s["rss"]["steady_last_fifth_mean_bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let steady = first > 0.0 && last <= first * (1.0 + RSS_TOLERANCE);
    println!(
        "\nsteady RSS: first fifth {:.1} MiB, last fifth {:.1} MiB ({:+.1}%): {}",
        first / 1048576.0,
        last / 1048576.0,
        if first > 0.0 {
            (last / first - 1.0) * 100.0
        } else {
            0.0
        },
        if steady {
            "steady"
        } else if first == 0.0 {
            "run too short to tell"
        } else {
            "GROWING"
        }
    );
    println!("broadcaster stopped {stopped_in:?} after SIGTERM");

    let bad = n(&s["lost"])
        + n(&s["duplicated"])
        + n(&s["out_of_order"])
        + n(&s["unexpected"])
        + n(&s["foreign"]);
    if bad > 0 {
        bail!("the soak found lost, doubled, misordered or misdirected events");
    }
    if first > 0.0 && !steady {
        bail!("the broadcaster's memory grew while connections were steady");
    }
    Ok(())
}
