//! The broadcaster as a process of its own, for the black-box tests that measure it from the
//! outside (its memory under a flood of notifications): the library's `run`, configured by the
//! same flags and environment variables as the `threadcast-broadcaster` binary (`ServeArgs`),
//! stopped by SIGTERM.

use clap::Parser;
use threadcast_broadcaster::config::ServeArgs;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = cli.serve.addr;
    let config = cli.serve.into_config()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            term.recv().await;
            shutdown.cancel();
        }
    });
    threadcast_broadcaster::run(listener, config, shutdown).await?;
    Ok(())
}
