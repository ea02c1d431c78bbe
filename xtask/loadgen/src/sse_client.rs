//! A minimal Server-Sent Events client over raw HTTP/1.1, cheap enough to hold tens of thousands
//! of streams in one process: a connection is its socket and a few words of parser state; bytes
//! are read into the caller's buffer.
//!
//! It speaks exactly what the broadcaster sends (a chunked `text/event-stream` body), parses the
//! events with the harness's SSE parser (the tests' too), and keeps only what the load generator
//! needs: `retry:`, comments, and each event's `id:`, `event:` and whether its data names the
//! expected thread.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use threadcast_harness::sse::{SseItem, SseParser};
use threadcast_payload::ChangeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use uuid::Uuid;

/// The largest response head accepted.
const MAX_HEAD: usize = 4096;

/// What a stream carried, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A `retry:` field, in milliseconds; the first one says the stream has joined its thread.
    Retry(u64),
    /// A comment line (the heartbeat).
    Comment,
    /// A live stream's `joined` event: the seq it joined its thread at.
    Joined(i64),
    Event {
        seq: i64,
        kind: Kind,
        /// False when a reply's data does not name the stream's own thread.
        own_thread: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reply,
    Delete,
    Other,
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The broadcaster answered with a status other than 200 (503 at its connection limit).
    Status(u16),
    /// Connecting, writing or reading failed (the load generator's own limits included).
    Io(anyhow::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Status(code) => write!(f, "the broadcaster answered {code}"),
            OpenError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

/// An open stream of one thread.
pub struct SseConn {
    stream: TcpStream,
    parser: Parser,
}

/// Opens the stream of `thread` with `token`, from `source` (a loopback address, so that more
/// than one address's worth of ephemeral ports can be used), resuming after `last_event_id`.
pub async fn open(
    addr: SocketAddr,
    source: Option<IpAddr>,
    thread: Uuid,
    token: &str,
    last_event_id: Option<i64>,
    buf: &mut [u8],
) -> Result<SseConn, OpenError> {
    let io = |e: std::io::Error, what: &str| {
        OpenError::Io(anyhow::Error::new(e).context(what.to_owned()))
    };
    let socket = TcpSocket::new_v4().map_err(|e| io(e, "socket"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io(e, "bind the source address"))?;
    }
    let mut stream = socket.connect(addr).await.map_err(|e| io(e, "connect"))?;
    stream.set_nodelay(true).map_err(|e| io(e, "nodelay"))?;
    let mut request = format!(
        "GET /api/widget/stream?feedbackId={thread}&token={token} HTTP/1.1\r\n\
         Host: {addr}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io(e, "send the request"))?;

    // Read the head; what follows it is the start of the body.
    let mut filled = 0;
    let head_end = loop {
        let room = buf.len().min(MAX_HEAD);
        if filled == room {
            return Err(OpenError::Io(anyhow::anyhow!("response head too long")));
        }
        let n = stream
            .read(&mut buf[filled..room])
            .await
            .map_err(|e| io(e, "read the response head"))?;
        if n == 0 {
            return Err(OpenError::Io(anyhow::anyhow!(
                "connection closed before the response head"
            )));
        }
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = &buf[..head_end];
    let status = parse_status(head).map_err(OpenError::Io)?;
    if status != 200 {
        return Err(OpenError::Status(status));
    }
    if find(&head.to_ascii_lowercase(), b"transfer-encoding: chunked").is_none() {
        return Err(OpenError::Io(anyhow::anyhow!(
            "a stream response must be chunked"
        )));
    }
    let mut conn = SseConn {
        stream,
        parser: Parser::new(thread),
    };
    // The caller collects the items of these leftover bytes with its first `read`.
    conn.parser
        .pending
        .extend_from_slice(&buf[head_end..filled]);
    Ok(conn)
}

impl SseConn {
    /// Reads once (waiting until something arrives) and appends what it completed to `items`.
    /// Returns false when the stream has ended (the server closed it, or its body ended).
    pub async fn read(&mut self, buf: &mut [u8], items: &mut Vec<Item>) -> Result<bool> {
        if !self.parser.pending.is_empty() {
            let pending = std::mem::take(&mut self.parser.pending);
            self.parser.feed(&pending, items)?;
            if self.parser.ended {
                return Ok(false);
            }
            if !items.is_empty() {
                return Ok(true);
            }
        }
        let n = self.stream.read(buf).await.context("read the stream")?;
        if n == 0 {
            return Ok(false);
        }
        self.parser.feed(&buf[..n], items)?;
        Ok(!self.parser.ended)
    }
}

fn parse_status(head: &[u8]) -> Result<u16> {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line).context("status line is not text")?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => {
            Ok(code.parse().context("status code")?)
        }
        _ => bail!("not an HTTP/1 status line: {line:?}"),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `ext` once past a `;` extension.
    Size { size: usize, ext: bool },
    /// Reading the data of a chunk: bytes left.
    Data(usize),
    /// The CR LF after a chunk's data: bytes left.
    DataEnd(u8),
    /// After the last chunk.
    End,
}

/// Undoes the chunked encoding and parses the SSE inside with the harness's parser.
struct Parser {
    chunk: Chunk,
    /// Bytes read with the head that belong to the body.
    pending: Vec<u8>,
    sse: SseParser,
    /// `"feedback_id":"<thread>"`, which a reply of this thread carries.
    marker: Box<str>,
    ended: bool,
}

impl Parser {
    fn new(thread: Uuid) -> Self {
        Parser {
            chunk: Chunk::Size {
                size: 0,
                ext: false,
            },
            pending: Vec::new(),
            sse: SseParser::default(),
            marker: format!("\"feedback_id\":\"{thread}\"").into(),
            ended: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], items: &mut Vec<Item>) -> Result<()> {
        while !bytes.is_empty() {
            match self.chunk {
                Chunk::End => {
                    self.ended = true;
                    return Ok(());
                }
                Chunk::Size { size, ext } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.chunk = match b {
                        b'\n' if size == 0 => Chunk::End,
                        b'\n' => Chunk::Data(size),
                        b'\r' => Chunk::Size { size, ext },
                        _ if ext => Chunk::Size { size, ext },
                        b';' => Chunk::Size { size, ext: true },
                        _ => {
                            let digit = (b as char)
                                .to_digit(16)
                                .with_context(|| format!("bad chunk size byte {b:#x}"))?;
                            Chunk::Size {
                                size: size * 16 + digit as usize,
                                ext,
                            }
                        }
                    };
                    if self.chunk == Chunk::End {
                        self.ended = true;
                        return Ok(());
                    }
                }
                Chunk::Data(left) => {
                    let take = left.min(bytes.len());
                    self.sse(&bytes[..take], items);
                    bytes = &bytes[take..];
                    self.chunk = if take == left {
                        Chunk::DataEnd(2)
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd(left) => {
                    bytes = &bytes[1..];
                    self.chunk = if left == 1 {
                        Chunk::Size {
                            size: 0,
                            ext: false,
                        }
                    } else {
                        Chunk::DataEnd(left - 1)
                    };
                }
            }
        }
        Ok(())
    }

    fn sse(&mut self, data: &[u8], items: &mut Vec<Item>) {
        for item in self.sse.feed(data) {
            items.push(match item {
                SseItem::Retry(ms) => Item::Retry(ms),
                SseItem::Comment(_) => Item::Comment,
                SseItem::Joined(id) => match id.parse() {
                    Ok(seq) => Item::Joined(seq),
                    Err(_) => continue,
                },
                SseItem::Event(event) => {
                    let kind = match ChangeKind::parse(&event.event) {
                        Some(ChangeKind::Reply) => Kind::Reply,
                        Some(ChangeKind::Delete) => Kind::Delete,
                        // A reset (TRUNCATE) names no row: like a delete, it is the thread's own.
                        Some(ChangeKind::Reset) | None => Kind::Other,
                    };
                    let Some(seq) = event.id.as_deref().and_then(|id| id.parse().ok()) else {
                        continue;
                    };
                    Item::Event {
                        seq,
                        kind,
                        own_thread: kind != Kind::Reply || event.data.contains(&*self.marker),
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(body: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in body {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        out
    }

    #[test]
    fn chunked_sse_parses_whatever_the_read_boundaries() {
        let thread = Uuid::nil();
        let reply =
            format!("id: 7\nevent: reply\ndata: {{\"id\":\"a\",\"feedback_id\":\"{thread}\"}}\n\n");
        let body = chunked(&[
            "retry: 2000\n\n",
            &reply,
            ": keep-alive\n\n",
            "id: 8\nevent: delete\ndata: {\"id\":\"a\"}\n\n",
            "id: 9\nevent: reply\ndata: {\"feedback_id\":\"other\"}\n\n",
        ]);
        let mut body = body;
        body.extend_from_slice(b"0\r\n\r\n");
        let expected = vec![
            Item::Retry(2000),
            Item::Event {
                seq: 7,
                kind: Kind::Reply,
                own_thread: true,
            },
            Item::Comment,
            Item::Event {
                seq: 8,
                kind: Kind::Delete,
                own_thread: true,
            },
            Item::Event {
                seq: 9,
                kind: Kind::Reply,
                own_thread: false,
            },
        ];
        for step in [1, 2, 3, 7, 64, body.len()] {
            let mut parser = Parser::new(thread);
            let mut items = Vec::new();
            for piece in body.chunks(step) {
                parser.feed(piece, &mut items).unwrap();
            }
            assert_eq!(items, expected, "read {step} bytes at a time");
            assert!(parser.ended, "the last chunk ends the stream");
        }
    }
}
