//! Faults: a restarted database, a restarted broadcaster, a LISTEN connection cut again and again,
//! aborted and many-thread transactions, a stalled listener filling the notification queue, and a
//! client that stops reading. Each test ends by checking every subscriber against the table:
//! exactly the committed changes, each once, in seq order. Each runs in both delivery modes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use threadcast_broadcaster::Config;
use threadcast_tests::db::insert_reply;
use threadcast_tests::{
    assert_every_subscriber_got_exactly_once, eventually, in_both_modes, seqs, Cluster, SseStream,
    Subscriber, TestDb, TestServer, Writer,
};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Fast reconnects for fault tests: a client retries after 100 ms, the LISTEN connection after
/// at most 500 ms.
pub(crate) fn quick_recovery(config: &mut Config) {
    config.retry = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(500);
}

/// `per_thread` reconnecting subscribers on each of `threads`: plain EventSources, deduplicating
/// nothing, every other one started live (owed what follows its join point) and the rest from
/// the thread's start (`lastEventId=0`, as the widget starts).
fn audience(server: &TestServer, threads: &[Uuid], per_thread: usize) -> Vec<Subscriber> {
    threads
        .iter()
        .enumerate()
        .flat_map(|(t, thread)| {
            (0..per_thread).map(move |n| {
                let name = format!("client {n} of thread {t}");
                if n % 2 == 1 {
                    server.subscribe_live(format!("{name} (started live)"), *thread)
                } else {
                    server.subscribe(name, *thread)
                }
            })
        })
        .collect()
}

/// Writers inserting replies round-robin into several threads, one every `every` each, until
/// stopped; they retry through outages.
pub(crate) struct Burst {
    stop: CancellationToken,
    written: Arc<AtomicU64>,
    writers: Vec<JoinHandle<u64>>,
}

impl Burst {
    pub(crate) fn start(db: &TestDb, threads: &[Uuid], writers: usize, every: Duration) -> Burst {
        let stop = CancellationToken::new();
        let written = Arc::new(AtomicU64::new(0));
        let writers = (0..writers)
            .map(|w| {
                let (stop, written, threads) = (stop.clone(), written.clone(), threads.to_vec());
                let mut writer = Writer::new(&db.admin_url);
                tokio::spawn(async move {
                    let mut pace = tokio::time::interval(every);
                    let mut i = 0;
                    while !stop.is_cancelled() {
                        pace.tick().await;
                        let thread = threads[(w + i) % threads.len()];
                        writer
                            .insert_reply(thread, &format!("writer {w} reply {i}"))
                            .await;
                        written.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    writer.retries
                })
            })
            .collect();
        Burst {
            stop,
            written,
            writers,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `more` replies beyond the current count are stored.
    pub(crate) async fn wait_for_more(&self, more: u64) {
        let target = self.written() + more;
        eventually(&format!("{target} replies to be written"), || async {
            self.written() >= target
        })
        .await;
    }

    /// Stops the writers; returns how many writes had to be retried.
    pub(crate) async fn finish(self) -> u64 {
        self.stop.cancel();
        let mut retries = 0;
        for writer in self.writers {
            retries += writer.await.expect("a writer does not panic");
        }
        retries
    }
}

/// `n` fresh threads.
pub(crate) async fn threads(db: &TestDb, n: usize) -> Vec<Uuid> {
    let mut threads = Vec::with_capacity(n);
    for _ in 0..n {
        threads.push(db.create_thread().await);
    }
    threads
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_during_a_burst_from_several_writers_loses_and_doubles_nothing(mode) {
    // A private cluster: restarting the shared one would disturb the other tests.
    let cluster = Cluster::start();
    let db = TestDb::in_cluster_with(&cluster, mode).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let threads = threads(&db, 3).await;
    let subscribers = audience(&server, &threads, 2);
    let burst = Burst::start(&db, &threads, 4, Duration::from_millis(10));
    burst.wait_for_more(40).await;

    tokio::task::block_in_place(|| cluster.restart()).expect("restart the database");
    burst.wait_for_more(80).await;
    let retries = burst.finish().await;

    assert!(
        retries > 0,
        "the restart interrupted the writers (else it did not happen during the burst)"
    );
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
    assert!(server.metric("threadcast_listener_reconnects_total").await >= 1.0);
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_keeps_streams_open_and_loses_nothing(mode) {
    let cluster = Cluster::start();
    let db = TestDb::in_cluster_with(&cluster, mode).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "before").await;
    assert_eq!(stream.next_event().await.content(), "before");

    // Committed right before the server goes down: its notification may never be delivered.
    db.insert_reply(thread, "just before the stop").await;
    tokio::task::block_in_place(|| cluster.stop()).expect("stop the database");
    eventually("/readyz to report the lost connection", || async {
        server.readyz().await == 503
    })
    .await;
    tokio::task::block_in_place(|| cluster.start_again()).expect("start the database again");
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
        ],
        "the same stream carries on, with the change it could not be told of"
    );
    assert!(server.metric("threadcast_listener_reconnects_total").await >= 1.0);
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_broadcaster_during_a_burst_loses_and_doubles_nothing(mode) {
    let db = TestDb::with_delivery(mode).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let threads = threads(&db, 3).await;
    let subscribers = audience(&server, &threads, 2);
    let burst = Burst::start(&db, &threads, 3, Duration::from_millis(10));
    burst.wait_for_more(40).await;

    let addr = server.addr;
    server.stop().await;
    // Down for a while: writes go on, clients find the port closed and keep retrying.
    burst.wait_for_more(40).await;
    let server = TestServer::start_at(&db, addr, quick_recovery).await;
    burst.wait_for_more(40).await;
    burst.finish().await;

    let connects = assert_every_subscriber_got_exactly_once(&db, subscribers).await;
    assert!(
        connects.iter().all(|c| *c >= 2),
        "every client reconnected to the new broadcaster with Last-Event-ID: {connects:?}"
    );
    drop(server);
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_listen_connection_every_300_ms_for_ten_seconds_loses_and_doubles_nothing(mode) {
    let db = TestDb::with_delivery(mode).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let threads = threads(&db, 3).await;
    let subscribers = audience(&server, &threads, 2);
    let burst = Burst::start(&db, &threads, 3, Duration::from_millis(10));

    let started = tokio::time::Instant::now();
    let mut cuts = 0;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = db.terminate_listener().await;
        assert!(
            killed <= 1,
            "the broadcaster holds one LISTEN connection, not {killed}"
        );
        cuts += killed;
    }
    let written = burst.written();
    burst.finish().await;

    assert!(
        cuts >= 10,
        "the LISTEN connection was cut {cuts} times in 10 s"
    );
    assert!(
        written >= 300,
        "only {written} replies were written in 10 s"
    );
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
    assert!(
        server.metric("threadcast_listener_reconnects_total").await >= 10.0,
        "the broadcaster listened again after the cuts"
    );
    assert_eq!(
        db.terminate_listener().await,
        1,
        "and it ends with exactly one LISTEN connection"
    );
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_and_transactions_across_threads_deliver_exactly_what_committed(mode) {
    const WRITERS: usize = 3;
    const TRANSACTIONS: usize = 30;
    let db = TestDb::with_delivery(mode).await;
    let server = TestServer::start(&db).await;
    let threads = threads(&db, 3).await;
    let subscribers = audience(&server, &threads, 2);

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = db.connect().await;
        let (a, b, c) = (threads[0], threads[1], threads[2]);
        tasks.push(tokio::spawn(async move {
            // Committed replies of this writer in threads a and b, for later updates and deletes.
            let (mut in_a, mut in_b) = (Vec::<Uuid>::new(), Vec::<Uuid>::new());
            let mut committed = 0;
            for k in 0..TRANSACTIONS {
                // Every transaction takes the threads in the same order, as applications should,
                // so that two of them never wait for each other's counters in a cycle.
                let tx = client.transaction().await.expect("begin");
                let insert = "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                              VALUES ($1, 'agency', 'Tx', $2) RETURNING id";
                let outcome = match (k % 3, k % 5) {
                    (0, _) => "rolled back",
                    (_, 0) => "failed",
                    _ => "committed",
                };
                let reply = |thread: &str| format!("writer {w} tx {k} ({outcome}) in {thread}");
                let new_a: Uuid = tx
                    .query_one(insert, &[&a, &reply("a")])
                    .await
                    .expect("insert into a")
                    .get(0);
                if k % 4 == 1 {
                    if let Some(old) = in_a.first() {
                        tx.execute(
                            "UPDATE feedback_replies SET content = content || ' (edited)' WHERE id = $1",
                            &[old],
                        )
                        .await
                        .expect("update in a");
                    }
                }
                let mut new_b = Vec::new();
                for n in 0..2 {
                    let id: Uuid = tx
                        .query_one(insert, &[&b, &reply(&format!("b, #{n}"))])
                        .await
                        .expect("insert into b")
                        .get(0);
                    new_b.push(id);
                }
                let mut deleted = None;
                if k % 4 == 2 && !in_b.is_empty() {
                    let old = in_b.remove(0);
                    tx.execute("DELETE FROM feedback_replies WHERE id = $1", &[&old])
                        .await
                        .expect("delete in b");
                    deleted = Some(old);
                }
                tx.execute(insert, &[&c, &reply("c")])
                    .await
                    .expect("insert into c");
                match outcome {
                    "rolled back" => tx.rollback().await.expect("rollback"),
                    "failed" => {
                        // An error aborts the whole transaction, numbers and notifications included.
                        let error = tx
                            .execute(
                                "INSERT INTO feedback_replies (feedback_id, author_type, content)
                                 VALUES ($1, 'robot', 'breaks the CHECK')",
                                &[&c],
                            )
                            .await
                            .expect_err("author_type 'robot' violates the CHECK");
                        assert_eq!(
                            error.code(),
                            Some(&SqlState::CHECK_VIOLATION),
                            "{error:?}"
                        );
                        tx.rollback().await.expect("rollback after the error");
                    }
                    _ => {
                        tx.commit().await.expect("commit");
                        committed += 1;
                        in_a.push(new_a);
                        in_b.extend(new_b);
                        continue;
                    }
                }
                // The delete rolled back: that row is still there to delete later.
                if let Some(old) = deleted {
                    in_b.insert(0, old);
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("a writer does not panic");
    }

    let stored: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM feedback_replies WHERE content LIKE '%(rolled back)%' OR content LIKE '%(failed)%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "nothing of an aborted transaction is stored");
    assert!(committed > 0 && committed < WRITERS * TRANSACTIONS);
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
}
}

/// The 'notification queue' row of `threadcast.doctor`: whether it passed, and its percentage.
async fn doctor_queue(client: &tokio_postgres::Client) -> (bool, f64, String) {
    let row = client
        .query_one(
            "SELECT ok, detail FROM threadcast.doctor('public.feedback_replies') WHERE \"check\" = 'notification queue'",
            &[],
        )
        .await
        .expect("threadcast.doctor has a 'notification queue' row");
    let detail: String = row.get(1);
    let percent = detail
        .split('%')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the detail starts with a percentage: {detail:?}"));
    (row.get(0), percent, detail)
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_listener_fills_the_notification_queue_doctor_shows_it_and_streams_carry_on(mode) {
    // The notification queue is the whole cluster's: a private one keeps the other tests out.
    let cluster = Cluster::start();
    let db = TestDb::in_cluster_with(&cluster, mode).await;
    let server = TestServer::start(&db).await;
    let (quiet, bulk) = (db.create_thread().await, db.create_thread().await);
    let subscribers = audience(&server, &[quiet, bulk], 2);

    // A session that LISTENs and then sits in an open transaction reads no notification, so
    // the queue cannot be truncated past the point where it stopped.
    let stalled = db.connect().await;
    // (Two calls: a BEGIN in the same query string would hold back the LISTEN's commit too.)
    stalled
        .batch_execute("LISTEN threadcast")
        .await
        .expect("listen");
    stalled
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("stall the listener in an open transaction");
    // Big rows make big notifications (still under NOTIFY's limit): a few pages of queue each.
    // (100 rows a transaction: under batched delivery, a transaction fits in the ring.)
    let bulk_insert =
        "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                       SELECT $1, 'agency', 'Bulk', g || ' ' || repeat('x', 7000)
                         FROM generate_series(1, 100) g";
    let mut used_before = 0.0;
    for round in 1..=4 {
        for _ in 0..3 {
            db.client
                .execute(bulk_insert, &[&bulk])
                .await
                .expect("bulk insert");
        }
        db.insert_reply(quiet, &format!("quiet reply {round}"))
            .await;
        let usage: f64 = db
            .client
            .query_one("SELECT pg_notification_queue_usage()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            usage > used_before,
            "the queue grows while a listener stalls: {usage} after {used_before}"
        );
        used_before = usage;
    }

    let (ok, percent, detail) = doctor_queue(&db.client).await;
    assert!(
        percent > 0.0,
        "doctor shows the queue usage while a listener stalls: {detail:?}"
    );
    assert!(ok, "a queue this far from full still passes: {detail:?}");
    // The stalled session holds the others back only in queue space: every stream is served.
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;

    stalled
        .batch_execute("COMMIT")
        .await
        .expect("release the stalled listener");
    drop(stalled);
    eventually("the queue to drain once the listener is gone", || async {
        // A notification makes the server look at the queue's tail again.
        db.client
            .batch_execute("NOTIFY threadcast_nudge")
            .await
            .unwrap();
        doctor_queue(&db.client).await.1 < percent
    })
    .await;
}
}

/// Replies written in batches by `write_until_a_subscriber_is_cut_off`.
const BATCH: usize = 8;

/// Writes 4 KB replies to `thread` in batches of [`BATCH`], checking that `reader` keeps up with
/// each, until the server has cut a subscriber off as too slow; returns how many were written.
async fn write_until_a_subscriber_is_cut_off(
    server: &TestServer,
    db: &TestDb,
    thread: Uuid,
    reader: &mut SseStream,
) -> usize {
    let content = "x".repeat(4000);
    let mut written = 0;
    while server
        .metric("threadcast_slow_consumer_disconnects_total")
        .await
        < 1.0
    {
        assert!(
            written < 4000,
            "no subscriber was cut off after {written} replies"
        );
        for _ in 0..BATCH {
            db.insert_reply(thread, &content).await;
        }
        written += BATCH;
        let events = reader.events(BATCH).await;
        assert_eq!(
            events.last().unwrap().seq(),
            written as i64,
            "the reading client keeps up"
        );
    }
    written
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving(mode) {
    let db = TestDb::with_delivery(mode).await;
    let server = TestServer::start_with(&db, |c| c.subscriber_buffer = 2 * BATCH).await;
    let thread = db.create_thread().await;
    let mut fast = server.open(thread).await;
    // Opened and then never read until the end: its socket and then its queue fill up.
    let mut slow = server.open(thread).await;
    let mut written = write_until_a_subscriber_is_cut_off(&server, &db, thread, &mut fast).await;

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
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_disconnected_while_others_keep_receiving(mode) {
    let db = TestDb::with_delivery(mode).await;
    let server = TestServer::start_with(&db, |c| {
        c.subscriber_buffer = 2 * BATCH;
        c.write_timeout = Duration::from_secs(1);
    })
    .await;
    let thread = db.create_thread().await;
    let mut reader = server.open(thread).await;
    // A client that sends its request and then never reads a byte, with a small receive buffer
    // so that the socket fills up soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut never = socket.connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /api/widget/stream?feedbackId={thread} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        server.addr,
        server.token(thread)
    );
    tokio::io::AsyncWriteExt::write_all(&mut never, request.as_bytes())
        .await
        .unwrap();
    eventually("the never-reading stream to open", || async {
        server.metric("threadcast_open_streams").await == 2.0
    })
    .await;

    write_until_a_subscriber_is_cut_off(&server, &db, thread, &mut reader).await;

    // Cut off from its thread, it would still hold its connection, its place under
    // max_connections and its queue, if the server did not give up on writing to it.
    eventually(
        "the server to close the connection of the client that never reads",
        || async { server.metric("threadcast_open_streams").await == 1.0 },
    )
    .await;
    db.insert_reply(thread, "after the cut").await;
    assert_eq!(reader.next_event().await.content(), "after the cut");
}
}
