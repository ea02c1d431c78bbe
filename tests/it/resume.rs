//! Exact resume: a client that comes back with `Last-Event-ID` gets every change it missed from
//! the table, then live ones, with nothing missing or doubled across the hand-over.

use threadcast_tests::{assert_every_subscriber_got_exactly_once, seqs, TestDb, TestServer};

#[tokio::test]
async fn a_client_resuming_with_last_event_id_gets_exactly_what_it_missed() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    for i in 1..=3 {
        db.insert_reply(thread, &format!("seen-{i}")).await;
    }
    let seen = stream.events(3).await;
    let last = seen.last().expect("three events").seq();
    drop(stream);

    let edited = db.insert_reply(thread, "missed-1").await;
    db.insert_reply(thread, "missed-2").await;
    db.update_reply(edited, "missed-1, edited").await;
    let mut resumed = server
        .open_with(thread, "", Some(last))
        .await
        .expect("resume");
    db.insert_reply(thread, "live").await;

    let events = resumed.events(3).await;
    let got: Vec<_> = events.iter().map(|e| (e.seq(), e.content())).collect();
    assert_eq!(
        got,
        [
            (5, "missed-2".to_owned()),
            (6, "missed-1, edited".to_owned()),
            (7, "live".to_owned())
        ],
        "the row updated while away arrives once, in its latest state, at its latest seq"
    );
}

/// Opens a stream with `extra` query parameters and `last_event_id` on a thread of four replies;
/// returns the seqs of its first `n` events.
async fn first_seqs_after_four_replies(
    extra: &str,
    last_event_id: Option<i64>,
    n: usize,
) -> Vec<i64> {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    for i in 1..=4 {
        db.insert_reply(thread, &format!("r{i}")).await;
    }
    let mut stream = server
        .open_with(thread, extra, last_event_id)
        .await
        .expect("open");
    seqs(&stream.events(n).await)
}

#[tokio::test]
async fn a_first_connect_may_give_last_event_id_in_the_query() {
    assert_eq!(
        first_seqs_after_four_replies("&lastEventId=2", None, 2).await,
        [3, 4]
    );
}

#[tokio::test]
async fn the_last_event_id_header_wins_over_the_query() {
    assert_eq!(
        first_seqs_after_four_replies("&lastEventId=1", Some(3), 1).await,
        [4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_writes_continue_neither_misses_nor_doubles() {
    const TOTAL: usize = 120;
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let writer = db.connect().await;
    let writes = tokio::spawn(async move {
        for i in 0..TOTAL {
            threadcast_tests::db::insert_reply(&writer, thread, &format!("r{i}")).await;
        }
    });

    // Reconnect several times while replies keep coming; each connection resumes from the last
    // event the previous one got.
    let mut got = Vec::new();
    let mut last = 0;
    while got.len() < TOTAL {
        let mut stream = server
            .open_with(thread, "", Some(last))
            .await
            .expect("resume");
        let take = 15.min(TOTAL - got.len());
        let events = stream.events(take).await;
        last = events.last().expect("events").seq();
        got.extend(events);
    }
    writes.await.expect("the writer finishes");

    assert_eq!(
        seqs(&got),
        (1..=TOTAL as i64).collect::<Vec<_>>(),
        "every reply exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_that_drops_before_its_first_event_resumes_from_where_it_joined() {
    // A plain `new EventSource(url)`, started live, has no event id of its own until an event
    // arrives; the stream's first frame gives it its join point (`id:` without data), so that a
    // restart before its first event costs it nothing committed meanwhile.
    let db = TestDb::new().await;
    let quick = |c: &mut threadcast_broadcaster::Config| {
        c.retry = std::time::Duration::from_millis(100);
    };
    let server = TestServer::start_with(&db, quick).await;
    let thread = db.create_thread().await;
    for i in 1..=2 {
        db.insert_reply(thread, &format!("before {i}")).await;
    }
    let live = server.subscribe_live("a live EventSource", thread);
    threadcast_tests::eventually("the live stream to join", || async {
        live.floor().is_some()
    })
    .await;
    assert_eq!(
        live.floor(),
        Some(2),
        "it joined after the two earlier replies"
    );

    let addr = server.addr;
    server.stop().await;
    for i in 1..=3 {
        db.insert_reply(thread, &format!("while the broadcaster is down {i}"))
            .await;
    }
    let server = TestServer::start_at(&db, addr, quick).await;
    let connects = assert_every_subscriber_got_exactly_once(&db, vec![live]).await;
    assert_eq!(connects, [2], "it reconnected once, to the new broadcaster");
    drop(server);
}

#[tokio::test]
async fn a_catch_up_of_large_rows_is_read_in_pages_bounded_by_bytes_and_loses_nothing() {
    // Each page of the catch-up stops at `page_bytes` of row data (the SQL cuts it, not the
    // broadcaster), so a resuming client reads many pages; none may lose or double a change.
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.page_bytes = 16 * 1024).await;
    let thread = db.create_thread().await;
    let mut replies = Vec::new();
    for i in 0..40 {
        let size = [100, 5_000, 20_000][i % 3];
        replies.push(db.insert_reply(thread, &"y".repeat(size)).await);
    }
    db.delete_reply(replies[7]).await;
    db.update_reply(replies[3], &"z".repeat(30_000)).await;

    let mut resumed = server
        .open_with(thread, "", Some(0))
        .await
        .expect("resume from the start");
    let owed = db.current_seq(thread).await;
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &threadcast_tests::SseEvent| e.seq() < owed)
    {
        events.push(resumed.next_event().await);
    }
    threadcast_tests::assert_exactly_once("a catch-up in pages of 16 KB", &events, &db, thread)
        .await;
    let mut history = server
        .open_with(thread, "&history=500", None)
        .await
        .expect("history");
    let first = history.next_event().await;
    assert!(
        first.seq() > 30,
        "a history holds the newest replies that fit 16 KB, from {}",
        first.seq()
    );
}
