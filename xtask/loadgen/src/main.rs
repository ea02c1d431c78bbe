//! `loadgen`: the load-generating client of `cargo xtask bench stream` and `cargo xtask soak`, a
//! process of its own next to the broadcaster. It opens streams over raw HTTP/1.1 from loopback
//! addresses, writes replies through PostgreSQL, reads the broadcaster's memory and CPU from
//! /proc, and prints its findings as one JSON object on stdout (progress goes to stderr).

mod bench;
mod dashboard;
mod fleet;
mod flood;
mod hold;
mod procfs;
mod soak;
mod sse_client;
mod stats;
mod storm;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::fleet::Target;

#[derive(Parser)]
#[command(about = "threadcast's load generator (run by cargo xtask bench stream / soak)")]
struct Cli {
    /// The broadcaster's address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// The broadcaster's process id, for its memory and CPU time.
    #[arg(long)]
    pid: u32,
    /// The database the broadcaster serves, for the writers (a superuser URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The broadcaster's token secret.
    #[arg(long, env = "THREADCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Subcommand)]
enum Phase {
    /// Commit-to-receive latency, case by case.
    Latency {
        /// Cases as THREADSxSUBSCRIBERS.
        #[arg(long, value_delimiter = ',', default_value = "1x1,1x100,1x1000,1000x1")]
        cases: Vec<bench::Case>,
        /// Events committed per case.
        #[arg(long, default_value_t = 300)]
        events: u32,
        /// Pause between one event's last receipt and the next commit, in milliseconds.
        #[arg(long, default_value_t = 5)]
        pause_ms: u64,
        /// Writer connections committing at once (above one, they do not wait for receipts).
        #[arg(long, default_value_t = 1)]
        writers: u32,
    },
    /// RSS of the broadcaster with idle streams, against none.
    Capacity {
        #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
        counts: Vec<usize>,
        /// Streams on each thread.
        #[arg(long, default_value_t = 1)]
        per_thread: usize,
        /// Seconds to let things settle before each measurement.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// Events delivered per second at saturation and the broadcaster's CPU time.
    Fanout {
        #[arg(long, default_value_t = 1)]
        threads: u32,
        #[arg(long, default_value_t = 1000)]
        subscribers: u32,
        /// Inserts per second of the first step; each next step doubles it.
        #[arg(long, default_value_t = 50.0)]
        first_rate: f64,
        #[arg(long, default_value_t = 5)]
        step_secs: u64,
    },
    /// Dashboard streams: one following many threads (latency, RSS per connection), and many
    /// dashboards with writers over all their threads (latency, CPU per event).
    Dashboard {
        /// Threads one connection follows.
        #[arg(long, default_value_t = 1000)]
        threads: u32,
        #[arg(long, default_value_t = 100)]
        dashboards: u32,
        #[arg(long, default_value_t = 100)]
        per_dashboard: u32,
        /// Inserts per second over all the dashboards' threads.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Opens streams (the open rate), prints READY, and measures how they come back once
    /// `xtask` has restarted the broadcaster: resumed exactly, and how soon.
    Restart {
        #[arg(long, default_value_t = 19_800)]
        streams: usize,
        #[arg(long, default_value_t = 1)]
        per_thread: usize,
        /// Threads that get a reply while the broadcaster is down.
        #[arg(long, default_value_t = 1000)]
        writes_while_down: usize,
    },
    /// A connect-only role floods the channel (forged and replayed notifications) while real
    /// replies flow: their latency, the broadcaster's RSS and CPU, exactly-once.
    Flood {
        #[arg(long, default_value_t = 1_000_000)]
        notifications: u64,
        #[arg(long, default_value_t = 10)]
        threads: u32,
        #[arg(long, default_value_t = 10)]
        per_thread: u32,
        /// Real replies per second, without and with the flood.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Seconds of replies without the flood first, for comparison.
        #[arg(long, default_value_t = 10)]
        baseline_secs: u64,
    },
    /// Streams, writers, disconnects and LISTEN kills for a while; then exactly-once checks.
    Soak(threadcast_harness::SoakArgs),
    /// Holds streams over several replicas until told to report (multi-replica benchmark).
    Hold(hold::Args),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let target = Arc::new(Target::new(cli.addr, cli.jwt_secret.as_bytes())?);
    let db = cli.database_url.as_str();
    let result = match cli.phase {
        Phase::Latency {
            cases,
            events,
            pause_ms,
            writers,
        } => {
            bench::latency(
                target,
                db,
                cli.pid,
                &cases,
                events,
                Duration::from_millis(pause_ms),
                writers,
            )
            .await?
        }
        Phase::Capacity {
            counts,
            per_thread,
            settle_secs,
        } => {
            bench::capacity(
                target,
                cli.pid,
                &counts,
                per_thread,
                Duration::from_secs(settle_secs),
            )
            .await?
        }
        Phase::Fanout {
            threads,
            subscribers,
            first_rate,
            step_secs,
        } => {
            bench::fanout(
                target,
                db,
                cli.pid,
                threads,
                subscribers,
                first_rate,
                Duration::from_secs(step_secs),
            )
            .await?
        }
        Phase::Dashboard {
            threads,
            dashboards,
            per_dashboard,
            rate,
            seconds,
        } => {
            dashboard::run(
                target,
                db,
                cli.jwt_secret.as_bytes(),
                cli.pid,
                threads,
                dashboards,
                per_dashboard,
                rate,
                seconds,
            )
            .await?
        }
        Phase::Restart {
            streams,
            per_thread,
            writes_while_down,
        } => storm::restart(target, db, streams, per_thread, writes_while_down).await?,
        Phase::Flood {
            notifications,
            threads,
            per_thread,
            rate,
            baseline_secs,
        } => {
            let run = flood::Flood {
                notifications,
                threads,
                per_thread,
                rate,
                baseline_secs,
            };
            flood::flood(target, db, cli.pid, run).await?
        }
        Phase::Soak(args) => soak::run(target, db, cli.pid, args).await?,
        Phase::Hold(args) => hold::run(target, db, args).await?,
    };
    println!("{result}");
    Ok(())
}
