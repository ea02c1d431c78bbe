//! `POST /api/widget/replies` over real HTTP against a real table: idempotent on `client_id`
//! (one row and one event however often a reply is posted, and no sequence number burnt), the
//! author from the token's role, and the table's own refusals answered with their status, never
//! a 500. (The whole status matrix and the rate limit are tested on the in-memory store:
//! `broadcaster/tests/http/replies.rs`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use threadcast_broadcaster::auth::{Claims, Keys, Role};
use threadcast_tests::server::SECRET;
use threadcast_tests::{TestDb, TestServer};
use uuid::Uuid;

/// A reply body as the widget sends it.
fn reply(content: &str, client_id: Uuid) -> Value {
    json!({ "content": content, "author_name": "Maya", "client_id": client_id })
}

/// POSTs `body` (JSON, or raw text when it is a string) with `token`; returns status, the
/// `Retry-After` header and the JSON body.
async fn post(
    server: &TestServer,
    token: Option<&str>,
    query: &str,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let mut request = server
        .http
        .post(server.url(&format!("/api/widget/replies{query}")))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = match body {
        Value::String(raw) => request.body(raw.clone()),
        json => request.body(json.to_string()),
    };
    let response = request.send().await.expect("POST /api/widget/replies");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.expect("read the answer");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({e}): {text:?}"));
    (status, retry_after, json)
}

async fn count_rows(db: &TestDb, thread: Uuid) -> i64 {
    db.client
        .query_one(
            "SELECT count(*) FROM feedback_replies WHERE feedback_id = $1",
            &[&thread],
        )
        .await
        .unwrap()
        .get(0)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_reply_posted_twice_is_stored_once_and_streamed_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    let token = server.token(thread);
    let id = Uuid::new_v4();

    let (first, _, row) = post(&server, Some(&token), "", &reply("Hello!", id)).await;
    let (again, _, repeat) = post(&server, Some(&token), "", &reply("Hello!", id)).await;

    assert_eq!(first, StatusCode::CREATED, "{row}");
    assert_eq!(again, StatusCode::OK, "a repeat answers 200: {repeat}");
    assert_eq!(repeat, row, "with the row stored the first time");
    assert_eq!(row["id"], json!(id), "client_id is the row's id");
    assert_eq!(row["feedback_id"], json!(thread), "in the token's thread");
    assert_eq!(
        (&row["author_type"], &row["author_name"], &row["content"]),
        (&json!("end_user"), &json!("Maya"), &json!("Hello!"))
    );
    assert_eq!(row["thread_seq"], 1);
    assert_eq!(count_rows(&db, thread).await, 1);

    let event = stream.next_event().await;
    assert_eq!((event.seq(), event.json()["id"].clone()), (1, json!(id)));
    db.insert_reply(thread, "next").await;
    let next = stream.next_event().await;
    assert_eq!(
        (next.seq(), next.content()),
        (2, "next".to_owned()),
        "no second event for the repeat, and no sequence number burnt by it"
    );
}

#[tokio::test]
async fn the_author_type_is_the_tokens_role() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let keys = Keys::new(SECRET);
    let agency = keys.mint(thread, Duration::from_secs(60), Role::Agency);
    let end_user = keys.mint(thread, Duration::from_secs(60), Role::EndUser);
    let no_role = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "feedback_id": thread, "exp": now() + 60 }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();

    for (token, expected) in [
        (&agency, "agency"),
        (&end_user, "end_user"),
        (&no_role, "end_user"),
    ] {
        let (status, _, row) = post(&server, Some(token), "", &reply("hi", Uuid::new_v4())).await;
        assert_eq!(status, StatusCode::CREATED, "{row}");
        assert_eq!(row["author_type"], expected, "{row}");
    }
}

#[tokio::test]
async fn refused_posts_get_their_status_and_leave_no_row_and_burn_no_number() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.reply_rate = None).await;
    let thread = db.create_thread().await;
    let other = db.create_thread().await;
    let keys = Keys::new(SECRET);
    let token = server.token(thread);
    let expired = keys.sign(&Claims {
        feedback_id: thread,
        exp: now() - 3600,
        ..Claims::default()
    });
    let badly_signed =
        Keys::new(b"another secret").mint(thread, Duration::from_secs(60), Role::EndUser);
    let no_such_thread = server.token(Uuid::new_v4());
    let taken = Uuid::new_v4();
    let (status, _, _) = post(&server, Some(&token), "", &reply("taken", taken)).await;
    assert_eq!(status, StatusCode::CREATED);
    let taken_elsewhere = Uuid::new_v4();
    let (status, _, _) = post(
        &server,
        Some(&server.token(other)),
        "",
        &reply("elsewhere", taken_elsewhere),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let max = 10_000; // the default THREADCAST_MAX_REPLY_CHARS
    let raw = |text: &str| Value::String(text.to_owned());
    let fresh = || reply("hi", Uuid::new_v4());
    use StatusCode as S;
    // Every mistake has a oneshot test of its own on the in-memory store
    // (`broadcaster/tests/http/replies.rs`); here, a few refused before the table and those the
    // table itself refuses, to show that none of them leaves a row or burns a number.
    let cases: Vec<(&str, Option<&str>, String, Value, StatusCode)> = vec![
        ("no token", None, String::new(), fresh(), S::UNAUTHORIZED),
        (
            "an expired token",
            Some(&expired),
            String::new(),
            fresh(),
            S::UNAUTHORIZED,
        ),
        (
            "a badly signed token",
            Some(&badly_signed),
            String::new(),
            fresh(),
            S::UNAUTHORIZED,
        ),
        (
            "another thread in the query",
            Some(&token),
            format!("?feedbackId={other}"),
            fresh(),
            S::FORBIDDEN,
        ),
        (
            "not JSON",
            Some(&token),
            String::new(),
            raw("{\"content\": "),
            S::BAD_REQUEST,
        ),
        (
            "one character too many",
            Some(&token),
            String::new(),
            reply(&"ü".repeat(max + 1), Uuid::new_v4()),
            S::PAYLOAD_TOO_LARGE,
        ),
        (
            "a NUL character",
            Some(&token),
            String::new(),
            reply("a\u{0}b", Uuid::new_v4()),
            S::UNPROCESSABLE_ENTITY,
        ),
        (
            "a taken client_id with other content",
            Some(&token),
            String::new(),
            reply("not what was taken", taken),
            S::CONFLICT,
        ),
        (
            "a client_id taken in another thread",
            Some(&token),
            String::new(),
            reply("elsewhere", taken_elsewhere),
            S::CONFLICT,
        ),
        (
            "a thread that does not exist",
            Some(&no_such_thread),
            String::new(),
            fresh(),
            S::NOT_FOUND,
        ),
        (
            "exactly the longest reply",
            Some(&token),
            String::new(),
            reply(&"ü".repeat(max), Uuid::new_v4()),
            S::CREATED,
        ),
    ];
    for (name, token, query, body, expected) in cases {
        let (status, _, json) = post(&server, token, &query, &body).await;
        assert_eq!(status, expected, "{name}: {json}");
        if !status.is_success() {
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}: the error says why: {json}"
            );
        }
    }

    // None of the refused posts left a row or burnt a number: the next reply is the third.
    assert_eq!(count_rows(&db, thread).await, 2);
    let id = db.insert_reply(thread, "after the mistakes").await;
    let seq: i64 = db
        .client
        .query_one(
            "SELECT thread_seq FROM feedback_replies WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 3, "no sequence number was burnt by a refused post");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_client_id_store_one_row() {
    const TRIES: usize = 16;
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.reply_rate = None).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    let token = server.token(thread);
    let id = Uuid::new_v4();

    let body = reply("once", id);
    let tries = (0..TRIES).map(|_| post(&server, Some(&token), "", &body));
    let answers = futures::future::join_all(tries).await;

    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "exactly one try creates the row: {answers:?}");
    for (status, _, row) in &answers {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::OK,
            "{status}: {row}"
        );
        assert_eq!(row, &answers[0].2, "every try answers the same row");
    }
    assert_eq!(count_rows(&db, thread).await, 1);
    assert_eq!(stream.next_event().await.seq(), 1);
    db.insert_reply(thread, "next").await;
    assert_eq!(
        stream.next_event().await.seq(),
        2,
        "one event for the reply, and the failed tries burnt no number"
    );
}

#[tokio::test]
async fn a_page_of_an_allowed_origin_may_post() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/api/widget/replies"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        preflight
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(header("access-control-allow-origin"), "https://app.example");
    assert!(header("access-control-allow-methods").contains("post"));
    assert!(header("access-control-allow-headers").contains("content-type"));
}
