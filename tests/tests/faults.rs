//! Faults: a killed LISTEN connection, a restarted database and a client that stops reading cost
//! no reply and double none.

use std::collections::HashSet;
use std::time::Duration;

use threadcast_tests::db::insert_reply;
use threadcast_tests::{eventually, seqs, Cluster, TestDb, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listen_backend_during_a_burst_loses_and_doubles_nothing() {
    const EACH: usize = 80;
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let (a, b) = (db.create_thread().await, db.create_thread().await);
    let mut a_clients = vec![server.open(a).await, server.open(a).await];
    let mut b_client = server.open(b).await;

    let writer = db.connect().await;
    let burst = tokio::spawn(async move {
        for i in 0..EACH {
            insert_reply(&writer, a, &format!("a{i}")).await;
            insert_reply(&writer, b, &format!("b{i}")).await;
        }
    });
    // Kill the LISTEN backend twice while the burst is in flight.
    let mut a_events = a_clients[0].events(10).await;
    assert_eq!(
        db.terminate_listener().await,
        1,
        "there is exactly one LISTEN connection"
    );
    a_events.extend(a_clients[0].events(20).await);
    eventually("the broadcaster to listen again", || async {
        server.readyz().await == 200
    })
    .await;
    db.terminate_listener().await;
    burst.await.expect("the burst finishes");

    a_events.extend(a_clients[0].events(EACH - a_events.len()).await);
    let every = (1..=EACH as i64).collect::<Vec<_>>();
    assert_eq!(
        seqs(&a_events),
        every,
        "the first client of A gets every reply once, in order"
    );
    let contents: HashSet<_> = a_events.iter().map(|e| e.content()).collect();
    assert_eq!(contents.len(), EACH, "and every one is a different reply");
    assert_eq!(
        seqs(&a_clients[1].events(EACH).await),
        every,
        "so does the second"
    );
    assert_eq!(
        seqs(&b_client.events(EACH).await),
        every,
        "so does thread B's client"
    );
    assert!(server.metric("threadcast_listener_reconnects_total").await >= 1.0);

    // Nothing doubled is still queued: the next event is the next change.
    db.insert_reply(a, "after").await;
    for client in &mut a_clients {
        assert_eq!(client.next_event().await.seq(), EACH as i64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_keeps_streams_open_and_loses_nothing() {
    // A private cluster: restarting the shared one would disturb the other tests.
    let cluster = Cluster::start();
    let db = TestDb::in_cluster(&cluster).await;
    let server = TestServer::start_with(&db, |c| c.max_backoff = Duration::from_millis(500)).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "before").await;
    assert_eq!(stream.next_event().await.content(), "before");

    // Committed right before the server goes down: its notification may never be delivered.
    db.insert_reply(thread, "just before the stop").await;
    tokio::task::block_in_place(|| cluster.stop());
    eventually("/readyz to report the lost connection", || async {
        server.readyz().await == 503
    })
    .await;
    tokio::task::block_in_place(|| cluster.start_again());
    eventually("the broadcaster to listen again", || async {
        server.readyz().await == 200
    })
    .await;
    let writer = db.connect().await;
    insert_reply(&writer, thread, "after the restart").await;

    let events = stream.events(2).await;
    let got: Vec<_> = events.iter().map(|e| (e.seq(), e.content())).collect();
    assert_eq!(
        got,
        [
            (2, "just before the stop".to_owned()),
            (3, "after the restart".to_owned())
        ]
    );
    assert!(server.metric("threadcast_listener_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving() {
    const BATCH: usize = 8;
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.subscriber_buffer = 2 * BATCH).await;
    let thread = db.create_thread().await;
    let mut fast = server.open(thread).await;
    // Opened and then never read until the end: its socket and then its queue fill up.
    let mut slow = server.open(thread).await;
    let content = "x".repeat(4000);

    let mut written = 0;
    while server
        .metric("threadcast_slow_consumer_disconnects_total")
        .await
        < 1.0
    {
        assert!(written < 4000, "the slow consumer was never cut off");
        for _ in 0..BATCH {
            db.insert_reply(thread, &content).await;
        }
        written += BATCH;
        let events = fast.events(BATCH).await;
        assert_eq!(
            events.last().unwrap().seq(),
            written as i64,
            "the fast client keeps up"
        );
    }

    // The fast client goes on receiving after the slow one was cut off.
    db.insert_reply(thread, "after the cut").await;
    written += 1;
    let next = fast.next_event().await;
    assert_eq!(
        (next.seq(), next.content()),
        (written as i64, "after the cut".to_owned())
    );

    // The slow client reads what was queued for it, in order, and then its stream ends...
    let queued = slow.rest().await;
    let last = queued.last().map_or(0, |e| e.seq());
    assert_eq!(
        seqs(&queued),
        (1..=last).collect::<Vec<_>>(),
        "the slow client got a gap-free prefix"
    );
    assert!(
        last < written as i64,
        "the slow client was cut off before the end ({last} of {written})"
    );
    // ...and resuming from where it stopped brings it the rest.
    let mut resumed = server
        .open_with(thread, "", Some(last))
        .await
        .expect("resume");
    let rest = resumed.events(written - last as usize).await;
    assert_eq!(seqs(&rest), (last + 1..=written as i64).collect::<Vec<_>>());
}
