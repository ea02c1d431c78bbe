//! Serving connections: the accept loop, and hyper for every request that the fast path
//! (`fast_path.rs`, stream requests) does not take. This is `axum::serve` written out because the
//! fast path must see a connection's first bytes before hyper does; what that saves, 43 KB → 5 KB
//! of RSS per idle stream, is measured by `cargo xtask bench stream` (docs/benchmarks.md).
//!
//! On both paths a write that makes no progress for `Config::write_timeout` fails (`stall.rs`),
//! so a client that stopped reading loses its connection; every socket has `TCP_USER_TIMEOUT` and
//! keepalive, so a peer that vanished or keeps its window closed loses it too
//! (`Config::dead_peer_timeout`); and every connection ends on shutdown: streams end on the token
//! by themselves, hyper's connections shut down gracefully.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use bytes::Buf;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fast_path::{self, Head};
use crate::stall::Guarded;

/// A client must have sent its request head within this time, here and in hyper.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections on `listener` and serves `router` on them until `shutdown` fires; then
/// waits until every connection has ended (streams end on `shutdown` by themselves).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let write_timeout = timeouts.write;
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        // Events are small and each should leave at once, not wait for the previous one's ACK.
        let _ = stream.set_nodelay(true);
        timeouts.apply(&stream);
        connections.spawn(connection(
            stream,
            router.clone(),
            write_timeout,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// How long a client may keep a connection without making progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// A write that makes no progress for this long fails (the client's buffers are full).
    pub write: Duration,
    /// Bytes that stay unacknowledged this long drop the connection (`TCP_USER_TIMEOUT`).
    pub dead_peer: Duration,
}

/// Keepalive probes start after this much silence; with `TCP_USER_TIMEOUT` set, the kernel gives
/// up once a probe has gone unanswered for the dead-peer timeout. Streams send heartbeats, so
/// this covers hyper's idle keep-alive connections.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

impl Timeouts {
    /// Sets the dead-peer detection on an accepted socket. A peer that vanished (no ACK comes
    /// back) or that keeps its receive window closed is dropped by the kernel `dead_peer` after
    /// the first byte it left unacknowledged; the next read or write of the connection fails,
    /// and the stream ends.
    fn apply(self, stream: &TcpStream) {
        let socket = socket2::SockRef::from(stream);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(3);
        if let Err(error) = socket
            .set_tcp_keepalive(&keepalive)
            .and_then(|()| socket.set_tcp_user_timeout(Some(self.dead_peer)))
        {
            tracing::debug!(%error, "cannot set the dead-peer timeout on a connection");
        }
    }
}

/// An accept error either concerns one connection (gone before it was accepted) or the process
/// (out of descriptors); the latter is retried after a pause rather than in a busy loop.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept connections; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection(
    mut stream: TcpStream,
    router: Router,
    write_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut head = Vec::new();
    let read = tokio::select! {
        _ = shutdown.cancelled() => return,
        read = tokio::time::timeout(HEAD_TIMEOUT, fast_path::read_head(&mut stream, &mut head)) => read,
    };
    match read {
        Ok(Ok(Head::Complete)) => {
            if let Some(request) = fast_path::stream_request(&head) {
                drop(head);
                fast_path::serve_stream(stream, request, router, write_timeout, shutdown).await;
                return;
            }
        }
        Ok(Ok(Head::TooLong | Head::NotOurs)) => {}
        // The client left, failed or dawdled before sending a whole request: nobody to answer.
        Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return,
    }
    // Boxed: hyper's connection state is large, and every connection's task would otherwise
    // reserve room for it.
    Box::pin(serve_with_hyper(
        stream,
        head,
        router,
        write_timeout,
        shutdown,
    ))
    .await;
}

/// Serves the connection with hyper, replaying the bytes already read first.
async fn serve_with_hyper(
    stream: TcpStream,
    read: Vec<u8>,
    router: Router,
    write_timeout: Duration,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(Guarded::new(
        Replay {
            read: Bytes::from(read),
            stream,
        },
        write_timeout,
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // With a timer, hyper enforces its header read timeout (30 s).
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(error) = served {
                tracing::trace!(%error, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A socket whose first reads return bytes that were read from it before.
struct Replay {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        if this.read.is_empty() {
            // Free the buffer rather than keep it for the life of the connection.
            this.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
