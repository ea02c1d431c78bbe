//! Delivery: every committed change reaches the streams of its thread, once, in seq order, and
//! no other thread's stream.

use std::collections::HashSet;
use threadcast_payload::{ChangeKind, PayloadMode};

use threadcast_tests::{seqs, TestDb, TestServer};

#[tokio::test]
async fn a_reply_reaches_an_open_stream_as_a_reply_event() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;

    let reply = db.insert_reply(thread, "hello").await;

    let event = stream.next_event().await;
    assert_eq!(event.event, ChangeKind::Reply.as_str());
    assert_eq!(event.seq(), 1, "the first change of a thread has seq 1");
    let row = event.json();
    assert_eq!(row["id"], reply.to_string());
    assert_eq!(row["content"], "hello");
    assert_eq!(row["feedback_id"], thread.to_string());
}

#[tokio::test]
async fn a_thread_s_stream_never_sees_another_thread() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let (a, b) = (db.create_thread().await, db.create_thread().await);
    let mut stream_a = server.open(a).await;
    let mut stream_b = server.open(b).await;

    for i in 1..=3 {
        db.insert_reply(b, &format!("b-{i}")).await;
    }
    db.insert_reply(a, "a-1").await;
    let b_events = stream_b.events(3).await;
    db.insert_reply(a, "a-2").await;
    let a_events = stream_a.events(2).await;

    let a_contents: Vec<_> = a_events.iter().map(|e| e.content()).collect();
    assert_eq!(
        a_contents,
        ["a-1", "a-2"],
        "thread A's stream carries A's replies and nothing between them"
    );
    assert!(a_events
        .iter()
        .all(|e| e.json()["feedback_id"] == a.to_string()));
    let b_contents: Vec<_> = b_events.iter().map(|e| e.content()).collect();
    assert_eq!(b_contents, ["b-1", "b-2", "b-3"]);
    assert_eq!(
        seqs(&a_events),
        [1, 2],
        "each thread numbers its own changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrent_writers_every_client_gets_every_reply_once_in_seq_order() {
    const WRITERS: usize = 4;
    const EACH: usize = 25;
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.open(thread).await);
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = db.connect().await;
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                threadcast_tests::db::insert_reply(&client, thread, &format!("w{w}-{i}")).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer finishes");
    }

    let expected: HashSet<String> = (0..WRITERS)
        .flat_map(|w| (0..EACH).map(move |i| format!("w{w}-{i}")))
        .collect();
    let total = WRITERS * EACH;
    for (n, client) in clients.iter_mut().enumerate() {
        let events = client.events(total).await;
        assert_eq!(
            seqs(&events),
            (1..=total as i64).collect::<Vec<_>>(),
            "client {n} gets seqs 1..={total} in order"
        );
        let contents: HashSet<String> = events.iter().map(|e| e.content()).collect();
        assert_eq!(contents, expected, "client {n} gets every reply once");
    }
    // Nothing doubled trails behind: the next event is the next change.
    db.insert_reply(thread, "last").await;
    for client in &mut clients {
        let next = client.next_event().await;
        assert_eq!(
            (next.seq(), next.content()),
            (total as i64 + 1, "last".to_owned())
        );
    }
}

#[tokio::test]
async fn an_update_arrives_as_a_reply_with_a_new_seq_and_a_delete_as_a_delete_event() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;

    let reply = db.insert_reply(thread, "first draft").await;
    db.update_reply(reply, "edited").await;
    db.delete_reply(reply).await;

    let events = stream.events(3).await;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(
        (events[1].event.as_str(), events[1].content()),
        (ChangeKind::Reply.as_str(), "edited".to_owned())
    );
    assert_eq!(
        events[1].json()["id"],
        reply.to_string(),
        "the update carries the same row"
    );
    assert_eq!(events[2].event, ChangeKind::Delete.as_str());
    assert_eq!(
        events[2].json(),
        serde_json::json!({ "id": reply.to_string() })
    );
}

#[tokio::test]
async fn a_20_kb_reply_arrives_whole() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    db.insert_reply(thread, &big).await;
    db.insert_reply(thread, "small after big").await;

    let events = stream.events(2).await;
    assert_eq!(seqs(&events), [1, 2]);
    assert!(
        events[0].content() == big,
        "the 20 KB reply arrives whole ({} bytes)",
        events[0].content().len()
    );
    assert_eq!(events[1].content(), "small after big");
    assert!(
        server.metric("threadcast_row_fetches_total").await >= 1.0,
        "a row too big for NOTIFY is read from the table"
    );
}

#[tokio::test]
async fn history_sends_the_last_replies_before_live_ones() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    for i in 1..=5 {
        db.insert_reply(thread, &format!("old-{i}")).await;
    }

    let mut stream = server
        .open_with(thread, "&history=2", None)
        .await
        .expect("open with history");
    // The history is read once the stream has joined (after its first frame): a reply committed
    // before that read would be among the last two, so "new" waits for the history to arrive.
    let mut events = stream.events(2).await;
    db.insert_reply(thread, "new").await;
    events.push(stream.next_event().await);

    let contents: Vec<_> = events.iter().map(|e| e.content()).collect();
    assert_eq!(contents, ["old-4", "old-5", "new"]);
    assert_eq!(seqs(&events), [4, 5, 6]);
}

#[tokio::test]
async fn a_keys_only_source_on_its_own_channel_still_delivers_whole_rows() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies', payload => 'keys', channel => 'replies')")
        .await
        .expect("re-enable the source as keys-only on its own channel");
    let row = db
        .client
        .query_one("SELECT channel, payload FROM threadcast.sources", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("replies".into(), PayloadMode::Keys.as_str().into())
    );
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;

    let reply = db.insert_reply(thread, "read from the table").await;
    let inserted = stream.next_event().await;
    // Deleted only now: a row deleted before the broadcaster reads it is, rightly, only a delete.
    db.delete_reply(reply).await;
    let deleted = stream.next_event().await;

    assert_eq!(
        (inserted.event.as_str(), inserted.content()),
        (ChangeKind::Reply.as_str(), "read from the table".to_owned())
    );
    assert_eq!(deleted.event, ChangeKind::Delete.as_str());
    assert_eq!((inserted.seq(), deleted.seq()), (1, 2));
}

#[tokio::test]
async fn a_truncate_reaches_open_streams_as_a_reset_and_resuming_streams_learn_of_it() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    db.insert_reply(thread, "one").await;
    db.insert_reply(thread, "two").await;
    assert_eq!(seqs(&live.events(2).await), [1, 2]);

    db.client
        .batch_execute("TRUNCATE feedback_replies")
        .await
        .expect("truncate the replies");
    let reset = live.next_event().await;
    assert_eq!(
        (reset.event.as_str(), reset.seq()),
        (ChangeKind::Reset.as_str(), 3),
        "the truncation takes the thread's next number"
    );
    db.insert_reply(thread, "after").await;
    let after = live.next_event().await;
    assert_eq!((after.seq(), after.content()), (4, "after".to_owned()));

    let mut resumed = server
        .open_with(thread, "&lastEventId=1", None)
        .await
        .expect("resume from before the truncation");
    let replayed = resumed.events(2).await;
    assert_eq!(
        replayed
            .iter()
            .map(|e| (e.event.as_str(), e.seq()))
            .collect::<Vec<_>>(),
        [("reset", 3), ("reply", 4)],
        "a client that was away learns of the reset, then the new reply"
    );
    threadcast_tests::assert_exactly_once("the resumed stream", &replayed, &db, thread).await;
}
