//! The broadcaster's database role, as `sql/roles.sql` creates it: it has exactly the privileges
//! docs/security.md lists, and with them the broadcaster streams, resumes, reads rows that
//! notifications leave out, and stores POSTed replies. (Every other black-box test runs as this
//! role too: `TestDb` loads `sql/roles.sql`.)

use std::collections::BTreeSet;
use threadcast_payload::{ChangeKind, APPLICATION_NAME};

use serde_json::json;
use threadcast_tests::db::{self, READER_ROLE};
use threadcast_tests::{assert_exactly_once, seqs, TestDb, TestServer};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

#[tokio::test]
async fn the_broadcaster_role_has_exactly_the_grants_of_roles_sql_and_no_power() {
    let db = TestDb::new().await;
    // Idempotent: loading it again (another database, a re-run of a migration) changes nothing.
    let roles =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/roles.sql")).unwrap();
    db.client
        .batch_execute(&roles)
        .await
        .expect("sql/roles.sql runs twice");

    let powers = db
        .client
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit AND EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid)
               FROM pg_roles r WHERE rolname = $1",
            &[&READER_ROLE],
        )
        .await
        .expect("the role exists");
    let powers: Vec<bool> = (0..6).map(|i| powers.get(i)).collect();
    assert_eq!(
        powers, [false; 6],
        "no superuser, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS or role membership"
    );
    let owned: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = $1::text::regrole)
                  + (SELECT count(*) FROM pg_namespace WHERE nspowner = $1::text::regrole)
                  + (SELECT count(*) FROM pg_proc WHERE proowner = $1::text::regrole)",
            &[&READER_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0, "it owns no table, schema or function");

    let grants: BTreeSet<(String, String)> = db
        .client
        .query(
            "SELECT table_schema || '.' || table_name, privilege_type
               FROM information_schema.role_table_grants WHERE grantee = $1",
            &[&READER_ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("public.feedback_replies", "INSERT"),
        ("public.feedback_replies", "SELECT"),
        // threadcast.grant_listen(): the keys that sign notifications, to check them with.
        ("threadcast.keys", "SELECT"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(grants, expected, "table grants to the role itself");
    let columns: BTreeSet<(String, String, String)> = db
        .client
        .query(
            "SELECT table_schema || '.' || table_name, column_name, privilege_type
               FROM information_schema.role_column_grants
              WHERE grantee = $1 AND table_name <> 'feedback_replies' AND table_name <> 'keys'",
            &[&READER_ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        columns,
        [("id", "SELECT"), ("project_id", "SELECT")]
            .iter()
            .map(|(c, p)| ("public.feedback".to_owned(), c.to_string(), p.to_string()))
            .collect(),
        "of the threads, only what says which project each belongs to (dashboard tokens)"
    );

    // And what that leaves it unable to do, tried as the role.
    let role = db::connect(&db.reader_url).await;
    let thread = db.create_thread().await;
    let reply = db.insert_reply(thread, "not yours to change").await;
    for (what, sql) in [
        (
            "change a reply",
            format!("UPDATE feedback_replies SET content = 'x' WHERE id = '{reply}'"),
        ),
        (
            "delete a reply",
            format!("DELETE FROM feedback_replies WHERE id = '{reply}'"),
        ),
        ("read the threads", "SELECT * FROM feedback".to_owned()),
        (
            "read the threads' titles",
            "SELECT title FROM feedback".to_owned(),
        ),
        (
            "move a thread to another project",
            "UPDATE feedback SET project_id = gen_random_uuid()".to_owned(),
        ),
        (
            "enable a table",
            "SELECT threadcast.enable('public.feedback_replies')".to_owned(),
        ),
        (
            "create a table",
            "CREATE TABLE public.mine (id int)".to_owned(),
        ),
        (
            "renumber a thread",
            "UPDATE threadcast.counters SET last_seq = last_seq + 1".to_owned(),
        ),
        (
            "rotate the signing key",
            "SELECT threadcast.rotate_key()".to_owned(),
        ),
    ] {
        let error = role
            .batch_execute(&sql)
            .await
            .expect_err(&format!("the role may not {what}"));
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_broadcaster_connected_as_that_role_streams_resumes_fetches_and_stores_posts() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;

    db.insert_reply(thread, "small").await;
    // Too large for NOTIFY: the broadcaster reads the row with its own role.
    db.insert_reply(thread, &"x".repeat(20_000)).await;
    let client_id = Uuid::new_v4();
    let posted = server
        .http
        .post(server.url("/api/widget/replies"))
        .bearer_auth(server.token(thread))
        .json(&json!({ "content": "posted", "author_name": "Maya", "client_id": client_id }))
        .send()
        .await
        .expect("POST /api/widget/replies");
    assert_eq!(posted.status(), 201, "{:?}", posted.text().await);

    let received = live.events(3).await;
    assert_eq!(seqs(&received), [1, 2, 3]);
    assert_eq!(
        received[1].content().len(),
        20_000,
        "the large row arrives whole"
    );
    assert_eq!(received[2].content(), "posted");
    assert_exactly_once("the live stream", &received, &db, thread).await;

    let mut resumed = server
        .open_with(thread, "", Some(1))
        .await
        .expect("resume with Last-Event-ID");
    assert_eq!(seqs(&resumed.events(2).await), [2, 3]);
    let mut history = server
        .open_with(thread, "&history=1", None)
        .await
        .expect("open with history");
    assert_eq!(history.next_event().await.content(), "posted");

    let users: Vec<String> = db
        .client
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE $1 || '%'",
            &[&APPLICATION_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        users,
        [READER_ROLE],
        "every connection of the broadcaster is the least-privileged role's"
    );
}

#[tokio::test]
async fn a_keys_only_source_is_served_with_the_same_role() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies', payload => 'keys')")
        .await
        .unwrap();
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut live = server.open(thread).await;

    let reply = db.insert_reply(thread, "read from the table").await;
    let inserted = live.next_event().await;
    // Deleted only now: a row deleted before the broadcaster reads it is, rightly, only a delete.
    db.delete_reply(reply).await;
    let deleted = live.next_event().await;

    assert_eq!(inserted.content(), "read from the table");
    assert_eq!(deleted.event, ChangeKind::Delete.as_str());
    assert_exactly_once("the live stream", &[inserted, deleted], &db, thread).await;
}
