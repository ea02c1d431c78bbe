//! The `threadcast-broadcaster` binary: parses flags, sets up logging, binds, and runs the
//! library until SIGTERM or Ctrl-C. `token` prints a signed widget token for trying it out.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_broadcaster::config::{PinArgs, SecretArgs, ServeArgs};
use threadcast_broadcaster::dashboard::mint_projects;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

/// Streams the replies of each feedback thread to its widgets as Server-Sent Events.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed token (for trying the service out; applications mint their own): a widget's
    /// for one thread, or a dashboard's for whole projects.
    Token {
        /// The thread (feedback id) the token may read.
        #[arg(long, required_unless_present = "project", conflicts_with = "project")]
        feedback_id: Option<Uuid>,
        /// A project whose threads the token may read on dashboard streams (repeatable).
        #[arg(long)]
        project: Vec<String>,
        /// How long the token is valid: a number with s, m, h or d (for example 1h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Who the bearer is.
        #[arg(long, value_enum, default_value_t = Role::EndUser)]
        role: Role,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
}

/// How long open streams get to end after a shutdown signal before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            feedback_id,
            project,
            ttl,
            role,
            secret,
            pins,
        }) => {
            let secret = secret.resolve().context("reading the JWT secret")?;
            let keys = Keys::pinned(&secret.0, pins.pins());
            let token = match feedback_id {
                Some(thread) => keys.mint(thread, ttl, role),
                None => mint_projects(&keys, &project, ttl, role),
            };
            println!("{token}");
            Ok(())
        }
        None => serve_until_signal(cli.serve),
    }
}

#[tokio::main]
async fn serve_until_signal(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let addr = args.addr;
    let config = args.into_config().context("invalid configuration")?;
    let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "listening for HTTP");

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let run = threadcast_broadcaster::run(listener, config, shutdown.clone());
    tokio::select! {
        result = run => result.context("the broadcaster stopped")?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("streams did not end within {SHUTDOWN_GRACE:?} of the shutdown signal; exiting anyway");
        }
    }
    Ok(())
}

/// Connections the kernel may queue before they are accepted (it caps this at
/// `net.core.somaxconn`, 4,096 by default since Linux 5.4). When a replica dies, all its clients
/// reconnect to the survivors in the same moment (EventSource waits the same `retry:` for all of
/// them); with tokio's default of 1,024, `cargo xtask bench stream --multi-replica` saw about
/// 1,400 of 14,800 reconnections dropped (`TcpExtListenOverflows`), each then waiting out a SYN
/// retransmission, and the last one live after 8.2 s instead of 4.4 s (docs/deploy.md).
const ACCEPT_BACKLOG: u32 = 8192;

/// Binds `addr` (with SO_REUSEADDR, as `TcpListener::bind` does) and listens with
/// [`ACCEPT_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Fires `shutdown` on SIGTERM or Ctrl-C.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Parses `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}; use s, m, h or d")),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| "duration too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use threadcast_broadcaster::rate::Rate;

    const SECRET: &str = "a-secret-of-thirty-two-bytes-or-more";
    const FROM_ENV: &str = "a-secret-from-the-environment-32-bytes";

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttls_parse_with_their_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    // One test for everything that reads the environment, so that no other test races it.
    #[test]
    fn serving_and_token_take_their_settings_from_flags_or_the_environment() {
        let cli = Cli::try_parse_from(["b", "--database-url", "host=db", "--jwt-secret", SECRET])
            .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.database_url.as_deref(), Some("host=db"));
        let defaults = cli.serve.into_config().unwrap();
        assert!(!defaults.demo, "demo mode is off unless asked for");
        assert_eq!(defaults.max_reply_chars, 10_000);
        assert_eq!(defaults.reply_rate, Some(Rate::new(5.0, 10)));

        let cli = Cli::try_parse_from([
            "b",
            "--database-url",
            "host=db",
            "--jwt-secret",
            SECRET,
            "--demo",
            "--max-reply-chars",
            "500",
            "--reply-rate",
            "30/m",
            "--reply-burst",
            "2",
        ])
        .unwrap();
        let config = cli.serve.into_config().unwrap();
        assert!(config.demo);
        assert_eq!(config.max_reply_chars, 500);
        assert_eq!(config.reply_rate, Some(Rate::new(0.5, 2)));
        for bad in [["--reply-rate", "fast"], ["--max-reply-chars", "0"]] {
            let args = [
                "b",
                "--database-url",
                "h",
                "--jwt-secret",
                SECRET,
                bad[0],
                bad[1],
            ];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} is refused");
        }

        let short = Cli::try_parse_from(["b", "--database-url", "h", "--jwt-secret", "change-me"])
            .unwrap()
            .serve
            .into_config()
            .expect_err("a 9-byte secret is refused");
        assert!(short.to_string().contains("at least 32"), "{short}");
        let pinned = Cli::try_parse_from([
            "b",
            "--database-url",
            "h",
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            "https://app.example",
            "--jwt-audience",
            "threadcast",
        ])
        .unwrap()
        .serve
        .into_config()
        .unwrap();
        assert_eq!(
            pinned.jwt_pins.issuer.as_deref(),
            Some("https://app.example")
        );
        assert_eq!(pinned.jwt_pins.audience.as_deref(), Some("threadcast"));

        let cli = Cli::try_parse_from([
            "b",
            "token",
            "--feedback-id",
            &Uuid::nil().to_string(),
            "--jwt-secret",
            SECRET,
        ]);
        assert!(
            matches!(cli.unwrap().command, Some(Command::Token { .. })),
            "token needs no DATABASE_URL"
        );
        let cli = Cli::try_parse_from([
            "b",
            "token",
            "--project",
            "p1",
            "--project",
            "p2",
            "--jwt-secret",
            "s",
        ]);
        assert!(
            matches!(cli.unwrap().command, Some(Command::Token { ref project, .. }) if project.len() == 2),
            "a dashboard token for projects"
        );
        assert!(
            Cli::try_parse_from(["b", "token", "--jwt-secret", "s"]).is_err(),
            "a token names a thread or projects"
        );

        std::env::set_var("DATABASE_URL", "host=from-env");
        std::env::set_var("THREADCAST_JWT_SECRET", FROM_ENV);
        std::env::set_var("THREADCAST_HEARTBEAT_SECS", "3");
        std::env::set_var("THREADCAST_DEMO", "1");
        std::env::set_var("THREADCAST_REPLY_RATE", "off");
        let cli =
            Cli::try_parse_from(["b"]).expect("every serve setting may come from the environment");
        let config = cli.serve.into_config().unwrap();
        assert_eq!(
            (config.database_url.as_str(), config.heartbeat),
            ("host=from-env", Duration::from_secs(3))
        );
        assert!(config.demo, "THREADCAST_DEMO=1 turns demo mode on");
        assert_eq!(config.reply_rate, None, "THREADCAST_REPLY_RATE=off");
        assert_eq!(config.jwt_secret.0, FROM_ENV.as_bytes());
    }
}
