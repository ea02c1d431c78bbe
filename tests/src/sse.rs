//! A Server-Sent Events client for tests: a parser of the wire format (as the HTML standard
//! defines it) over a streaming reqwest response, with waits that time out instead of hanging.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::StatusCode;

/// How long any single wait for the stream lasts before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The `id:` as a sequence number; panics if there is none.
    pub fn seq(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("event without a numeric id: {self:?}"))
    }

    /// The data as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// For `reply` events: the reply's `content`.
    pub fn content(&self) -> String {
        self.json()["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content in {self:?}"))
            .to_owned()
    }
}

/// What the wire carried, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// A comment line (`:...`), such as a heartbeat.
    Comment(String),
    /// A `retry:` field.
    Retry(u64),
}

/// Incremental parser: feed bytes, take items.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Parses every complete line in `bytes` (and what was buffered) into items.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        self.buffer.extend_from_slice(bytes);
        let mut items = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A lone CR at the end of the buffer may be the first half of CRLF: wait for more.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer[end + 1] == b'\n' {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let line = String::from_utf8(line).expect("the SSE stream must be UTF-8");
            self.line(&line, &mut items);
        }
        items
    }

    fn line(&mut self, line: &str, items: &mut Vec<SseItem>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                items.push(SseItem::Event(SseEvent {
                    id: self.id.clone(),
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data,
                }));
            }
            self.event = None;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(SseItem::Comment(comment.trim_start().to_owned()));
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "retry" => {
                if let Ok(ms) = value.parse() {
                    items.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

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
                SseItem::Comment(_) | SseItem::Retry(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, event: &str, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            id: Some(id.into()),
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut parser = SseParser::default();
        assert_eq!(
            parser.feed(b"retry: 2000\n\nid: 1\nevent: re"),
            vec![SseItem::Retry(2000)]
        );
        assert_eq!(
            parser.feed(b"ply\ndata: {\"a\":1}\n\n: heartbeat\n\n"),
            vec![
                event("1", "reply", "{\"a\":1}"),
                SseItem::Comment("heartbeat".into())
            ]
        );
    }

    #[test]
    fn joins_data_lines_and_accepts_crlf() {
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(b"id: 2\r\ndata: a\r\ndata:b\r"), vec![]);
        assert_eq!(parser.feed(b"\n\r\n"), vec![event("2", "message", "a\nb")]);
    }
}
