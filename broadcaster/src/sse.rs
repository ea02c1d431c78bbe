//! The Server-Sent Events wire format: pre-rendered event frames that fan out without copying,
//! the keep-alive comments, and the streaming response.
//!
//! axum's own `Sse` renders every event per stream; here a frame is rendered once per change and
//! shared (`Bytes` is reference-counted), so a thousand subscribers cost a thousand pointer copies.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, Stream};
use threadcast_payload::JOINED_EVENT;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// One rendered event: its seq (the SSE `id`) and the frame as it goes on the wire.
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: i64,
    frame: Bytes,
}

impl Event {
    /// `event: reply` with the row as its data.
    pub fn reply(seq: i64, row_json: &str) -> Self {
        Event::render(seq, "reply", row_json)
    }

    /// `event: delete` with `{"id": ...}` as its data.
    pub fn delete(seq: i64, id: &str) -> Self {
        Event::render(seq, "delete", &serde_json::json!({ "id": id }).to_string())
    }

    /// `event: reset`: the table was truncated; a client forgets every earlier reply of the thread.
    /// (EventSource dispatches no event without data, hence the empty object.)
    pub fn reset(seq: i64) -> Self {
        Event::render(seq, "reset", "{}")
    }

    fn render(seq: i64, kind: &str, data: &str) -> Self {
        let mut frame = String::with_capacity(data.len() + kind.len() + 32);
        frame.push_str("id: ");
        frame.push_str(&seq.to_string());
        frame.push_str("\nevent: ");
        frame.push_str(kind);
        frame.push_str("\ndata: ");
        // A raw line break would split the data field. In JSON text one can only be whitespace
        // (inside strings they are escaped), so a space means the same.
        frame.extend(
            data.chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
        );
        frame.push_str("\n\n");
        Event {
            seq,
            frame: Bytes::from(frame),
        }
    }

    /// The frame, ready to write.
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// The event's name (`reply`, `delete`, `reset`) and its data (one line of JSON), as
    /// rendered: what a stream of many threads wraps with the thread's name.
    pub fn parts(&self) -> (&str, &str) {
        // The frame is `id: N\nevent: KIND\ndata: DATA\n\n`, as `render` wrote it.
        let text = std::str::from_utf8(&self.frame).expect("frames are rendered from str");
        let rest = text.split_once("\nevent: ").map_or("", |(_, rest)| rest);
        let (kind, rest) = rest.split_once("\ndata: ").unwrap_or(("", ""));
        (kind, rest.strip_suffix("\n\n").unwrap_or(rest))
    }
}

/// The first frame of a stream that need not say where it joined: `retry:` alone.
pub fn retry_frame(retry: Duration) -> Bytes {
    first_frame(retry, None)
}

/// The first frame of every stream: how long EventSource waits before reconnecting, and, for a
/// stream that started live, where it joined its thread.
///
/// The join point goes out as a `joined` event ([`JOINED_EVENT`]) whose `id:` is that seq:
/// EventSource takes it as its last event id, so that a live stream that drops before its first
/// change resumes with `Last-Event-ID` and misses nothing committed while it reconnects. (An
/// `id:` without data would do by the HTML standard, but Chromium keeps no id from a block that
/// dispatches no event.) Listeners of `reply`, `delete` and `reset` never see it.
pub fn first_frame(retry: Duration, joined_at: Option<i64>) -> Bytes {
    let mut frame = format!("retry: {}\n", retry.as_millis());
    if let Some(seq) = joined_at {
        frame.push_str(&format!("id: {seq}\nevent: {JOINED_EVENT}\ndata: {{}}\n"));
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// The comment sent on a silent stream so that proxies and browsers keep it open.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// Wraps a stream of frames so that a heartbeat comment goes out after `every` of silence.
pub struct KeepAlive {
    inner: BoxStream<'static, Bytes>,
    every: Duration,
    timer: Pin<Box<Sleep>>,
    /// When the last frame went out. The timer is moved on when it fires, not on every frame:
    /// a busy stream then costs no timer update per event.
    last_frame: Instant,
    /// When the stream ends, if it has a maximum age: the heartbeat timer also watches for it,
    /// so that an age costs no timer of its own.
    ends: Option<Instant>,
    ended: bool,
}

impl KeepAlive {
    pub fn new(inner: BoxStream<'static, Bytes>, every: Duration) -> Self {
        KeepAlive {
            inner,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            last_frame: Instant::now(),
            ends: None,
            ended: false,
        }
    }

    /// Ends the stream once it is `age` old (None: never), with [`RETRY_SOON`] as its last
    /// frame: a stream lives a bounded time whatever its client does; one that reads resumes
    /// exactly (`Last-Event-ID`), one that does not is gone.
    pub fn lasting(mut self, age: Option<Duration>) -> Self {
        self.ends = age.map(|age| Instant::now() + age);
        if let Some(ends) = self.ends {
            let first = self.timer.deadline().min(ends);
            self.timer.as_mut().reset(first);
        }
        self
    }

    /// The next deadline: the next heartbeat, or the end if that comes first.
    fn next_deadline(&self, heartbeat: Instant) -> Instant {
        self.ends.map_or(heartbeat, |ends| heartbeat.min(ends))
    }
}

impl Stream for KeepAlive {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.last_frame = Instant::now();
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        if this.ends.is_some_and(|ends| now >= ends) {
                            this.ended = true;
                            return Poll::Ready(Some(Bytes::from_static(RETRY_SOON)));
                        }
                        let due = this.last_frame + this.every;
                        if due > now {
                            // A frame went out since the timer was set: silence is counted from it.
                            let next = this.next_deadline(due);
                            this.timer.as_mut().reset(next);
                            continue;
                        }
                        this.last_frame = now;
                        let next = this.next_deadline(now + this.every);
                        this.timer.as_mut().reset(next);
                        return Poll::Ready(Some(Bytes::from_static(HEARTBEAT)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }
}

/// The `retry:` a stream sends when it ends at its maximum age or on shutdown: the client comes
/// back at once (the next stream's first frame sets the usual delay again).
pub const RETRY_SOON: &[u8] = b"retry: 250\n\n";

/// Ends a stream of frames on shutdown, with [`RETRY_SOON`] as its last frame, so that after a
/// restart the clients come back to the new process (or another replica) without waiting the
/// usual delay. Open streams never end by themselves otherwise (axum#2673).
pub struct UntilShutdown {
    inner: KeepAlive,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl UntilShutdown {
    pub fn new(inner: KeepAlive, shutdown: CancellationToken) -> Self {
        UntilShutdown {
            inner,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            ended: false,
        }
    }
}

impl Stream for UntilShutdown {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Bytes::from_static(RETRY_SOON)));
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

/// A `text/event-stream` response whose body is `frames`.
pub fn response(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures::StreamExt;
    let mut response = Body::from_stream(frames.map(Ok::<_, Infallible>)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn a_reply_renders_as_one_sse_event() {
        let event = Event::reply(7, r#"{"id":"a","content":"hi\nthere"}"#);
        assert_eq!(
            &event.frame()[..],
            b"id: 7\nevent: reply\ndata: {\"id\":\"a\",\"content\":\"hi\\nthere\"}\n\n"
        );
    }

    #[test]
    fn whitespace_line_breaks_cannot_split_the_data_field() {
        let event = Event::reply(1, "{\n  \"a\": 1\r\n}");
        assert_eq!(
            &event.frame()[..],
            b"id: 1\nevent: reply\ndata: {   \"a\": 1  }\n\n"
        );
    }

    #[test]
    fn an_event_tells_its_name_and_data() {
        let event = Event::reply(7, r#"{"id":"a"}"#);
        assert_eq!(event.parts(), ("reply", r#"{"id":"a"}"#));
        assert_eq!(Event::reset(9).parts(), ("reset", "{}"));
    }

    #[test]
    fn the_first_frame_of_a_live_start_says_where_it_joined() {
        let retry = Duration::from_millis(2000);
        assert_eq!(&first_frame(retry, None)[..], b"retry: 2000\n\n");
        assert_eq!(retry_frame(retry), first_frame(retry, None));
        assert_eq!(
            &first_frame(retry, Some(17))[..],
            b"retry: 2000\nid: 17\nevent: joined\ndata: {}\n\n"
        );
    }

    #[test]
    fn a_delete_carries_the_id() {
        let event = Event::delete(3, "k\"1");
        assert_eq!(
            &event.frame()[..],
            b"id: 3\nevent: delete\ndata: {\"id\":\"k\\\"1\"}\n\n"
        );
    }

    #[tokio::test]
    async fn silence_is_counted_from_the_last_frame() {
        let every = Duration::from_millis(300);
        let (frames, rx) = futures::channel::mpsc::unbounded();
        let mut stream = KeepAlive::new(rx.boxed(), every);
        tokio::time::sleep(every / 2).await;
        frames.unbounded_send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(&stream.next().await.unwrap()[..], b"a");
        let sent = Instant::now();
        assert_eq!(&stream.next().await.unwrap()[..], HEARTBEAT);
        assert!(
            sent.elapsed() >= every - Duration::from_millis(20),
            "the heartbeat came {:?} after the frame, not {every:?}",
            sent.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_age_or_on_shutdown_with_a_short_retry() {
        let shutdown = CancellationToken::new();
        let aged = KeepAlive::new(futures::stream::pending().boxed(), Duration::from_secs(15))
            .lasting(Some(Duration::from_secs(60)));
        let mut stream = UntilShutdown::new(aged, shutdown.clone());
        let started = Instant::now();
        let mut heartbeats = 0;
        loop {
            let frame = stream.next().await.unwrap();
            if &frame[..] == RETRY_SOON {
                break;
            }
            assert_eq!(&frame[..], HEARTBEAT);
            heartbeats += 1;
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60),
            "it ends at its age"
        );
        assert_eq!(heartbeats, 3, "with heartbeats until then");
        assert_eq!(stream.next().await, None);

        let endless = KeepAlive::new(
            futures::stream::iter([Bytes::from_static(b"a")]).boxed(),
            Duration::from_secs(15),
        )
        .lasting(None);
        let mut endless = UntilShutdown::new(endless, shutdown.clone());
        assert_eq!(&endless.next().await.unwrap()[..], b"a");
        assert_eq!(endless.next().await, None, "the inner stream's end");

        let mut until_shutdown = UntilShutdown::new(
            KeepAlive::new(futures::stream::pending().boxed(), Duration::from_secs(15)),
            shutdown.clone(),
        );
        shutdown.cancel();
        assert_eq!(&until_shutdown.next().await.unwrap()[..], RETRY_SOON);
        assert_eq!(until_shutdown.next().await, None);
    }

    #[tokio::test]
    async fn a_silent_stream_gets_heartbeats() {
        let mut stream = KeepAlive::new(
            futures::stream::pending().boxed(),
            Duration::from_millis(10),
        );
        assert_eq!(&stream.next().await.unwrap()[..], HEARTBEAT);
        assert_eq!(&stream.next().await.unwrap()[..], HEARTBEAT);
    }
}
