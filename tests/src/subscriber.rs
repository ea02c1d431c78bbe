//! A subscriber that behaves like a browser's plain `EventSource`: it reconnects whenever its
//! stream ends or cannot be opened, after the `retry:` delay the server gave, sending its last
//! event id as `Last-Event-ID` (the id of the last event, or of an `id:` field without data, as
//! the HTML standard says), and deduplicates nothing: what it keeps is exactly what the server
//! sent. It runs in the background and keeps every event, so a fault test can break things while
//! many of them listen, then check what each one received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sse::{SseItem, SseParser};
use crate::EVENTUALLY;

/// The reconnection delay before the server has sent a `retry:` field.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// A background subscriber of one thread's stream.
pub struct Subscriber {
    /// Names the subscriber in failure messages.
    pub name: String,
    /// The thread it follows.
    pub thread: Uuid,
    /// Every change after this seq is owed to it (see [`Subscriber::floor`]).
    floor: Arc<Mutex<Option<i64>>>,
    shared: Arc<Shared>,
    last_seq: watch::Receiver<i64>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<crate::SseEvent>>,
    /// Streams opened (200 answers).
    connects: AtomicU64,
    /// Requests answered with another status.
    refusals: Mutex<Vec<StatusCode>>,
}

impl Subscriber {
    /// Starts following `thread` at `base` (`http://127.0.0.1:port`) with `token`. The first
    /// request asks for the whole thread (`?lastEventId=0`, as the widget does), so the subscriber
    /// is owed every change of the thread, whenever it gets to connect.
    pub fn spawn(name: impl Into<String>, base: &str, thread: Uuid, token: String) -> Subscriber {
        let url = format!("{base}/api/widget/stream?feedbackId={thread}&lastEventId=0");
        Subscriber::follow(name.into(), url, thread, token, Some(0))
    }

    /// Starts following `thread` live, as `new EventSource(url)` without an id does: it is owed
    /// every change after the point where its first stream joined the thread, which the stream's
    /// first frame announces (`id:` without data), and which it resumes from if it drops before
    /// its first event.
    pub fn spawn_live(
        name: impl Into<String>,
        base: &str,
        thread: Uuid,
        token: String,
    ) -> Subscriber {
        let url = format!("{base}/api/widget/stream?feedbackId={thread}");
        Subscriber::follow(name.into(), url, thread, token, None)
    }

    fn follow(
        name: String,
        url: String,
        thread: Uuid,
        token: String,
        floor: Option<i64>,
    ) -> Subscriber {
        let shared = Arc::new(Shared::default());
        let floor = Arc::new(Mutex::new(floor));
        let (seq_tx, last_seq) = watch::channel(0);
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            url,
            token,
            shared.clone(),
            floor.clone(),
            seq_tx,
            stop.clone(),
        ));
        Subscriber {
            name,
            thread,
            floor,
            shared,
            last_seq,
            stop,
            task: Some(task),
        }
    }

    /// The seq after which it is owed every change: 0 for [`Subscriber::spawn`], the first
    /// position its stream announced for [`Subscriber::spawn_live`] (None until then).
    pub fn floor(&self) -> Option<i64> {
        *self.floor.lock().unwrap()
    }

    /// How far it got: its last event id, which is the seq of the last event received or the
    /// position a live stream announced before its first event.
    pub fn last_seq(&self) -> i64 {
        *self.last_seq.borrow()
    }

    /// How many streams it has opened: 1 if it never had to reconnect.
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::SeqCst)
    }

    /// The statuses its refused requests got (503s while the server was full, for example).
    pub fn refusals(&self) -> Vec<StatusCode> {
        self.shared.refusals.lock().unwrap().clone()
    }

    /// Waits until it has got to seq `seq` or later (see [`Subscriber::last_seq`]); panics after
    /// [`EVENTUALLY`].
    pub async fn wait_for_seq(&self, seq: i64) {
        let mut last_seq = self.last_seq.clone();
        let reached = tokio::time::timeout(EVENTUALLY, last_seq.wait_for(|last| *last >= seq))
            .await
            .map(|waited| waited.is_ok());
        match reached {
            Ok(true) => {}
            Ok(false) => panic!("{} stopped before seq {seq}", self.name),
            Err(_) => panic!(
                "{} had only reached seq {} of {seq} after {EVENTUALLY:?} ({} connects, refusals {:?})",
                self.name,
                self.last_seq(),
                self.connects(),
                self.refusals()
            ),
        }
    }

    /// Stops following and returns every event received, in arrival order.
    pub async fn stop(mut self) -> Vec<crate::SseEvent> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        std::mem::take(&mut *self.shared.events.lock().unwrap())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects, reads, and reconnects until `stop` fires.
async fn follow(
    url: String,
    token: String,
    shared: Arc<Shared>,
    floor: Arc<Mutex<Option<i64>>>,
    seq_tx: watch::Sender<i64>,
    stop: CancellationToken,
) {
    // A client of its own: a stream's connection is never shared anyway.
    let http = reqwest::Client::new();
    let mut retry = FIRST_RETRY;
    let mut last_event_id: Option<String> = None;
    while !stop.is_cancelled() {
        let mut request = http.get(&url).bearer_auth(&token);
        if let Some(id) = &last_event_id {
            request = request.header("Last-Event-ID", id.as_str());
        }
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            response = request.send() => response,
        };
        match response {
            Ok(response) if response.status() == StatusCode::OK => {
                shared.connects.fetch_add(1, Ordering::SeqCst);
                let mut body = response.bytes_stream();
                let mut parser = SseParser::default();
                loop {
                    let chunk = tokio::select! {
                        _ = stop.cancelled() => return,
                        chunk = body.next() => chunk,
                    };
                    // A cut connection ends the stream as far as a client can tell.
                    let Some(Ok(chunk)) = chunk else { break };
                    for item in parser.feed(&chunk) {
                        match item {
                            SseItem::Event(event) => shared.events.lock().unwrap().push(event),
                            SseItem::Retry(ms) => retry = Duration::from_millis(ms),
                            SseItem::Comment(_) | SseItem::Joined(_) => {}
                        }
                    }
                    // As EventSource: the last event id string, an `id:` without data included.
                    if let Some(id) = parser.last_event_id() {
                        last_event_id = Some(id.to_owned());
                        if let Ok(seq) = id.parse::<i64>() {
                            floor.lock().unwrap().get_or_insert(seq);
                            seq_tx.send_modify(|last| *last = (*last).max(seq));
                        }
                    }
                }
            }
            Ok(response) => shared.refusals.lock().unwrap().push(response.status()),
            // Connection refused or reset: the server is down or restarting.
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
