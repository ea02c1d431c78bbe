//! Serving over raw sockets: a stream request is answered on the broadcaster's own stream path
//! (chunked, `connection: close`, the connection closed after an error), and one that path
//! declines (HTTP/1.0, a long head, pipelined bytes) is still served, by hyper.

use std::time::Duration;

use threadcast_tests::{TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

/// Sends `request` and reads until `until` has appeared, or with None until the connection
/// closes; returns the connection and everything read, as text.
async fn exchange(server: &TestServer, request: &str, until: Option<&str>) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while until.is_none_or(|until| !String::from_utf8_lossy(&seen).contains(until)) {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                assert!(until.is_none(), "closed before {until:?}: {seen:?}");
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no {until:?} within {WAIT:?}"));
    (socket, String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test]
async fn a_raw_stream_request_gets_a_chunked_event_stream_that_closes_when_it_ends() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let request = format!(
        "GET /api/widget/stream?feedbackId={thread}&token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        server.token(thread)
    );

    let (mut socket, head) = exchange(&server, &request, Some("retry:")).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for expected in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
    ] {
        assert!(lower.contains(expected), "{expected} in {head}");
    }
    db.insert_reply(thread, "over raw HTTP").await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&seen).contains("over raw HTTP") {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "the stream stays open");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the reply arrives");
    assert!(String::from_utf8_lossy(&seen).contains("id: 1\n"));

    // Shutdown ends the body with its last chunk and closes the connection.
    server.stop().await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut rest))
        .await
        .expect("the connection closes")
        .expect("read to the end");
    assert!(
        String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"),
        "the body ends properly: {rest:?}"
    );
}

#[tokio::test]
async fn a_refused_stream_gets_its_json_error_with_a_length_and_the_connection_closes() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let request = format!("GET /api/widget/stream?feedbackId={thread} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_socket, answer) = exchange(&server, &request, None).await;
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{answer}"
    );
    assert!(body.starts_with("{\"error\":"), "{body}");
}

#[tokio::test]
async fn stream_requests_the_stream_path_declines_are_served_by_hyper() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let target = format!(
        "/api/widget/stream?feedbackId={thread}&token={}",
        server.token(thread)
    );
    let long_header = format!("X-Padding: {}\r\n", "p".repeat(10_000));
    let requests = [
        ("HTTP/1.0", format!("GET {target} HTTP/1.0\r\n\r\n")),
        (
            "a head longer than 8 KiB",
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n{long_header}\r\n"),
        ),
        (
            "a pipelined second request",
            format!(
                "GET {target} HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
        ),
    ];
    for (what, request) in requests {
        let (_socket, answer) = exchange(&server, &request, Some("retry:")).await;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 OK\r\n"),
            "{what}: {answer}"
        );
        assert!(answer.contains("retry: "), "{what}: the stream starts");
    }
}

#[tokio::test]
async fn requests_whose_lines_end_in_bare_line_feeds_are_answered_at_once() {
    // hyper and httparse take a bare LF as a line end; the stream path used to wait for CRLFCRLF,
    // so such a request hung until the 30 s head deadline and was dropped.
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let (_socket, health) = exchange(&server, "GET /healthz HTTP/1.1\n\n", Some("\"ok\"")).await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    let stream = format!(
        "GET /api/widget/stream?feedbackId={thread}&token={} HTTP/1.1\nHost: x\n\n",
        server.token(thread)
    );
    let (_socket, answer) = exchange(&server, &stream, Some("retry:")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}
