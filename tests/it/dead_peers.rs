//! Clients that hold a stream without reading it, on a quiet thread, where no write ever blocks
//! for long: the server must still let go of them within a stated time. A peer that keeps its
//! receive window closed (or vanished) is dropped by the kernel once bytes have gone
//! unacknowledged for `dead_peer_timeout` (TCP_USER_TIMEOUT); any stream ends at
//! `max_stream_age`, which a reading client rides out by resuming exactly.

use std::time::Duration;

use threadcast_broadcaster::Config;
use threadcast_tests::{assert_every_subscriber_got_exactly_once, eventually, TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Opens `thread`'s stream on a socket with a small receive buffer and never reads from it.
async fn never_reading(server: &TestServer, thread: Uuid) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /api/widget/stream?feedbackId={thread} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        server.addr,
        server.token(thread)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    eventually("the never-reading stream to open", || async {
        server.metric("threadcast_open_streams").await == 1.0
    })
    .await;
    stream
}

/// Reads what the server sent until it closed the connection; panics if it did not.
async fn closed_by_the_server(mut socket: TcpStream) -> String {
    let mut text = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server had not closed the connection");
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn a_reader_that_never_reads_on_a_quiet_thread_is_closed_at_the_maximum_stream_age() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.max_stream_age = Some(Duration::from_secs(2));
    })
    .await;
    let thread = db.create_thread().await;
    let socket = never_reading(&server, thread).await;

    eventually(
        "the stream of a client that never reads to end at its maximum age",
        || async { server.metric("threadcast_open_streams").await == 0.0 },
    )
    .await;
    let sent = closed_by_the_server(socket).await;
    assert!(
        sent.contains("retry: 250"),
        "it was told to come back soon, as a reading client would: {sent:?}"
    );
}

#[tokio::test]
async fn a_peer_that_keeps_its_window_closed_is_dropped_after_the_dead_peer_timeout() {
    // No maximum age, and writes that may stall for two minutes: only TCP_USER_TIMEOUT can end
    // this stream. Heartbeats every 10 ms fill the small window at once.
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c: &mut Config| {
        c.max_stream_age = None;
        c.write_timeout = Duration::from_secs(120);
        c.heartbeat = Duration::from_millis(10);
        c.dead_peer_timeout = Duration::from_secs(1);
    })
    .await;
    let thread = db.create_thread().await;
    let _socket = never_reading(&server, thread).await;

    eventually(
        "the kernel to drop a peer whose window stays closed",
        || async { server.metric("threadcast_open_streams").await == 0.0 },
    )
    .await;
    let mut reader = server.open(thread).await;
    db.insert_reply(thread, "others are served").await;
    assert_eq!(reader.next_event().await.content(), "others are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_ended_at_their_maximum_age_resume_exactly() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.max_stream_age = Some(Duration::from_millis(700));
    })
    .await;
    let thread = db.create_thread().await;
    let subscribers = vec![
        server.subscribe("from the start", thread),
        server.subscribe_live("started live", thread),
    ];
    for i in 0..12 {
        db.insert_reply(thread, &format!("reply {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connects = assert_every_subscriber_got_exactly_once(&db, subscribers).await;
    assert!(
        connects.iter().all(|c| *c >= 3),
        "each stream was ended at its age and resumed: {connects:?}"
    );
}
