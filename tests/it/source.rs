//! The served table's registration changing under a running broadcaster: a rename, `enable()`
//! run again with another channel or payload mode, a `disable()`. The broadcaster follows the
//! table by oid, reads its registration again at every connect and every probe, and says in
//! `/readyz` why it is not serving when it cannot.

use std::time::Duration;

use reqwest::StatusCode;
use threadcast_broadcaster::Config;
use threadcast_tests::{eventually, TestDb, TestServer};
use uuid::Uuid;

/// Probes (and registration reads) every 200 ms instead of 10 s.
fn quick(config: &mut Config) {
    config.source_check = Duration::from_millis(200);
    config.max_backoff = Duration::from_millis(500);
    config.reply_rate = None;
}

/// Posts a reply to `thread`; the status.
async fn post(server: &TestServer, thread: Uuid, content: &str) -> StatusCode {
    server
        .http
        .post(server.url("/api/widget/replies"))
        .bearer_auth(server.token(thread))
        .json(&serde_json::json!({
            "content": content,
            "author_name": "Maya",
            "client_id": Uuid::new_v4(),
        }))
        .send()
        .await
        .expect("POST")
        .status()
}

/// `/readyz`'s status and error.
async fn readyz(server: &TestServer) -> (u16, String) {
    let response = server
        .http
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_renamed_table_is_still_served_posts_included() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, quick).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.client
        .batch_execute("ALTER TABLE public.feedback_replies RENAME TO replies_renamed")
        .await
        .unwrap();

    // A POST names the table; it works again once the broadcaster has read the new name.
    eventually("a POST to the renamed table to be stored", || async {
        post(&server, thread, "after the rename").await == StatusCode::CREATED
    })
    .await;
    assert_eq!(stream.next_event().await.content(), "after the rename");
    assert_eq!(readyz(&server).await.0, 200);
}

#[tokio::test]
async fn enable_run_again_with_another_channel_is_followed_without_losing_a_reply() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, quick).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "on the first channel").await;
    assert_eq!(stream.next_event().await.content(), "on the first channel");

    db.client
        .batch_execute(
            "SELECT threadcast.enable('public.feedback_replies', channel => 'elsewhere', payload => 'keys')",
        )
        .await
        .unwrap();
    db.insert_reply(thread, "announced on the new channel")
        .await;
    assert_eq!(
        stream.next_event().await.content(),
        "announced on the new channel",
        "the broadcaster listens where the table announces now, and reads what it missed"
    );
    db.insert_reply(thread, "and the next one").await;
    assert_eq!(stream.next_event().await.content(), "and the next one");
    assert_eq!(readyz(&server).await.0, 200);
}

#[tokio::test]
async fn a_disabled_source_makes_readyz_say_so_until_it_is_enabled_again() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, quick).await;
    db.client
        .batch_execute("SELECT threadcast.disable('public.feedback_replies')")
        .await
        .unwrap();
    eventually("/readyz to report the disabled source", || async {
        let (status, reason) = readyz(&server).await;
        status == 503 && reason.contains("threadcast.enable('public.feedback_replies')")
    })
    .await;

    db.client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies')")
        .await
        .unwrap();
    eventually("/readyz to be green again", || async {
        readyz(&server).await.0 == 200
    })
    .await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "served again").await;
    assert_eq!(stream.next_event().await.content(), "served again");
}
