//! Batched delivery (`enable(..., delivery => 'batched')`), what is its own: the batch worker
//! announces in packed notifications; rollbacks and rolled-back savepoints announce nothing and
//! PREPARE is refused (in both modes, as NOTIFY itself behaves); a ring overflow, a worker killed
//! or restarted and a PostgreSQL crash, each mid-burst, lose nothing a stream should get. The
//! delivery and fault tests of `delivery.rs`, `extension_delivery.rs` and `faults.rs` run in
//! both modes as well.

use std::time::Duration;

use threadcast_payload::{DeliveryMode, Payload, Resync, ResyncReason};
use threadcast_tests::db::Heard;
use threadcast_tests::{
    assert_every_subscriber_got_exactly_once, in_both_modes, Cluster, Subscriber, TestDb,
    TestServer,
};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::faults::{quick_recovery, threads, Burst};

/// A batched test database in a private cluster with `settings` (crashes and tiny rings must not
/// touch the shared cluster). Commits wait for the WAL: a crash then loses no transaction whose
/// COMMIT returned, and whose notification a stream may have received.
async fn private(settings: &[(&str, &str)]) -> (Cluster, TestDb) {
    let mut all = vec![("synchronous_commit", "on")];
    all.extend_from_slice(settings);
    let cluster = Cluster::start_with(&all);
    let db = TestDb::in_cluster_with(&cluster, DeliveryMode::Batched).await;
    (cluster, db)
}

/// The batch worker serving this database: its pid, once it has one.
async fn worker_pid(db: &TestDb) -> i32 {
    let deadline = tokio::time::Instant::now() + threadcast_tests::EVENTUALLY;
    loop {
        // The server may be restarting: a failed connection is one more try.
        let mut pid = 0;
        if let Ok((client, connection)) =
            tokio_postgres::connect(&db.admin_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            pid = client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity
                      WHERE backend_type = 'threadcast batch worker' AND datname = current_database()",
                    &[],
                )
                .await
                .ok()
                .flatten()
                .map_or(0, |row| row.get::<_, i32>(0));
        }
        if pid != 0 {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch worker served the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `threadcast.doctor`'s row `check`: (ok, detail).
async fn doctor(client: &Client, check: &str) -> (bool, String) {
    let row = client
        .query_one(
            "SELECT ok, detail FROM threadcast.doctor('public.feedback_replies') WHERE \"check\" = $1",
            &[&check],
        )
        .await
        .unwrap_or_else(|e| panic!("doctor has a {check:?} row: {e}"));
    (row.get(0), row.get(1))
}

/// Waits until each subscriber has its thread's current number, with nothing written meanwhile:
/// what it gets now came from a resync or a sweep, not from a later notification's hole.
async fn caught_up(db: &TestDb, subscribers: &[Subscriber]) {
    for s in subscribers {
        s.wait_for_seq(db.current_seq(s.thread).await).await;
    }
}

#[tokio::test]
async fn the_batch_worker_announces_a_transaction_in_a_few_packed_notifications() {
    let db = TestDb::with_delivery(DeliveryMode::Batched).await;
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let thread = db.create_thread().await;
    db.client
        .execute(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
             SELECT $1, 'agency', 'Ada', 'reply ' || g || ' ' || repeat('x', 200) FROM generate_series(1, 60) g",
            &[&thread],
        )
        .await
        .unwrap();
    let keys = db.keys().await;
    let mut seqs = Vec::new();
    for _ in 0..60 {
        seqs.push(
            Payload::verify(&heard.next().await, &keys)
                .expect("each member is signed")
                .seq,
        );
    }
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    assert!(
        heard.notifications <= 10,
        "60 changes of 300 bytes travel in a few notifications of up to 8,000 bytes, not {}",
        heard.notifications
    );
    let pid = worker_pid(&db).await;
    let (ok, detail) = doctor(&db.client, "delivery").await;
    assert!(
        ok && detail.contains(&format!("batch worker (pid {pid}) alive")),
        "{detail}"
    );
    let (ok, detail) = doctor(&db.client, "ring").await;
    assert!(ok && detail.contains("no overflow"), "{detail}");
}

in_both_modes! {
#[tokio::test]
async fn rollbacks_and_rolled_back_savepoints_announce_nothing(mode) {
    let db = TestDb::with_delivery(mode).await;
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let thread = db.create_thread().await;
    let insert = |content: &'static str| {
        format!("INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) VALUES ('{thread}', 'agency', 'Ada', '{content}');")
    };
    db.client
        .batch_execute(&format!(
            "BEGIN; {} SAVEPOINT a; {} SAVEPOINT b; {} RELEASE b; ROLLBACK TO a; {} SAVEPOINT c; {} ROLLBACK TO c; COMMIT;",
            insert("kept 1"),
            insert("dropped with a"),
            insert("dropped with a, through b"),
            insert("kept 2"),
            insert("dropped with c"),
        ))
        .await
        .unwrap();
    db.client
        .batch_execute(&format!("BEGIN; {} ROLLBACK;", insert("rolled back")))
        .await
        .unwrap();
    db.insert_reply(thread, "kept 3").await;

    let mut got = Vec::new();
    for _ in 0..3 {
        let text = heard.next().await;
        let p = Payload::decode(&text).unwrap();
        let row: serde_json::Value = serde_json::from_str(p.row.unwrap().get()).unwrap();
        got.push((p.seq, row["content"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        got,
        [(1, "kept 1".into()), (2, "kept 2".into()), (3, "kept 3".to_owned())],
        "only what committed is heard, and no number is burned"
    );
}
}

in_both_modes! {
#[tokio::test]
async fn prepare_transaction_is_refused_and_announces_nothing(mode) {
    let db = TestDb::with_delivery(mode).await;
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let thread = db.create_thread().await;
    let error = db
        .client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                    VALUES ('{thread}', 'agency', 'Ada', 'prepared'); PREPARE TRANSACTION 'p1';"
        ))
        .await
        .expect_err("PREPARE is refused");
    let message = error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    let expected = match mode {
        DeliveryMode::Batched => "threadcast: cannot PREPARE a transaction that changed a table with batched delivery",
        DeliveryMode::Transaction => "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY",
    };
    assert_eq!(message, expected, "{error:?}");
    db.client.batch_execute("ROLLBACK").await.ok();
    db.insert_reply(thread, "after").await;
    let text = heard.next().await;
    let p = Payload::decode(&text).unwrap();
    assert_eq!(p.seq, 1, "the refused transaction announced nothing and kept no number");
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_overflow_is_followed_by_a_resync_and_no_stream_loses_anything() {
    // A 16 kB ring: one transaction of 100 changes cannot fit.
    let (_cluster, db) = private(&[("threadcast.ring_size", "16")]).await;
    // No anti-entropy sweep within the test: only the resync can deliver what was dropped.
    let server = TestServer::start_with(&db, |c| {
        quick_recovery(c);
        c.anti_entropy = Duration::from_secs(3600);
    })
    .await;
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let threads = threads(&db, 2).await;
    let subscribers: Vec<Subscriber> = threads
        .iter()
        .flat_map(|t| (0..2).map(move |n| (n, *t)))
        .map(|(n, t)| server.subscribe(format!("client {n} of {t}"), t))
        .collect();
    db.insert_reply(threads[0], "before").await;
    subscribers[0].wait_for_seq(1).await;

    db.client
        .execute(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
             SELECT t, 'agency', 'Bulk', 'bulk ' || g || ' ' || repeat('y', 300)
               FROM unnest($1::uuid[]) t, generate_series(1, 50) g",
            &[&threads],
        )
        .await
        .unwrap();

    let notice = heard.next_resync().await;
    let notice = Resync::verify(&notice, &db.keys().await).expect("a signed resync");
    assert!(
        matches!(
            notice.resync,
            ResyncReason::Overflow | ResyncReason::Restart
        ),
        "{notice:?}"
    );
    caught_up(&db, &subscribers).await;
    let (ok, detail) = doctor(&db.client, "ring").await;
    assert!(
        !ok && detail.contains("1 overflow(s) dropped 100 change(s)"),
        "doctor names the overflow: {detail}"
    );
    assert!(server.metric("threadcast_resyncs_total").await >= 1.0);
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_worker_told_to_stop_mid_burst_comes_back_resyncs_and_loses_nothing() {
    let (_cluster, db) = private(&[]).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let threads = threads(&db, 3).await;
    let subscribers: Vec<Subscriber> = threads
        .iter()
        .map(|t| server.subscribe(format!("client of {t}"), *t))
        .collect();
    let writers = Burst::start(&db, &threads, 3, Duration::from_millis(5));
    let first = worker_pid(&db).await;
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    let notice = heard.next_resync().await;
    assert_eq!(
        Resync::verify(&notice, &db.keys().await)
            .expect("signed")
            .resync,
        ResyncReason::Restart
    );
    let second = worker_pid(&db).await;
    assert_ne!(first, second, "a new worker serves the database");
    writers.wait_for_more(30).await;
    writers.finish().await;
    caught_up(&db, &subscribers).await;
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_batch_worker_mid_burst_loses_nothing() {
    let (_cluster, db) = private(&[]).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let threads = threads(&db, 3).await;
    let subscribers: Vec<Subscriber> = threads
        .iter()
        .flat_map(|t| (0..2).map(move |n| (n, *t)))
        .map(|(n, t)| server.subscribe(format!("client {n} of {t}"), t))
        .collect();
    let writers = Burst::start(&db, &threads, 4, Duration::from_millis(5));
    let pid = worker_pid(&db).await;
    writers.wait_for_more(40).await;
    // SAFETY: kill has no memory-safety preconditions; the pid is the worker's.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    // PostgreSQL restarts every process after a backend dies by a signal: the writers retry,
    // the broadcaster reconnects, and a new worker starts.
    let again = worker_pid(&db).await;
    assert_ne!(pid, again);
    writers.wait_for_more(40).await;
    let retries = writers.finish().await;
    assert!(retries > 0, "the crash interrupted the writers");
    caught_up(&db, &subscribers).await;
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
    assert!(server.metric("threadcast_listener_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_crash_mid_burst_loses_nothing_committed() {
    let (cluster, db) = private(&[]).await;
    let server = TestServer::start_with(&db, quick_recovery).await;
    let threads = threads(&db, 3).await;
    let subscribers: Vec<Subscriber> = threads
        .iter()
        .flat_map(|t| (0..2).map(move |n| (n, *t)))
        .map(|(n, t)| server.subscribe(format!("client {n} of {t}"), t))
        .collect();
    let writers = Burst::start(&db, &threads, 4, Duration::from_millis(5));
    worker_pid(&db).await;
    writers.wait_for_more(40).await;
    tokio::task::block_in_place(|| cluster.crash()).expect("crash the server");
    tokio::task::block_in_place(|| cluster.start_again()).expect("recover");
    worker_pid(&db).await;
    writers.wait_for_more(40).await;
    let retries = writers.finish().await;
    assert!(retries > 0, "the crash interrupted the writers");
    caught_up(&db, &subscribers).await;
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;
}

#[tokio::test]
async fn a_forged_batch_and_a_forged_resync_from_a_stranger_reach_no_stream() {
    let db = TestDb::with_delivery(DeliveryMode::Batched).await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    let name = format!("stranger_{}", &Uuid::new_v4().simple().to_string()[..12]);
    db.client
        .batch_execute(&format!("CREATE ROLE {name} LOGIN"))
        .await
        .unwrap();
    let stranger = threadcast_tests::db::connect(&Cluster::shared().url(&db.name, &name)).await;
    let src: i64 = db
        .client
        .query_one("SELECT 'public.feedback_replies'::regclass::oid::int8", &[])
        .await
        .unwrap()
        .get(0);
    let forged_change = format!(
        r#"{{"v":2,"op":"I","table":"public.feedback_replies","src":{src},"thread":"{thread}","seq":1,"id":"x","row":{{"content":"forged"}},"kid":1,"sig":"{}"}}"#,
        "A".repeat(43)
    );
    let batch = format!(r#"{{"v":2,"batch":[{forged_change},{forged_change}]}}"#);
    let resync = format!(
        r#"{{"v":2,"resync":"overflow","at":1,"kid":1,"sig":"{}"}}"#,
        "B".repeat(43)
    );
    for text in [&batch, &resync] {
        stranger
            .query("SELECT pg_notify('threadcast', $1)", &[text])
            .await
            .expect("anyone may NOTIFY");
    }
    threadcast_tests::eventually(
        "both members of the batch and the notice to be counted as rejected",
        || async {
            server
                .metric("threadcast_notifications_rejected_total")
                .await
                == 3.0
        },
    )
    .await;
    assert_eq!(
        server.metric("threadcast_resyncs_total").await,
        0.0,
        "the forged notice made nobody read the table"
    );
    db.insert_reply(thread, "real").await;
    let first = live.next_event().await;
    assert_eq!(
        (first.seq(), first.content()),
        (1, "real".to_owned()),
        "the forgeries showed nothing; the real reply takes its number"
    );
}

/// Without `shared_preload_libraries`, a batched source could never reach its worker: enable()
/// refuses the mode, with a hint that names the setting, and the source keeps announcing per
/// transaction.
#[tokio::test]
async fn without_the_preload_enable_refuses_batched_delivery_with_a_hint() {
    let cluster = Cluster::start_with(&[("shared_preload_libraries", "''")]);
    let db = TestDb::in_cluster(&cluster).await;
    let error = db
        .client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies', delivery => 'batched')")
        .await
        .expect_err("batched delivery is refused without the preload");
    let db_error = error.as_db_error().expect("a PostgreSQL ERROR");
    assert_eq!(
        db_error.message(),
        "threadcast: batched delivery needs the threadcast library loaded when the server starts"
    );
    assert!(
        db_error
            .hint()
            .is_some_and(|h| h.contains("shared_preload_libraries = 'threadcast'")),
        "{db_error:?}"
    );
    let mut heard = Heard::listen(&db.admin_url, "threadcast").await;
    let thread = db.create_thread().await;
    db.insert_reply(thread, "still heard").await;
    let text = heard.next().await;
    let p = Payload::decode(&text).unwrap();
    assert_eq!(p.seq, 1, "the source still announces per transaction");
}
