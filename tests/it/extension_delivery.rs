//! The extension over real connections: NOTIFY is only delivered at commit, which a rolled-back
//! `#[pg_test]` never reaches. One connection LISTENs while others write.

use std::time::Duration;

use futures::StreamExt;
use threadcast_payload::{Op, Payload};
use threadcast_tests::TestDb;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls};
use uuid::Uuid;

/// A connection LISTENing on `threadcast`; payloads arrive on the receiver in delivery order.
async fn listen(db: &TestDb) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut conn) = tokio_postgres::connect(&db.admin_url, NoTls)
        .await
        .expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute("LISTEN threadcast")
        .await
        .expect("LISTEN");
    (client, rx)
}

/// Inserts a reply through any client or open transaction.
async fn insert(client: &impl GenericClient, thread: Uuid, content: &str) {
    client
        .execute(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) VALUES ($1, 'end_user', 'Maya', $2)",
            &[&thread, &content],
        )
        .await
        .expect("insert a reply");
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a notification within 20 s")
        .expect("the listener is alive")
}

#[tokio::test]
async fn a_committed_insert_reaches_a_listener_with_the_exact_payload() {
    let db = TestDb::new().await;
    let (_listener, mut rx) = listen(&db).await;
    let thread = db.create_thread().await;
    let id = db.insert_reply(thread, "hello \"world\" 🎉").await;

    let text = next(&mut rx).await;
    let row = db
        .client
        .query_one(
            "SELECT row_to_json(r)::text FROM feedback_replies r WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let ids = db
        .client
        .query_one(
            "SELECT 'public.feedback_replies'::regclass::oid::int8, (SELECT max(kid) FROM threadcast.keys)",
            &[],
        )
        .await
        .unwrap();
    let (src, kid): (i64, i32) = (ids.get(0), ids.get(1));
    let body = format!(
        r#"{{"v":2,"op":"I","table":"public.feedback_replies","src":{src},"thread":"{thread}","seq":1,"id":"{id}","row":{row},"kid":{kid}"#
    );
    assert!(
        text.starts_with(&body)
            && text.len() == body.len() + 1 + threadcast_payload::SIGNATURE_BYTES,
        "the payload is exactly the documented format, with the row as row_to_json renders it, \
         and a signature: {text}"
    );
    assert!(
        Payload::verify(&text, &db.keys().await).is_ok(),
        "signed with a key of threadcast.keys"
    );
}

#[tokio::test]
async fn a_rolled_back_insert_sends_nothing_and_takes_no_number() {
    let db = TestDb::new().await;
    let (_listener, mut rx) = listen(&db).await;
    let thread = db.create_thread().await;
    let mut writer = db.connect().await;
    let tx = writer.transaction().await.unwrap();
    insert(&tx, thread, "never").await;
    tx.rollback().await.unwrap();
    db.insert_reply(thread, "kept").await;

    let p = next(&mut rx).await;
    let p = Payload::decode(&p).unwrap();
    assert_eq!(
        (p.op, p.seq),
        (Op::Insert, 1),
        "the rolled-back insert neither notified nor used seq 1"
    );
}

#[tokio::test]
async fn concurrent_writers_to_one_thread_get_1_to_n_and_the_listener_hears_them_in_order() {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let db = TestDb::new().await;
    let (_listener, mut rx) = listen(&db).await;
    let thread = db.create_thread().await;

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = db.connect().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                insert(&client, thread, &format!("writer {w} reply {i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let total = (WRITERS * EACH) as i64;
    let mut heard = Vec::new();
    while heard.len() < total as usize {
        heard.push(Payload::decode(&next(&mut rx).await).unwrap().seq);
    }
    assert_eq!(
        heard,
        (1..=total).collect::<Vec<_>>(),
        "delivered in seq order, no gap, no duplicate"
    );
    let stored: Vec<i64> = db
        .client
        .query(
            "SELECT thread_seq FROM feedback_replies WHERE feedback_id = $1 ORDER BY thread_seq",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        stored,
        (1..=total).collect::<Vec<_>>(),
        "the table holds 1..N"
    );
}

#[tokio::test]
async fn writers_to_different_threads_do_not_wait_for_each_other() {
    let db = TestDb::new().await;
    let (a, b) = (db.create_thread().await, db.create_thread().await);
    let mut holder = db.connect().await;
    let open = holder.transaction().await.unwrap();
    insert(&open, a, "holds thread a's counter until commit").await;

    // Thread b's writer commits while thread a's transaction is still open.
    let other = db.connect().await;
    tokio::time::timeout(Duration::from_secs(20), insert(&other, b, "not blocked"))
        .await
        .expect("a writer to another thread must not wait for the open transaction");

    // A second writer to thread a does wait, and takes the next number once the first commits.
    let same = db.connect().await;
    let pid: i32 = same
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waiting = tokio::spawn(async move {
        insert(&same, a, "waits its turn").await;
        same
    });
    threadcast_tests::eventually("the second writer to thread a to wait on a lock", || {
        let client = &db.client;
        async move {
            client
                .query_one("SELECT coalesce(wait_event_type, '') = 'Lock' FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        }
    })
    .await;
    open.commit().await.unwrap();
    waiting.await.unwrap();
    let seqs: Vec<(String, i64)> = db
        .client
        .query("SELECT content, thread_seq FROM feedback_replies WHERE feedback_id = $1 ORDER BY thread_seq", &[&a])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seqs,
        vec![
            ("holds thread a's counter until commit".into(), 1),
            ("waits its turn".into(), 2)
        ],
        "of two writers to one thread, the lower number commits first"
    );
}

#[tokio::test]
async fn one_transaction_writing_several_threads_notifies_each_in_its_own_numbering() {
    let db = TestDb::new().await;
    let (_listener, mut rx) = listen(&db).await;
    let threads: Vec<Uuid> = vec![db.create_thread().await, db.create_thread().await];
    let mut writer = db.connect().await;
    let tx = writer.transaction().await.unwrap();
    for round in 0..3 {
        for t in &threads {
            insert(&tx, *t, &format!("round {round}")).await;
        }
    }
    tx.commit().await.unwrap();
    let mut per_thread = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for _ in 0..6 {
        let p = next(&mut rx).await;
        let p = Payload::decode(&p).unwrap();
        per_thread
            .entry(p.thread.into_owned())
            .or_default()
            .push(p.seq);
    }
    for t in &threads {
        assert_eq!(per_thread[&t.to_string()], vec![1, 2, 3], "thread {t}");
    }
}
