//! Hostile HTTP clients: oversized headers and URLs, thousands of query parameters, a storm of
//! connections past the limit. Each gets a clear status (or a clean close), the server stays up,
//! and the streams already open keep receiving. (Malformed tokens and `Last-Event-ID`s are in the
//! table of `http_api.rs`; a client that never reads is in `faults.rs`.)

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use threadcast_tests::server::SECRET;
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
                std::slice::from_ref(&bearer),
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
                let mut request = get(&server, &stream, std::slice::from_ref(&bearer));
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
async fn thousands_of_query_parameters_are_answered_each_within_the_request_deadline() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let stream = format!("/api/widget/stream?feedbackId={thread}");
    let bearer = format!("Authorization: Bearer {}", server.token(thread));

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
    let answer = raw_request(
        &server,
        &get(&server, &too_long, std::slice::from_ref(&bearer)),
    )
    .await;
    assert_eq!(answer.status, Some(414), "a 240 KB URL: {}", answer.body);
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

#[tokio::test]
async fn a_cross_site_form_post_carrying_the_cookie_stores_nothing() {
    // A page on another site can make a browser POST a form, cookie included (SameSite=None, or
    // a sibling subdomain, which is same-site), as text/plain whose body happens to be JSON. It
    // cannot send application/json without a CORS preflight, which only allowed origins pass.
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let thread = db.create_thread().await;
    let cookie = format!("threadcast_token={}", server.token(thread));
    let post = |content_type: Option<&str>| {
        let body = serde_json::json!({
            "content": "posted from another site",
            "author_name": "Mallory",
            "client_id": Uuid::new_v4(),
        });
        let mut request = server
            .http
            .post(server.url("/api/widget/replies"))
            .header("cookie", cookie.clone())
            .header("origin", "https://evil.example")
            .body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let response = post(content_type).await.expect("POST");
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a {content_type:?} POST is refused: {body}"
        );
        assert!(body["error"].is_string(), "{body}");
    }
    let stored: i64 = db
        .client
        .query_one("SELECT count(*) FROM feedback_replies", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "nothing was stored");

    let json = post(Some("application/json; charset=utf-8")).await.unwrap();
    assert_eq!(
        json.status(),
        StatusCode::CREATED,
        "JSON, as the widget sends it, is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_opened_with_one_token_get_the_cap_and_others_still_connect() {
    const ATTEMPTS: usize = 10_000;
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let cap = threadcast_broadcaster::Config::new("", SECRET).max_streams_per_subject;
    let thread = db.create_thread().await;
    let token = server.token(thread);
    // Every request on a connection of its own, a hundred at a time.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answers: Vec<(StatusCode, Option<SseStream>, serde_json::Value)> =
        futures::stream::iter(0..ATTEMPTS)
            .map(|_| {
                let request = http.get(server.stream_url(thread, "")).bearer_auth(&token);
                async move {
                    let response = request.send().await.expect("every attempt is answered");
                    let status = response.status();
                    if status == StatusCode::OK {
                        (
                            status,
                            Some(SseStream::from_response(response)),
                            serde_json::Value::Null,
                        )
                    } else {
                        (status, None, response.json().await.unwrap_or_default())
                    }
                }
            })
            .buffer_unordered(100)
            .collect()
            .await;

    let mut held: Vec<SseStream> = Vec::new();
    for (status, stream, body) in answers {
        match stream {
            Some(stream) => held.push(stream),
            None => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
                assert!(body["error"].is_string(), "the 429 says why: {body}");
            }
        }
    }
    assert_eq!(
        held.len(),
        cap,
        "one token subject holds {cap} streams, no more"
    );

    // Others still connect: another role of the same thread, and another thread.
    let agency = server.keys.mint(
        thread,
        std::time::Duration::from_secs(60),
        threadcast_broadcaster::auth::Role::Agency,
    );
    let mut others =
        vec![
            SseStream::open(http.get(server.stream_url(thread, "")).bearer_auth(agency))
                .await
                .expect("another subject connects"),
        ];
    let other_thread = db.create_thread().await;
    others.push(server.open(other_thread).await);
    assert_eq!(
        server.metric("threadcast_open_streams").await,
        (cap + 2) as f64
    );
    // And the streams the token holds still receive.
    db.insert_reply(thread, "after ten thousand attempts").await;
    for stream in held.iter_mut().chain(&mut others[..1]) {
        assert_eq!(
            stream.next_event().await.content(),
            "after ten thousand attempts"
        );
    }
}
