//! Notifications the broadcaster must not trust (issue 8): any role that can connect may LISTEN
//! and NOTIFY on threadcast's channel, so it can forge a payload, replay a genuine one, or
//! change a genuine one. None of it reaches a stream, in either payload mode; each is counted in
//! `threadcast_notifications_rejected_total` (a replay is genuine and harmless: it is not); and
//! the real reply still arrives, once.

use threadcast_tests::{assert_exactly_once, db, Cluster, TestDb, TestServer};
use uuid::Uuid;

/// A role that may connect, and nothing else.
async fn stranger(db: &TestDb) -> tokio_postgres::Client {
    let name = format!("stranger_{}", &Uuid::new_v4().simple().to_string()[..12]);
    db.client
        .batch_execute(&format!("CREATE ROLE {name} LOGIN"))
        .await
        .unwrap();
    db::connect(&Cluster::shared().url(&db.name, &name)).await
}

async fn notify(client: &tokio_postgres::Client, payload: &str) {
    client
        .query("SELECT pg_notify('threadcast', $1)", &[&payload])
        .await
        .expect("anyone may NOTIFY");
}

async fn mode(db: &TestDb, keys_only: bool) {
    if keys_only {
        db.client
            .batch_execute("SELECT threadcast.enable('public.feedback_replies', payload => 'keys')")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_forged_next_seq_notification_shows_nothing_in_either_mode() {
    for keys_only in [false, true] {
        let db = TestDb::new().await;
        mode(&db, keys_only).await;
        let server = TestServer::start(&db).await;
        let thread = db.create_thread().await;
        let mut live = server.open(thread).await;
        let stranger = stranger(&db).await;
        let src = db.source_oid().await;
        // The next number, with content, correctly shaped, signed with a made-up signature.
        let forged = format!(
            r#"{{"v":2,"op":"I","table":"public.feedback_replies","src":{src},"thread":"{thread}","seq":1,"id":"{}","row":{{"id":"x","feedback_id":"{thread}","content":"forged","thread_seq":1}},"kid":1,"sig":"{}"}}"#,
            Uuid::new_v4(),
            "A".repeat(43)
        );
        notify(&stranger, &forged).await;
        db.insert_reply(thread, "real").await;

        let first = live.next_event().await;
        assert_eq!(
            (first.seq(), first.content()),
            (1, "real".to_owned()),
            "keys_only={keys_only}: the forgery shows nothing; the real reply takes its number"
        );
        assert_exactly_once("the stream", &[first], &db, thread).await;
        assert_eq!(
            server
                .metric("threadcast_notifications_rejected_total")
                .await,
            1.0,
            "keys_only={keys_only}: the forgery is counted"
        );
    }
}

#[tokio::test]
async fn a_replayed_or_altered_genuine_notification_shows_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let (thread, other) = (db.create_thread().await, db.create_thread().await);
    let mut live = server.open(thread).await;
    let mut other_live = server.open(other).await;
    let stranger = stranger(&db).await;
    // Anyone may LISTEN too: the stranger captures a genuine notification.
    let (_listener, mut heard) = db::listen(&db.reader_url, "threadcast").await;
    db.insert_reply(thread, "one").await;
    let genuine = heard.recv().await.expect("a genuine notification");
    assert_eq!(live.next_event().await.content(), "one");
    db.insert_reply(thread, "two").await;
    assert_eq!(live.next_event().await.content(), "two");

    // Replayed as it was, then with its number moved on, then moved to another thread.
    notify(&stranger, &genuine).await;
    let next_seq = genuine.replacen(r#""seq":1,"#, r#""seq":3,"#, 1);
    assert_ne!(next_seq, genuine);
    notify(&stranger, &next_seq).await;
    let moved = genuine.replace(&thread.to_string(), &other.to_string());
    notify(&stranger, &moved).await;
    db.insert_reply(thread, "three").await;
    db.insert_reply(other, "elsewhere").await;

    let third = live.next_event().await;
    assert_eq!((third.seq(), third.content()), (3, "three".to_owned()));
    let elsewhere = other_live.next_event().await;
    assert_eq!(
        (elsewhere.seq(), elsewhere.content()),
        (1, "elsewhere".to_owned())
    );
    let all = server
        .open_with(thread, "&lastEventId=0", None)
        .await
        .unwrap()
        .events(3)
        .await;
    assert_exactly_once("the thread from the start", &all, &db, thread).await;
    assert_eq!(
        server
            .metric("threadcast_notifications_rejected_total")
            .await,
        2.0,
        "the two altered copies are counted; the replay is genuine, and simply old"
    );
}
