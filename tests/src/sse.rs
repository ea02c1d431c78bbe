//! A Server-Sent Events client for tests: the harness's parser of the wire format over a streaming
//! reqwest response, with waits that time out instead of hanging.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::StatusCode;
pub use threadcast_harness::sse::{SseEvent, SseItem, SseParser};

/// How long any single wait for the stream lasts before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An open event stream.
pub struct SseStream {
    body: ByteStream,
    parser: SseParser,
    queue: VecDeque<SseItem>,
    ended: bool,
}

/// A refused stream request: its status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl SseStream {
    /// Sends `request` and returns the stream, or the status and JSON body it was refused with.
    pub async fn open(request: reqwest::RequestBuilder) -> Result<SseStream, Refused> {
        let response = request.send().await.expect("send the stream request");
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.json().await.unwrap_or(serde_json::Value::Null);
            return Err(Refused { status, body });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type is {content_type:?}"
        );
        Ok(SseStream::from_response(response))
    }

    /// Wraps a 200 response without reading from it: a client that has not read yet.
    pub fn from_response(response: reqwest::Response) -> SseStream {
        SseStream {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            queue: VecDeque::new(),
            ended: false,
        }
    }

    /// The next item, None at the end of the stream; panics after `timeout`.
    pub async fn next_item_within(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!("nothing arrived on the stream within {timeout:?}"),
                Ok(Some(Ok(bytes))) => {
                    let items = self.parser.feed(&bytes);
                    self.queue.extend(items);
                }
                // A connection cut mid-stream ends it as far as a client can tell.
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// The next item, None at the end of the stream.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        self.next_item_within(WAIT).await
    }

    /// The next event, skipping comments and retry fields; panics if the stream ends first.
    pub async fn next_event(&mut self) -> SseEvent {
        self.next_event_or_end()
            .await
            .expect("the stream ended while an event was expected")
    }

    /// The next event, or None if the stream ends first.
    pub async fn next_event_or_end(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_item().await? {
                SseItem::Event(event) => return Some(event),
                SseItem::Comment(_) | SseItem::Retry(_) | SseItem::Joined(_) => {}
            }
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            let event = self
                .next_event_or_end()
                .await
                .unwrap_or_else(|| panic!("the stream ended after {i} of {n} events: {events:?}"));
            events.push(event);
        }
        events
    }

    /// Every event until the stream ends (panics if it does not end in time).
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event_or_end().await {
            events.push(event);
        }
        events
    }
}
