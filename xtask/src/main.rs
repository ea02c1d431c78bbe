//! `cargo xtask`: the project's automation, in Rust. `setup` installs what is missing, `demo`
//! brings up PostgreSQL with the extension and the broadcaster, `lint` checks formatting and
//! clippy, `test` runs every test (`--quick`: the inner loop), `bench` measures.

mod bench_delivery;
mod bench_proxy;
mod bench_replicas;
mod bench_stream;
mod bench_trigger;
mod cluster;
mod cmd;
mod demo;
mod lint;
mod procstat;
mod setup;
mod soak;
mod stack;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "threadcast's set-up, demo, tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: PostgreSQL 15 and its headers, libclang, sudo, Chromium and its
    /// driver, nginx and certutil, Node.js, and cargo-pgrx 0.18.0.
    Setup,
    /// Set up, start a throwaway PostgreSQL with the extension and demo data, and run the
    /// broadcaster with its demo page until Ctrl-C.
    Demo(demo::Args),
    /// Formatting and clippy (warnings are errors), the extension included.
    Lint,
    /// Set up, lint, then run every test: the pg_tests, the black-box and browser tests, the
    /// widget's client tests. `--quick`: the lint and the tests that need no PostgreSQL and no
    /// browser.
    Test(test::Args),
    /// Benchmarks (not tests): they print a table to paste into docs/benchmarks.md.
    #[command(subcommand)]
    Bench(Bench),
    /// Not part of CI: thousands of streams, writers, client drops and LISTEN kills for a while,
    /// then an exactly-once check of every client; prints the figures for docs/reliability.md.
    Soak(soak::Args),
}

#[derive(Subcommand)]
enum Bench {
    /// pgbench inserts with no trigger, a PL/pgSQL pg_notify trigger, contrib's tcn, and threadcast.
    Trigger(bench_trigger::Args),
    /// Commit-to-receive latency, RSS per idle stream, fan-out at saturation, the open rate, a
    /// restart under load and a flood of notifications, with the broadcaster and a load
    /// generator as processes of their own. (Boxed: its flags make it the largest.)
    Stream(Box<bench_stream::Args>),
    /// A reply's latency through nginx (deploy/nginx/threadcast.conf, TLS) against straight to
    /// the broadcaster, side by side.
    Proxy(bench_proxy::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo(args) => demo::run(args),
        Task::Lint => lint::run(),
        Task::Test(args) => test::run(args),
        Task::Bench(Bench::Trigger(args)) => bench_trigger::run(args),
        Task::Bench(Bench::Stream(args)) => bench_stream::run(*args),
        Task::Bench(Bench::Proxy(args)) => bench_proxy::run(args),
        Task::Soak(args) => soak::run(args),
    }
}
