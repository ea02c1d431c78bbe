//! The Server-Sent Events wire format as the HTML standard defines it, parsed incrementally:
//! feed bytes as they arrive, take [`SseItem`]s. The tests' HTTP client and the load generator's
//! raw streams both read with it. A stream's `joined` event (where a live start joined its
//! thread) is an item of its own, not one of the thread's changes.

use threadcast_payload::JOINED_EVENT;

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
    /// A widget stream's `joined` event: where a stream that started live joined its thread (its
    /// `id:`). A dashboard stream's `joined` events (one per thread, no `id:`, the thread and seq
    /// in their data) are plain events.
    Joined(String),
}

/// Incremental parser: feed bytes, take items.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    /// The last event ID string: the id in force at the last blank line, whether or not that
    /// block carried data (an `id:` alone moves it without an event).
    last_event_id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// Whether the block being read has an `id:` line.
    block_has_id: bool,
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

    /// What EventSource would send as `Last-Event-ID` if the stream ended now: the id in force at
    /// the last blank line (the HTML standard's "last event ID string"), event or not.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref().filter(|id| !id.is_empty())
    }

    fn line(&mut self, line: &str, items: &mut Vec<SseItem>) {
        if line.is_empty() {
            self.last_event_id.clone_from(&self.id);
            if let Some(data) = self.data.take() {
                let event = self.event.take().unwrap_or_else(|| "message".to_owned());
                items.push(if event == JOINED_EVENT && self.block_has_id {
                    SseItem::Joined(self.id.clone().unwrap_or_default())
                } else {
                    SseItem::Event(SseEvent {
                        id: self.id.clone(),
                        event,
                        data,
                    })
                });
            }
            self.event = None;
            self.block_has_id = false;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(SseItem::Comment(comment.trim_start().to_owned()));
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => {
                self.id = Some(value.to_owned());
                self.block_has_id = true;
            }
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
    fn a_dashboard_joined_event_without_an_id_is_a_plain_event() {
        let mut parser = SseParser::default();
        let items = parser.feed(b"event: joined\ndata: {\"seq\":1,\"thread\":\"t\"}\n\n");
        assert!(
            matches!(&items[..], [SseItem::Event(e)] if e.event == "joined"),
            "{items:?}"
        );
    }

    #[test]
    fn a_joined_event_is_no_change_but_gives_the_last_event_id() {
        let mut parser = SseParser::default();
        assert_eq!(
            parser.feed(b"retry: 2000\nid: 4\nevent: joined\ndata: {}\n\n"),
            vec![SseItem::Retry(2000), SseItem::Joined("4".into())]
        );
        assert_eq!(parser.last_event_id(), Some("4"));
    }

    #[test]
    fn an_id_without_data_is_no_event_but_becomes_the_last_event_id() {
        let mut parser = SseParser::default();
        assert_eq!(parser.last_event_id(), None);
        assert_eq!(
            parser.feed(b"retry: 2000\nid: 7\n"),
            vec![SseItem::Retry(2000)]
        );
        assert_eq!(parser.last_event_id(), None, "not before the blank line");
        assert_eq!(parser.feed(b"\n"), vec![]);
        assert_eq!(parser.last_event_id(), Some("7"));
        parser.feed(b"id: 8\nevent: reply\ndata: {}\n\n");
        assert_eq!(parser.last_event_id(), Some("8"));
    }

    #[test]
    fn joins_data_lines_and_accepts_crlf() {
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(b"id: 2\r\ndata: a\r\ndata:b\r"), vec![]);
        assert_eq!(parser.feed(b"\n\r\n"), vec![event("2", "message", "a\nb")]);
    }
}
