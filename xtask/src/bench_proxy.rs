//! `cargo xtask bench proxy`: what nginx in front of the broadcaster adds to a reply's latency.
//! The release broadcaster runs as a process, `deploy/nginx/threadcast.conf` runs in Debian's
//! nginx in front of it (TLS, with a CA made for the run), and two clients in this process follow
//! one thread: one straight to the broadcaster, one through nginx over TLS. A writer commits one
//! reply at a time and waits for both clients, so the two paths are measured side by side, event
//! by event, on one clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::stack::{self, Stack};

#[derive(clap::Args)]
pub struct Args {
    /// Replies committed (one at a time).
    #[arg(long, default_value_t = 500)]
    events: u32,
    /// Pause after both clients have a reply, before the next commit, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pause_ms: u64,
    /// Use the extension already installed in the PostgreSQL of `PG_BIN` (no set-up, no
    /// `cargo pgrx install`).
    #[arg(long)]
    no_install: bool,
}

const THREAD: &str = "00000000-0000-4000-8000-000000000001";

pub fn run(args: Args) -> Result<()> {
    let stack = Stack::up(
        "bench-proxy",
        &[("synchronous_commit", "off")],
        !args.no_install,
    )?;
    let machine = stack::machine();
    let broadcaster = stack.broadcaster(1000)?;
    crate::cmd::output(stack.psql().arg("-c").arg(format!(
        "INSERT INTO feedback (id) VALUES ('{THREAD}') ON CONFLICT DO NOTHING"
    )))?;
    let token = stack.token(THREAD)?;
    let rt = tokio::runtime::Runtime::new()?;
    let samples = rt.block_on(async {
        let certs = threadcast_harness::scratch::ScratchDir::new("threadcast-bench-proxy");
        let ca = threadcast_harness::pki::TestCa::new(certs.path(), "bench");
        let cert = ca.server_cert("nginx", &["localhost"]);
        let nginx = threadcast_harness::nginx::Nginx::start(&[broadcaster.addr], &cert);
        let request = format!(
            "GET /api/widget/stream?feedbackId={THREAD}&token={token} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        );
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let (proxied_tx, proxied_rx) = mpsc::unbounded_channel();
        let plain = TcpStream::connect(broadcaster.addr).await?;
        plain.set_nodelay(true)?;
        tokio::spawn(follow(plain, request.clone(), direct_tx));
        tokio::spawn(follow(tls(nginx.port, &ca.cert_path()).await?, request, proxied_tx));
        let samples = measure(&stack.url, args.events, Duration::from_millis(args.pause_ms), direct_rx, proxied_rx).await?;
        drop(nginx);
        Ok::<_, anyhow::Error>(samples)
    })?;
    broadcaster.stop()?;

    // Signed microseconds from `from` to `to` (a receipt may beat the writer's COMMIT answer).
    let us = |from: Instant, to: Instant| -> i64 {
        if to >= from {
            (to - from).as_micros() as i64
        } else {
            -((from - to).as_micros() as i64)
        }
    };
    println!("\n{machine}\n");
    println!(
        "A reply to event received, the same {} replies on both paths (frame read by the client; one clock)\n",
        samples.len()
    );
    println!("| path | from | p50 | p99 | max |\n|---|---|---:|---:|---:|");
    for (reference, pick) in [
        (
            "COMMIT returned",
            (|s: &Sample| s.committed) as fn(&Sample) -> Instant,
        ),
        ("INSERT sent", |s: &Sample| s.sent),
    ] {
        for (name, side) in [
            (
                "straight to the broadcaster (HTTP/1.1)",
                (|s: &Sample| s.direct) as fn(&Sample) -> Instant,
            ),
            (
                "through nginx (TLS, deploy/nginx/threadcast.conf)",
                |s: &Sample| s.proxied,
            ),
        ] {
            // A receipt that beat the COMMIT's answer counts as 0, as in bench stream.
            let mut sorted: Vec<i64> = samples
                .iter()
                .map(|s| us(pick(s), side(s)).max(0))
                .collect();
            sorted.sort_unstable();
            println!(
                "| {name} | {reference} | {} | {} | {} |",
                ms(percentile(&sorted, 50)),
                ms(percentile(&sorted, 99)),
                ms(*sorted.last().unwrap_or(&0))
            );
        }
    }
    let mut differences: Vec<i64> = samples.iter().map(|s| us(s.direct, s.proxied)).collect();
    differences.sort_unstable();
    println!(
        "| difference, event by event (nginx - direct) | | {} | {} | {} |",
        ms(percentile(&differences, 50)),
        ms(percentile(&differences, 99)),
        ms(*differences.last().unwrap_or(&0))
    );
    Ok(())
}

fn ms(us: i64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// A TLS connection to nginx on 127.0.0.1 (as `localhost`, trusting `ca` only), HTTP/1.1.
async fn tls(
    port: u16,
    ca: &std::path::Path,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// Sends `request`, then reports each event's `id:` with the time its bytes were read.
async fn follow<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: String,
    events: mpsc::UnboundedSender<(i64, Instant)>,
) -> Result<()> {
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = String::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let at = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Whole lines only; chunk-size lines and other fields are skipped.
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(id) = line.trim_end().strip_prefix("id: ") {
                if let Ok(seq) = id.parse() {
                    let _ = events.send((seq, at));
                }
            }
        }
    }
}

/// One reply: when its INSERT was sent, when its COMMIT returned, and when each client read it.
struct Sample {
    sent: Instant,
    committed: Instant,
    direct: Instant,
    proxied: Instant,
}

/// Commits `events` replies one at a time; returns when each reached each client.
async fn measure(
    url: &str,
    events: u32,
    pause: Duration,
    mut direct: mpsc::UnboundedReceiver<(i64, Instant)>,
    mut proxied: mpsc::UnboundedReceiver<(i64, Instant)>,
) -> Result<Vec<Sample>> {
    let (client, insert) = stack::reply_writer(url).await?;
    // Both streams must be live before the first commit: a warm-up reply reaches both.
    let mut out = Vec::with_capacity(events as usize);
    for i in 0..=events {
        let sent = Instant::now();
        let row = client.query_one(&insert, &[&THREAD]).await?;
        let committed = Instant::now();
        let seq: i64 = row.get(0);
        let d = wait_for(&mut direct, seq).await?;
        let p = wait_for(&mut proxied, seq).await?;
        if i > 0 {
            out.push(Sample {
                sent,
                committed,
                direct: d,
                proxied: p,
            });
        }
        tokio::time::sleep(pause).await;
    }
    Ok(out)
}

/// When `seq` arrived on a stream (the events before it are skipped).
async fn wait_for(rx: &mut mpsc::UnboundedReceiver<(i64, Instant)>, seq: i64) -> Result<Instant> {
    loop {
        let (got, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("no event within 10 s")?
            .context("the stream ended")?;
        if got == seq {
            return Ok(at);
        }
        if got > seq {
            bail!("seq {seq} skipped");
        }
    }
}
