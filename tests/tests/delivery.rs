//! Delivery: every committed change reaches the streams of its thread, once, in seq order, and
//! no other thread's stream.

use std::collections::HashSet;

use threadcast_tests::{seqs, TestDb, TestServer};

#[tokio::test]
async fn a_reply_reaches_an_open_stream_as_a_reply_event() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;

    let reply = db.insert_reply(thread, "hello").await;

    let event = stream.next_event().await;
    assert_eq!(event.event, "reply");
    assert_eq!(event.seq(), 1, "the first change of a thread has seq 1");
    let row = event.json();
    assert_eq!(row["id"], reply.to_string());
    assert_eq!(row["content"], "hello");
    assert_eq!(row["feedback_id"], thread.to_string());
}
