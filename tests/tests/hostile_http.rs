//! Hostile HTTP clients: oversized headers and URLs, thousands of query parameters, a storm of
//! connections past the limit. Each gets a clear status (or a clean close), the server stays up,
//! and the streams already open keep receiving. (Malformed tokens and `Last-Event-ID`s are in the
//! table of `http_api.rs`; a client that never reads is in `faults.rs`.)

use std::time::Duration;

use reqwest::StatusCode;
use threadcast_tests::{seqs, SseStream, TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// What a raw request got back: the status line's code (None if the server closed the connection
/// without answering) and the body.
struct RawAnswer {
    status: Option<u16>,
    body: String,
}

/// Sends `request` on a connection of its own and reads the answer until the server closes it.
async fn raw_request(server: &TestServer, request: &[u8]) -> RawAnswer {
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = socket.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 8192];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server neither answered nor closed within 10 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    RawAnswer {
        status: head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok()),
        body: body.to_owned(),
    }
}

/// A GET of `target` with `headers` (each a full `Name: value` line) as raw bytes.
fn get(server: &TestServer, target: &str, headers: &[String]) -> Vec<u8> {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", server.addr);
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    request.into_bytes()
}

/// Writes a reply and checks that `stream` receives it next: the server still serves.
async fn assert_still_delivers(db: &TestDb, thread: Uuid, stream: &mut SseStream, after: &str) {
    let content = format!("delivered after {after}");
    db.insert_reply(thread, &content).await;
    assert_eq!(
        stream.next_event().await.content(),
        content,
        "an open stream keeps receiving after {after}"
    );
}

#[tokio::test]
async fn oversized_headers_and_urls_get_a_clear_status_or_a_close_and_harm_nobody() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut bystander = server.open(thread).await;
    let stream = format!("/api/widget/stream?feedbackId={thread}");
    let bearer = format!("Authorization: Bearer {}", server.token(thread));
    let megabyte = "a".repeat(1 << 20);

    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "a 1 MB header",
            get(
                &server,
                &stream,
                &[bearer.clone(), format!("X-Filler: {megabyte}")],
            ),
            &[431],
        ),
        (
            "a 1 MB cookie",
            get(
                &server,
                &stream,
                &[format!("Cookie: threadcast_token={megabyte}")],
            ),
            &[431],
        ),
        (
            "500 headers",
            get(
                &server,
                &stream,
                &(0..500).map(|i| format!("X-H{i}: {i}")).collect::<Vec<_>>(),
            ),
            &[431],
        ),
        (
            "a 1 MB URL",
            get(
                &server,
                &format!("{stream}&junk={megabyte}"),
                &[bearer.clone()],
            ),
            &[414, 431],
        ),
        (
            "a 64 KB bearer token",
            get(
                &server,
                &stream,
                &[format!("Authorization: Bearer {}", "a.b".repeat(20_000))],
            ),
            &[401],
        ),
        (
            "a header that is not valid UTF-8 or ASCII",
            {
                let mut request = get(&server, &stream, &[bearer.clone()]);
                let at = request.len() - 2;
                request.splice(at..at, b"X-Bin: \xff\xfe\x00\x01\r\n".iter().copied());
                request
            },
            &[400],
        ),
    ];

    for (name, request, expected) in cases {
        let status = raw_request(&server, &request).await.status;
        assert!(
            status.is_none_or(|s| expected.contains(&s)),
            "{name}: got {status:?}, expected one of {expected:?} or a close"
        );
        assert_still_delivers(&db, thread, &mut bystander, name).await;
    }
    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the server is up");
}

#[tokio::test]
async fn thousands_of_query_parameters_are_answered_promptly() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let stream = format!("/api/widget/stream?feedbackId={thread}");
    let bearer = format!("Authorization: Bearer {}", server.token(thread));
    let started = std::time::Instant::now();

    let junk: String = (0..5000).map(|i| format!("&p{i}=x")).collect();
    let mut through_junk = server
        .open_with(thread, &junk, None)
        .await
        .expect("5000 unknown parameters are ignored");
    db.insert_reply(thread, "through the junk").await;
    assert_eq!(
        through_junk.next_event().await.content(),
        "through the junk"
    );

    // A URL may be 64 KB long (longer ones get 414, below); each of these is under it.
    // A repeated parameter is ambiguous: refused, never "the first" or "the last" of them.
    for (name, repeated, times, headers, expected) in [
        (
            "1000 feedbackIds",
            format!("&feedbackId={thread}"),
            1000,
            vec![bearer.clone()],
            400,
        ),
        (
            "4000 lastEventIds",
            "&lastEventId=1".to_owned(),
            4000,
            vec![bearer.clone()],
            400,
        ),
        (
            "250 tokens and no other",
            format!("&token={}", server.token(thread)),
            250,
            vec![],
            401,
        ),
    ] {
        let target = format!("{stream}{}", repeated.repeat(times));
        let answer = raw_request(&server, &get(&server, &target, &headers)).await;
        assert_eq!(answer.status, Some(expected), "{name}: {}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{name}: the body is JSON ({e}): {}", answer.body));
        assert!(body["error"].is_string(), "{name}: {body}");
    }
    let too_long = format!("{stream}{}", format!("&feedbackId={thread}").repeat(5000));
    let answer = raw_request(&server, &get(&server, &too_long, &[bearer.clone()])).await;
    assert_eq!(answer.status, Some(414), "a 240 KB URL: {}", answer.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "five requests of thousands of parameters took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_past_the_limit_gets_503s_while_open_streams_keep_receiving() {
    const LIMIT: usize = 20;
    const STORM: usize = 300;
    const REPLIES: usize = 30;
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.max_connections = LIMIT).await;
    let thread = db.create_thread().await;
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        open.push(server.open(thread).await);
    }

    // Every request on a connection of its own, all at once.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let storm: Vec<_> = (0..STORM)
        .map(|_| {
            let request = http
                .get(server.stream_url(thread, ""))
                .bearer_auth(server.token(thread));
            tokio::spawn(async move {
                let response = request.send().await.expect("a storm request is answered");
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body)
            })
        })
        .collect();
    let writer = db.connect().await;
    let writes = tokio::spawn(async move {
        for i in 0..REPLIES {
            threadcast_tests::db::insert_reply(&writer, thread, &format!("during the storm {i}"))
                .await;
        }
    });
    for answer in storm {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"].is_string(), "the 503 says why: {body}");
    }
    writes.await.unwrap();

    for (n, stream) in open.iter_mut().enumerate() {
        let events = stream.events(REPLIES).await;
        assert_eq!(
            seqs(&events),
            (1..=REPLIES as i64).collect::<Vec<_>>(),
            "open stream {n} received every reply written during the storm"
        );
    }
    assert_eq!(
        server.metric("threadcast_open_streams").await,
        LIMIT as f64,
        "the storm took no place"
    );
}
