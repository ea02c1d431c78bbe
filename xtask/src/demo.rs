//! `cargo xtask demo`: PostgreSQL with the extension and demo data, and the broadcaster serving
//! its two-pane demo page and its agency dashboard (a React page built with esbuild), until
//! Ctrl-C.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cluster;
use crate::cmd;
use crate::setup;

/// The first demo thread of `sql/demo.sql`.
const DEMO_THREAD: &str = "0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01";

#[derive(clap::Args)]
pub struct Args {
    /// Where the broadcaster listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
}

pub fn run(args: Args) -> Result<()> {
    setup::run()?;
    let repo = cmd::repo();
    let mut install = Command::new("cargo");
    install.current_dir(repo.join("pg_ext")).args([
        "pgrx",
        "install",
        "--pg-config",
        &setup::pg_config(),
    ]);
    if !cmd::is_root() {
        install.arg("--sudo");
    }
    cmd::run(&mut install)?;
    cmd::run(Command::new("cargo").current_dir(&repo).args([
        "build",
        "-p",
        "threadcast-broadcaster",
    ]))?;

    // The dashboard page: React and esbuild from npm, built into target/demo-dashboard.
    let widget = repo.join("widget");
    if !widget.join("node_modules").exists() {
        cmd::run(
            Command::new("npm")
                .current_dir(&widget)
                .args(["ci", "--no-audit", "--no-fund"]),
        )?;
    }
    let assets = cmd::target_dir().join("demo-dashboard");
    cmd::run(
        Command::new("node")
            .current_dir(&widget)
            .arg("scripts/build-demo.mjs")
            .arg(&assets),
    )?;

    let cluster = cluster::create("demo", &[])?;
    let db = "threadcast_demo";
    cluster.create_db(db)?;
    cmd::output(cluster.psql(db).args(["-c", "CREATE EXTENSION threadcast"]))?;
    cmd::output(cluster.psql(db).arg("-f").arg(repo.join("sql/schema.sql")))?;
    cmd::output(cluster.psql(db).arg("-f").arg(repo.join("sql/demo.sql")))?;
    // The broadcaster runs as its least-privilege role, as in production; reading thread titles
    // is the demo page's extra.
    cmd::output(cluster.psql(db).arg("-f").arg(repo.join("sql/roles.sql")))?;
    cmd::output(cluster.psql(db).args([
        "-c",
        "GRANT SELECT ON public.feedback TO threadcast_broadcaster",
    ]))?;

    let secret = format!("demo-secret-of-32-bytes-or-more-{}", std::process::id());
    let url = cluster.uri(db, "postgres");
    let broadcaster_url = cluster.uri(db, "threadcast_broadcaster");
    let bin = cmd::target_dir().join("debug/threadcast-broadcaster");
    let mut broadcaster = Command::new(&bin)
        .arg("--demo")
        .arg("--demo-assets")
        .arg(&assets)
        .env("DATABASE_URL", &broadcaster_url)
        // Dashboard tokens scoped to projects: a thread is public.feedback's id, its project
        // the row's project_id.
        .env("THREADCAST_PROJECT_TABLE", "public.feedback")
        .env("THREADCAST_ADDR", &args.addr)
        .env("THREADCAST_JWT_SECRET", &secret)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .spawn()
        .context("cannot start the broadcaster")?;

    let token = cmd::output(
        Command::new(&bin)
            .args(["token", "--feedback-id", DEMO_THREAD, "--ttl", "1h"])
            .env("THREADCAST_JWT_SECRET", &secret),
    )?;
    let token = token.trim();
    println!(
        "\nthreadcast demo is up.\n\
         \n  demo page:   http://{addr}/demo/?feedbackId={DEMO_THREAD}\
         \n  psql:        psql {url}\
         \n  a reply:     psql {url} -c \"INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) VALUES ('{DEMO_THREAD}', 'agency', 'psql', 'hello from SQL')\"\
         \n  the stream:  curl -N 'http://{addr}/api/widget/stream?feedbackId={DEMO_THREAD}&history=10' -H 'Authorization: Bearer {token}'\
         \n  doctor:      psql {url} -c \"SELECT * FROM threadcast.doctor('public.feedback_replies')\"\
         \n\nCtrl-C stops the broadcaster and the database.\n",
        addr = args.addr
    );

    // Ctrl-C reaches the broadcaster too, which shuts down gracefully; this process must
    // outlive it to stop the database, so it takes SIGINT over instead of dying of it.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    });
    let status = broadcaster.wait();
    let _ = cluster.stop();
    status?;
    Ok(())
}
