//! The fast path for stream requests. A clean `GET /api/widget/stream?...` over HTTP/1.1, without a
//! body, whose head parses within [`STREAM_HEAD_MAX`] ([`stream_request`]) is answered by the same
//! router as every other request, and its response written straight to the socket (chunked,
//! `connection: close`): an EventSource opens a connection per stream anyway.
//!
//! Why not hyper for these: an open stream through hyper keeps hyper's two 8 KiB connection
//! buffers for as long as it is open, which for a widget is hours. Measured with
//! `cargo xtask bench stream` (docs/benchmarks.md): the broadcaster's RSS per idle stream went
//! from 43 KB to 5 KB with this path, against a budget of 8 KiB per stream in all.
//!
//! Where a head ends is httparse's decision (hyper's parser), so bare-LF line ends are read as
//! hyper reads them. Every other request, and any stream request this path is not sure of (a long
//! or malformed head, a body, an upgrade, pipelined bytes, HTTP/1.0), goes to hyper (`serve.rs`)
//! with the bytes already read.

use std::io;
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::http::{header, response, Method, Request, Version};
use axum::Router;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::stall::Guarded;

/// The path whose requests are served here rather than by hyper.
const STREAM_PATH: &str = "/api/widget/stream";
/// A stream request's head must fit in this many bytes; longer heads go to hyper, which
/// enforces its own limits (and answers 431).
pub(crate) const STREAM_HEAD_MAX: usize = 8 * 1024;
/// More headers than this and the request goes to hyper.
const STREAM_HEADERS_MAX: usize = 32;
/// Once shutdown has begun, how long the last write of a stream (its end) may take.
const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);
/// Frames already waiting are gathered into one write, up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// `buf` holds a complete head, as httparse (and so hyper) reads one (and maybe more).
    Complete,
    /// Not a head this path can read: malformed, or with more headers than hyper allows. Hyper
    /// reads it again and answers it.
    NotOurs,
    /// No end of head within [`STREAM_HEAD_MAX`].
    TooLong,
    /// The client closed before the end of a head.
    Closed,
}

/// Headers a head may have for this path to find its end: as many as hyper takes (more, and
/// hyper answers 431).
const HEAD_HEADERS_MAX: usize = 100;

/// Reads until httparse finds the end of a request head: an empty line, whether its line ends
/// are CRLF or bare LF, as hyper reads it.
pub(crate) async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Head> {
    buf.reserve(1024);
    loop {
        if buf.len() >= STREAM_HEAD_MAX {
            return Ok(Head::TooLong);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(STREAM_HEAD_MAX));
        }
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        match head_end(buf) {
            Ok(httparse::Status::Complete(_)) => return Ok(Head::Complete),
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Ok(Head::NotOurs),
        }
    }
}

/// Where httparse says the request head in `buf` ends, if it does.
fn head_end(buf: &[u8]) -> Result<httparse::Status<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEAD_HEADERS_MAX];
    httparse::Request::new(&mut headers).parse(buf)
}

/// The request in `head` if this path serves it: a complete, well-formed HTTP/1.1 GET of the
/// stream path, with nothing after its head and no header that would need hyper.
pub(crate) fn stream_request(head: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; STREAM_HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        _ => return None,
    }
    let path = parsed.path?;
    if parsed.method? != "GET"
        || parsed.version? != 1
        || path.split('?').next() != Some(STREAM_PATH)
    {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11)
        .uri(path);
    for h in parsed.headers.iter() {
        // A body, or a switch of protocol, is hyper's business.
        for name in ["content-length", "transfer-encoding", "upgrade", "expect"] {
            if h.name.eq_ignore_ascii_case(name) {
                return None;
            }
        }
        request = request.header(h.name, h.value);
    }
    // Invalid header names or values, or an invalid URI, fail here; hyper then answers them.
    request.body(Body::empty()).ok()
}

/// Answers one request on `stream` and closes it.
pub(crate) async fn serve_stream(
    mut stream: TcpStream,
    request: Request<Body>,
    router: Router,
    write_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Boxed, so that the task does not keep room for the handler's state once it has answered.
    let response = match Box::pin(router.oneshot(request)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    let head = response_head(&parts, length);
    drop(parts);
    let chunked = length.is_none();
    let (mut reader, writer) = stream.split();
    // A write that makes no progress for `write_timeout` fails: a client that stopped reading
    // loses its connection, its place under max_connections and its queue.
    let mut writer = Guarded::new(writer, write_timeout);
    if write_bounded(&mut writer, &head, &shutdown).await.is_err() {
        return;
    }
    drop(head);

    let mut data = body.into_data_stream();
    let mut scratch = [0u8; 64];
    let ended = loop {
        let next = tokio::select! {
            biased;
            next = data.next() => next,
            // Only one request is served here, so anything the client sends is ignored; its
            // closing (0 bytes) or an error ends the stream at once rather than at the next write.
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let first = match next {
            Some(Ok(frame)) => frame,
            Some(Err(_)) => return,
            None => break true,
        };
        // Frames already queued (a burst of events) go out in one write.
        let mut batch = Vec::with_capacity(first.len() + 16);
        encode(&mut batch, &first, chunked);
        let mut ended = false;
        while batch.len() < BATCH_BYTES {
            match data.next().now_or_never() {
                Some(Some(Ok(frame))) => encode(&mut batch, &frame, chunked),
                Some(Some(Err(_))) => return,
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        if write_bounded(&mut writer, &batch, &shutdown).await.is_err() {
            return;
        }
        if ended {
            break true;
        }
    };
    if ended && chunked {
        let _ = write_bounded(&mut writer, b"0\r\n\r\n", &shutdown).await;
    }
    let _ = writer.shutdown().await;
}

/// The status line and headers of `parts`, with the framing this path uses.
fn response_head(parts: &response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Appends `frame` to `out`, as a chunk when `chunked`.
fn encode(out: &mut Vec<u8>, frame: &[u8], chunked: bool) {
    if frame.is_empty() {
        // An empty chunk would end a chunked body.
        return;
    }
    if chunked {
        let digits = (usize::BITS - frame.len().leading_zeros())
            .div_ceil(4)
            .max(1);
        for shift in (0..digits).rev() {
            out.push(b"0123456789abcdef"[(frame.len() >> (shift * 4)) & 0xf]);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(frame);
    }
}

/// Writes `bytes` (the writer fails a write that stalls); once shutdown has begun, it gets
/// [`SHUTDOWN_WRITE`] at most, so that a client that stopped reading cannot hold shutdown up.
async fn write_bounded(
    writer: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let write = writer.write_all(bytes);
    tokio::pin!(write);
    if !shutdown.is_cancelled() {
        tokio::select! {
            // Most writes complete at once; then the shutdown token is not even looked at.
            biased;
            written = &mut write => return written,
            _ = shutdown.cancelled() => {}
        }
    }
    tokio::time::timeout(SHUTDOWN_WRITE, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "shutting down"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn only_a_clean_http_1_1_get_of_the_stream_path_is_served_here() {
        let ok =
            "GET /api/widget/stream?feedbackId=x HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 4\r\n\r\n";
        let cases: &[(&str, bool, &str)] = &[
            (ok, true, "a stream request"),
            (
                "GET /api/widget/stream HTTP/1.1\r\nHost: a\r\n\r\n",
                true,
                "without a query (the router answers 400)",
            ),
            (
                "GET /api/widget/streams HTTP/1.1\r\nHost: a\r\n\r\n",
                false,
                "another path",
            ),
            ("GET /healthz HTTP/1.1\r\n\r\n", false, "another route"),
            (
                "POST /api/widget/stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                false,
                "another method",
            ),
            (
                "GET /api/widget/stream HTTP/1.0\r\n\r\n",
                false,
                "HTTP/1.0 (no chunked bodies)",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                false,
                "a body",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                "a chunked body",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                false,
                "an upgrade",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
                false,
                "a pipelined second request",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\nHost: a\r\n",
                false,
                "an incomplete head",
            ),
            (
                "GET /api/widget/stream HTTP/1.1\r\nBad Header: x\r\n\r\n",
                false,
                "a malformed header",
            ),
        ];
        for (head, served_here, what) in cases {
            assert_eq!(
                stream_request(head.as_bytes()).is_some(),
                *served_here,
                "{what}: {head:?}"
            );
        }
        let many = format!(
            "GET /api/widget/stream HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(STREAM_HEADERS_MAX + 1)
        );
        assert!(
            stream_request(many.as_bytes()).is_none(),
            "more headers than the fast path takes go to hyper"
        );

        let request = stream_request(ok.as_bytes()).unwrap();
        assert_eq!(request.uri(), "/api/widget/stream?feedbackId=x");
        assert_eq!(request.headers()["last-event-id"], "4");
    }

    #[test]
    fn a_response_head_carries_the_headers_and_its_own_framing_and_closes() {
        let (mut parts, ()) = axum::http::Response::new(()).into_parts();
        parts.status = StatusCode::UNAUTHORIZED;
        parts
            .headers
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        parts
            .headers
            .insert(header::CONTENT_LENGTH, "999".parse().unwrap());
        parts
            .headers
            .insert(header::CONNECTION, "keep-alive".parse().unwrap());
        let head = String::from_utf8(response_head(&parts, Some(12))).unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("\r\ncontent-length: 12\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "));
        assert!(head.ends_with("\r\nconnection: close\r\n\r\n"));
        assert!(!head.contains("999") && !head.contains("keep-alive"));

        let streaming = String::from_utf8(response_head(&parts, None)).unwrap();
        assert!(streaming.contains("\r\ntransfer-encoding: chunked\r\n"));
        assert!(!streaming.contains("content-length"));
    }

    #[test]
    fn frames_are_chunked_and_empty_ones_skipped() {
        let mut out = Vec::new();
        encode(&mut out, b"id: 1\n\n", true);
        encode(&mut out, b"", true);
        encode(&mut out, &[b'x'; 26], true);
        let mut expected = b"7\r\nid: 1\n\n\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn a_head_that_ends_in_bare_line_feeds_is_complete_while_the_client_waits() {
        // hyper and httparse take a bare LF as a line end, so a client may send one and wait
        // for the answer, keeping its connection open.
        for head in [
            "GET /healthz HTTP/1.1\n\n",
            "GET /api/widget/stream?feedbackId=x HTTP/1.1\nHost: a\n\n",
            "GET /healthz HTTP/1.1\r\nHost: a\n\r\n",
        ] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            tokio::io::AsyncWriteExt::write_all(&mut client, head.as_bytes())
                .await
                .unwrap();
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), read_head(&mut server, &mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("the head {head:?} was not taken as complete"));
            assert!(matches!(read, Ok(Head::Complete)), "{head:?}");
            assert_eq!(buf, head.as_bytes());
            drop(client);
        }
    }

    /// A reader that hands out its bytes in the given pieces, one piece (at most) per read.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Splits `bytes` at the given cut points.
    fn pieces(bytes: &[u8], cuts: &[usize]) -> Pieces {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = std::collections::VecDeque::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            if cut > from {
                out.push_back(bytes[from..cut].to_vec());
                from = cut;
            }
        }
        Pieces(out)
    }

    fn read(bytes: &[u8], cuts: &[usize]) -> (Head, Vec<u8>) {
        let mut reader = pieces(bytes, cuts);
        let mut buf = Vec::new();
        let head = futures::executor::block_on(read_head(&mut reader, &mut buf)).unwrap();
        (head, buf)
    }

    /// Header names and values that a client might send (not the ones that need hyper).
    fn header() -> impl Strategy<Value = (String, String)> {
        (
            prop::sample::select(vec![
                "Host",
                "Accept",
                "Cookie",
                "Last-Event-ID",
                "X-Forwarded-For",
                "Origin",
            ]),
            "[ -~&&[^\\r\\n]]{0,40}",
        )
            .prop_map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
    }

    fn request(query: &str, headers: &[(String, String)]) -> String {
        let mut head = format!("GET {STREAM_PATH}?{query} HTTP/1.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    use proptest::prelude::*;

    proptest! {
        /// A stream request's head is read whole, however the network splits it and whether its
        /// lines end in CRLF or a bare LF, and is served here with its target and headers intact.
        #[test]
        fn a_stream_request_is_read_whole_however_it_is_split(
            query in "[a-zA-Z0-9=&%._-]{0,200}",
            headers in prop::collection::vec(header(), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            bare_lf in any::<bool>(),
        ) {
            let mut text = request(&query, &headers);
            if bare_lf {
                text = text.replace("\r\n", "\n");
            }
            let (head, buf) = read(text.as_bytes(), &cuts);
            prop_assert!(matches!(head, Head::Complete));
            prop_assert_eq!(&buf[..], text.as_bytes());
            let parsed = stream_request(&buf).expect("a clean stream request is served here");
            prop_assert_eq!(parsed.uri().to_string(), format!("{STREAM_PATH}?{query}"));
            for (name, value) in &headers {
                prop_assert!(
                    parsed.headers().get_all(name.as_str()).iter().any(|v| v == value.as_str()),
                    "{name}: {value} kept"
                );
            }
        }

        /// Whatever the bytes and however the network splits them, the head reader decides as
        /// httparse (hyper's parser) does on what it read: a complete head, one this path cannot
        /// read (hyper answers it), no end within the limit, or the client gone first.
        #[test]
        fn the_head_reader_agrees_with_httparse_whatever_the_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..20_000),
            prefix in prop::sample::select(vec!["", "GET / HTTP/1.1\n", "GET /api/widget/stream HTTP/1.1\r\nHost: x\r\n"]),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut input = prefix.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            let (head, buf) = read(&input, &cuts);
            prop_assert!(input.starts_with(&buf), "reads only what was sent");
            match (head, head_end(&buf)) {
                (Head::Complete, Ok(httparse::Status::Complete(len))) => {
                    prop_assert!(len <= buf.len())
                }
                (Head::NotOurs, Err(_)) => {}
                (Head::TooLong, Ok(httparse::Status::Partial)) => {
                    prop_assert!(buf.len() >= STREAM_HEAD_MAX)
                }
                (Head::Closed, Ok(httparse::Status::Partial)) => prop_assert_eq!(&buf[..], &input[..]),
                (head, parsed) => prop_assert!(false, "read {head:?}, httparse says {parsed:?}"),
            }
        }

        /// Whatever the bytes, the request reader answers (Some or None) without panicking, and
        /// what it serves here is a GET of the stream path over HTTP/1.1 without a body.
        #[test]
        fn any_bytes_are_served_here_only_as_a_clean_stream_request(
            bytes in prop::collection::vec(any::<u8>(), 0..2_000),
            prefix in prop::sample::select(vec!["", "GET /api/widget/stream?", "GET /api/widget/stream HTTP/1.1\r\n"]),
        ) {
            let mut input = prefix.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            if let Some(request) = stream_request(&input) {
                prop_assert_eq!(request.method(), Method::GET);
                prop_assert_eq!(request.uri().path(), STREAM_PATH);
                prop_assert_eq!(request.version(), Version::HTTP_11);
                for name in ["content-length", "transfer-encoding", "upgrade", "expect"] {
                    prop_assert!(!request.headers().contains_key(name));
                }
            }
        }
    }
}
