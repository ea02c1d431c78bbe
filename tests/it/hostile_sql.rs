//! Hostile input on the SQL side, checked end to end: content and thread keys that look like
//! quotes, escapes, JSON or SSE; names that need quoting; a role that does not own the table;
//! and NOTIFYs forged by a role that may only connect (NOTIFY needs no privilege at all).

use std::time::Duration;
use threadcast_payload::ChangeKind;

use threadcast_payload::Payload;
use threadcast_tests::db::{self, READER_ROLE};
use threadcast_tests::{assert_exactly_once, assert_exactly_once_in, seqs, TestDb, TestServer};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// Contents a reply may carry; each must reach a browser exactly as stored.
fn hostile_contents() -> Vec<(&'static str, String)> {
    vec![
        ("quotes", r#"it's "quoted" and 'single' and `back`"#.into()),
        ("backslashes", r"C:\path\to\n \\ \u0000 \x41".into()),
        ("unicode", "Ünïcödé — 中文 — עברית — Ελληνικά".into()),
        ("emoji", "🎉 👩‍👩‍👧‍👦 🏳️‍🌈 1️⃣".into()),
        ("line breaks", "line 1\nline 2\r\nline 3\rline 4".into()),
        (
            "control characters",
            "bell \u{7} tab \t esc \u{1b} del \u{7f}".into(),
        ),
        (
            "separators",
            "line\u{2028}separator\u{2029}paragraph\u{85}next".into(),
        ),
        (
            "JSON",
            r#"{"id":"forged","content":"x","thread_seq":999}"#.into(),
        ),
        ("JSON breakout", r#""}],"thread_seq":1,"x":{"#.into()),
        (
            "an SSE frame",
            "\n\nid: 999\nevent: delete\ndata: {\"id\":\"x\"}\n\n".into(),
        ),
        ("SQL", "'; DROP TABLE feedback_replies; --".into()),
        ("empty", String::new()),
        ("100 KB", "0123456789abcdef".repeat(6400)),
    ]
}

#[tokio::test]
async fn hostile_content_arrives_byte_exact_live_and_on_resume() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    let contents = hostile_contents();

    for (_, content) in &contents {
        db.client
            .execute(
                "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                 VALUES ($1, 'end_user', $2, $2)",
                &[&thread, content],
            )
            .await
            .expect("insert a hostile reply");
    }
    let received_live = live.events(contents.len()).await;
    let mut resumed = server
        .open_with(thread, "&lastEventId=0", None)
        .await
        .expect("resume from the start");
    let received_on_resume = resumed.events(contents.len()).await;

    for (how, events) in [("live", &received_live), ("on resume", &received_on_resume)] {
        for ((name, content), event) in contents.iter().zip(events.iter()) {
            let row = event.json();
            assert!(
                row["content"].as_str() == Some(content.as_str()),
                "{name} content arrives {how} byte-exact: sent {content:?}, got {:?}",
                row["content"]
            );
            assert!(
                row["author_name"].as_str() == Some(content.as_str()),
                "{name} author_name arrives {how} byte-exact"
            );
        }
        assert_exactly_once(how, events, &db, thread).await;
    }
}

#[tokio::test]
async fn hostile_thread_keys_are_announced_and_read_back_exactly() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE public.notes (id bigserial PRIMARY KEY, topic text NOT NULL, body text);
             SELECT threadcast.enable('public.notes', thread_column => 'topic', channel => 'notes');",
        )
        .await
        .expect("a text-keyed source");
    let (_listener, mut notifications) = db::listen(&db.admin_url, "notes").await;
    let keys = [
        "o'brien".to_owned(),
        r"back\slash \\ \n".to_owned(),
        r#""quoted""#.to_owned(),
        "🎉 emoji ünïcode".to_owned(),
        r#"{"json": true, "seq": 5}"#.to_owned(),
        "line\nbreak\r\n".to_owned(),
        "'; DROP TABLE notes; --".to_owned(),
        "%s %d $1 :name".to_owned(),
        " leading and trailing ".to_owned(),
        String::new(),
        "k".repeat(2000),
    ];

    for key in &keys {
        db.client
            .execute("INSERT INTO notes (topic, body) VALUES ($1, $1)", &[key])
            .await
            .expect("insert under a hostile key");
        let text = tokio::time::timeout(Duration::from_secs(20), notifications.recv())
            .await
            .expect("a notification within 20 s")
            .expect("the listener is alive");
        let payload = Payload::decode(&text)
            .unwrap_or_else(|e| panic!("the payload for key {key:?} decodes ({e}): {text}"));
        assert_eq!(
            payload.thread,
            key.as_str(),
            "the payload names the key exactly"
        );
        assert_eq!(payload.seq, 1, "key {key:?} is a thread of its own");
        let body: String = db
            .client
            .query_one(
                "SELECT \"row\"->>'body' FROM threadcast.changes('public.notes', $1, 0)",
                &[key],
            )
            .await
            .unwrap_or_else(|e| panic!("read thread {key:?} back: {e}"))
            .get(0);
        assert_eq!(&body, key, "threadcast.changes finds the thread by its key");
    }

    // A key too long to index (or to announce) is an ERROR for that write, not a crash.
    let error = db
        .client
        .execute(
            "INSERT INTO notes (topic, body) VALUES ($1, 'x')",
            &[&"k".repeat(9000)],
        )
        .await
        .expect_err("a 9000-byte key is refused");
    assert!(error.as_db_error().is_some(), "a clean ERROR: {error:?}");
    db.client
        .execute("INSERT INTO notes (topic, body) VALUES ('after', 'x')", &[])
        .await
        .expect("the session carries on");
}

#[tokio::test]
async fn a_table_schema_columns_and_channel_that_need_quoting_are_served() {
    const TABLE: &str = r#""Odd Schema"."Replies ""v2""""#;
    let db = TestDb::new().await;
    db.client
        .batch_execute(&format!(
            r#"CREATE SCHEMA "Odd Schema";
               CREATE TABLE {TABLE} (
                   "Reply Id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                   "Feedback Id" uuid NOT NULL,
                   "Body, ""quoted""" text
               );
               SELECT threadcast.enable('{}', thread_column => 'Feedback Id',
                                        seq_column => 'Seq #', channel => 'odd "channel"');
               GRANT USAGE ON SCHEMA "Odd Schema" TO {READER_ROLE};
               GRANT SELECT ON {TABLE} TO {READER_ROLE};"#,
            TABLE.replace('\'', "''")
        ))
        .await
        .expect("a source whose every name needs quoting");
    let server = TestServer::start_with(&db, |c| c.source = TABLE.into()).await;
    let thread = Uuid::new_v4();
    let mut live = server.open(thread).await;

    let insert = format!(
        r#"INSERT INTO {TABLE} ("Feedback Id", "Body, ""quoted""") VALUES ($1, $2) RETURNING "Reply Id""#
    );
    let mut ids = Vec::new();
    for body in ["one", "two", "three"] {
        let id: Uuid = db
            .client
            .query_one(&insert, &[&thread, &body])
            .await
            .expect("insert")
            .get(0);
        ids.push(id);
    }
    db.client
        .execute(
            &format!(
                r#"UPDATE {TABLE} SET "Body, ""quoted""" = 'one, edited' WHERE "Reply Id" = $1"#
            ),
            &[&ids[0]],
        )
        .await
        .expect("update");
    db.client
        .execute(
            &format!(r#"DELETE FROM {TABLE} WHERE "Reply Id" = $1"#),
            &[&ids[1]],
        )
        .await
        .expect("delete");

    let received = live.events(5).await;
    assert_eq!(seqs(&received), [1, 2, 3, 4, 5]);
    assert_eq!(received[3].json()[r#"Body, "quoted""#], "one, edited");
    assert_eq!(received[4].event, ChangeKind::Delete.as_str());
    assert_exactly_once_in(
        "the live stream",
        &received,
        &db.client,
        TABLE,
        &thread.to_string(),
        0,
    )
    .await;
    let mut resumed = server
        .open_with(thread, "&lastEventId=0", None)
        .await
        .expect("resume");
    let caught_up = resumed.events(3).await;
    assert_exactly_once_in(
        "the resumed stream",
        &caught_up,
        &db.client,
        TABLE,
        &thread.to_string(),
        0,
    )
    .await;
}

/// A login role of this test's own (roles are cluster-wide) with `grants` run as the superuser;
/// returns a connection as that role.
async fn role(db: &TestDb, prefix: &str, grants: &str) -> tokio_postgres::Client {
    let name = format!("{prefix}_{}", db.name);
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN; {}",
            grants.replace("{role}", &name)
        ))
        .await
        .expect("create a role");
    let url = db
        .admin_url
        .replace("user=postgres", &format!("user={name}"));
    db::connect(&url).await
}

#[tokio::test]
async fn a_role_that_does_not_own_the_table_cannot_enable_disable_renumber_or_redirect_it() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    db.insert_reply(thread, "before the intruder").await;
    // Every privilege on the table, but not its ownership.
    let intruder = role(&db, "intruder", "GRANT ALL ON feedback_replies TO {role}").await;

    let attempts = [
        (
            "enable",
            "SELECT threadcast.enable('public.feedback_replies', channel => 'hijacked')",
        ),
        ("disable", "SELECT threadcast.disable('public.feedback_replies')"),
        (
            "register another channel",
            "INSERT INTO threadcast.sources (source, thread_column, seq_column, id_column, channel, payload)
             VALUES ('public.feedback_replies', 'feedback_id', 'thread_seq', 'id', 'hijacked', 'full')",
        ),
        (
            "plant a counter",
            "INSERT INTO threadcast.counters VALUES ('public.feedback_replies', 'x', 1)",
        ),
        ("erase tombstones", "DELETE FROM threadcast.tombstones"),
    ];
    for (what, sql) in attempts {
        let error = intruder
            .batch_execute(sql)
            .await
            .expect_err(&format!("a non-owner may not {what}"));
        let code = error.code().cloned();
        assert!(
            matches!(
                code,
                Some(SqlState::INSUFFICIENT_PRIVILEGE) | Some(SqlState::UNIQUE_VIOLATION)
            ),
            "{what} is refused for lack of privilege: {error:?}"
        );
    }
    // Since 0.2.0 nobody but the extension writes its tables: these are refused outright (under
    // 0.1.0, row-level security merely hid the rows).
    for (what, sql) in [
        (
            "redirect the channel",
            "UPDATE threadcast.sources SET channel = 'hijacked'",
        ),
        (
            "renumber the thread",
            "UPDATE threadcast.counters SET last_seq = last_seq + 1000",
        ),
        ("unregister the table", "DELETE FROM threadcast.sources"),
    ] {
        let error = intruder
            .execute(sql, &[])
            .await
            .expect_err(&format!("a non-owner may not {what}"));
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what} is refused for lack of privilege: {error:?}"
        );
    }
    let doctor_failures: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM threadcast.doctor('public.feedback_replies') WHERE NOT ok AND \"check\" <> 'replica identity'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doctor_failures, 0, "the source is intact");

    // What the intruder may do, write a reply, takes the next number as usual.
    db::insert_reply(&intruder, thread, "by the intruder, legitimately").await;
    db.insert_reply(thread, "after the intruder").await;
    let received = live.events(3).await;
    assert_eq!(seqs(&received), [1, 2, 3]);
    assert_exactly_once("the stream", &received, &db, thread).await;
}

/// A forged notification for `thread` in the threadcast payload format.
fn forged(thread: Uuid, seq: i64, extra: &str) -> String {
    format!(
        r#"{{"v":1,"op":"I","table":"public.feedback_replies","thread":"{thread}","seq":{seq},"id":"{}"{extra}}}"#,
        Uuid::new_v4()
    )
}

#[tokio::test]
async fn notifications_forged_by_any_role_cannot_silence_a_thread() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    db.insert_reply(thread, "one").await;
    assert_eq!(live.next_event().await.seq(), 1);
    // May connect, and nothing else: no table, no schema privilege.
    let stranger = role(&db, "stranger", "").await;

    let row = |content: &str| {
        format!(
            r#","row":{{"id":"x","feedback_id":"{thread}","content":"{content}","thread_seq":0}}"#
        )
    };
    let garbage = [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"v":2,"op":"D","table":"public.feedback_replies","thread":"t","seq":1,"id":"1"}"#
            .to_owned(),
        format!("[{}]", "[".repeat(3000)),
        "x".repeat(7999),
    ];
    let skip_ahead = [
        // A number far ahead: a reader that trusted it would wait for seqs that never come.
        forged(thread, 1_000_000_000, &row("far ahead")),
        forged(thread, 1_000_000_001, r#","omitted":"too_large""#),
        // The next number, before the real change takes it.
        forged(thread, 2, r#","omitted":"too_large""#),
    ];
    for payload in garbage.iter().chain(&skip_ahead) {
        stranger
            .query("SELECT pg_notify('threadcast', $1)", &[payload])
            .await
            .expect("anyone may NOTIFY");
    }
    for n in 2..=4 {
        db.insert_reply(thread, &format!("real {n}")).await;
    }

    let received = live.events(3).await;
    assert_eq!(
        received
            .iter()
            .map(|e| (e.seq(), e.content()))
            .collect::<Vec<_>>(),
        [
            (2, "real 2".into()),
            (3, "real 3".into()),
            (4, "real 4".into())
        ],
        "the real replies arrive after the forgeries"
    );
    let mut all = vec![];
    all.extend(
        server
            .open_with(thread, "&lastEventId=0", None)
            .await
            .unwrap()
            .events(4)
            .await,
    );
    assert_exactly_once("a stream resumed from the start", &all, &db, thread).await;
}

#[tokio::test]
async fn on_a_keys_only_source_forged_notifications_put_nothing_on_a_stream() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies', payload => 'keys')")
        .await
        .expect("keys-only");
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;
    let stranger = role(&db, "stranger", "").await;

    // The next number, with content: a reader that used rows from notifications would show it.
    let injected = forged(
        thread,
        1,
        &format!(
            r#","row":{{"id":"x","feedback_id":"{thread}","content":"forged","thread_seq":1}}"#
        ),
    );
    stranger
        .query("SELECT pg_notify('threadcast', $1)", &[&injected])
        .await
        .expect("anyone may NOTIFY");
    db.insert_reply(thread, "real").await;

    let first = live.next_event().await;
    assert_eq!(
        (first.seq(), first.content()),
        (1, "real".to_owned()),
        "a keys-only source reads every row from the table"
    );
    assert_exactly_once("the stream", &[first], &db, thread).await;
}
