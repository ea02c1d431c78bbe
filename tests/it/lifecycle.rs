//! Lifecycle: an idle stream is kept alive with heartbeats, and shutdown ends every open stream.
//! (The `retry:` first frame is tested on the in-memory store: `broadcaster/tests/http/wire.rs`.)

use std::time::{Duration, Instant};

use threadcast_tests::{SseItem, TestDb, TestServer};

#[tokio::test]
async fn an_idle_stream_gets_a_heartbeat_every_interval() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.heartbeat = Duration::from_secs(1)).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;

    let started = Instant::now();
    let first = stream.next_item().await;
    let second = stream.next_item().await;

    assert!(matches!(first, Some(SseItem::Comment(_))), "got {first:?}");
    assert!(
        matches!(second, Some(SseItem::Comment(_))),
        "got {second:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "heartbeats come once a second, not in a rush"
    );
}

#[tokio::test]
async fn shutdown_ends_every_open_stream_promptly() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let (a, b) = (db.create_thread().await, db.create_thread().await);
    let mut busy = server.open(a).await;
    let mut idle = server.open(b).await;
    db.insert_reply(a, "before shutdown").await;
    busy.next_event().await;

    // `stop` waits for the serve task with a deadline, and says so if it passes.
    server.stop().await;

    assert!(
        busy.rest().await.is_empty(),
        "the busy stream ends with nothing more"
    );
    assert!(idle.rest().await.is_empty(), "the idle stream ends too");
}
