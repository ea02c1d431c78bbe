//! Connections whose client stopped reading are closed: a write that makes no progress for
//! `Config::write_timeout` fails, the connection is dropped (`serve.rs` and `fast_path.rs` wrap
//! every connection's writes in [`Guarded`]), and the stream's place under `max_connections` and
//! its queue are freed.
//!
//! Cutting a slow subscriber off its thread (`delivery`) ends its stream, but a response body is
//! only polled when the socket takes more bytes: a client that never reads again would keep its
//! connection, its place and its queued events for as long as it keeps the socket open.
//!
//! Why not tokio-io-timeout, which does the same: its writer keeps a `Sleep` inside it for the
//! life of the connection, where this one allocates its timer only while a write is stalled. An
//! open stream is nearly always idle, and measured side by side (`cargo xtask bench stream
//! --before`, docs/benchmarks.md) tokio-io-timeout cost 126 more bytes per idle stream
//! (5,042 → 5,168, one thread each; 3,556 → 3,701 with ten streams per thread).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A connection whose writes time out when the peer has taken nothing for `timeout`.
pub struct Guarded<T> {
    inner: T,
    timeout: Duration,
    /// Running while a write is pending: since the first write that could not proceed.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Guarded {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once the write has been pending for `timeout`.
    fn check<R>(
        &mut self,
        polled: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(near, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let error = guarded
            .write_all(&[0; 1024])
            .await
            .expect_err("the peer never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_timed_out() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(near, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += far.read(&mut buf).await.unwrap();
            }
        });
        // 1 KB through a 64-byte pipe read 16 bytes every 5 ms: about 320 ms in all, each
        // stall far shorter than the timeout.
        guarded
            .write_all(&[0; 1024])
            .await
            .expect("progress resets the timer");
        reader.await.unwrap();
    }
}
