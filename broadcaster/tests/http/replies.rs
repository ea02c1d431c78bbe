//! `POST /api/widget/replies` on the in-memory store: every client mistake answered with its
//! status and a JSON error (one case per test), the author from the token's role, idempotence on
//! `client_id`, and the rate limit with `Retry-After`. (That the table's own refusals map the same
//! way and burn no sequence number is `tests/it/replies.rs`'s, on PostgreSQL.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use threadcast_broadcaster::auth::{Claims, Keys, Role};
use threadcast_broadcaster::rate::Rate;
use uuid::Uuid;

use crate::support::{Api, SECRET};

/// The default THREADCAST_MAX_REPLY_CHARS.
const MAX: usize = 10_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A reply body as the widget sends it.
fn reply(content: &str, client_id: Uuid) -> Value {
    json!({ "content": content, "author_name": "Maya", "client_id": client_id })
}

/// POSTs `body` (JSON, or raw text when it is a string) as `content_type` with `token`; returns
/// the status, `Retry-After` and the JSON answer.
async fn post(
    api: &Api,
    token: Option<&str>,
    query: &str,
    content_type: Option<&str>,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::post(format!("/api/widget/replies{query}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Value::String(raw) => raw.clone(),
        json => json.to_string(),
    };
    let (status, headers, answer) = api.answer(request.body(Body::from(body)).unwrap()).await;
    let retry_after = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let json = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({e}): {answer:?}"));
    (status, retry_after, json)
}

/// What a case needs: the app (no rate limit), a thread with a token, another thread, and a reply
/// already stored in each.
struct Case {
    api: Api,
    thread: Uuid,
    other: Uuid,
    token: String,
    taken: Uuid,
    taken_elsewhere: Uuid,
}

async fn case() -> Case {
    let api = Api::with(|c| c.reply_rate = None);
    let thread = api.store.create_thread("t");
    let other = api.store.create_thread("other");
    let token = api.token(thread);
    let (taken, taken_elsewhere) = (Uuid::new_v4(), Uuid::new_v4());
    let json = Some("application/json");
    let (status, _, _) = post(&api, Some(&token), "", json, &reply("taken", taken)).await;
    assert_eq!(status, StatusCode::CREATED);
    let elsewhere = api.token(other);
    let (status, _, _) = post(
        &api,
        Some(&elsewhere),
        "",
        json,
        &reply("elsewhere", taken_elsewhere),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    Case {
        api,
        thread,
        other,
        token,
        taken,
        taken_elsewhere,
    }
}

/// Posts as JSON with the case's token unless `token` says otherwise; checks the status and that
/// a refusal says why.
async fn check(c: &Case, token: Option<String>, query: &str, body: Value, expected: StatusCode) {
    let token = token.unwrap_or_else(|| c.token.clone());
    let token = (!token.is_empty()).then_some(token);
    let (status, _, json) = post(
        &c.api,
        token.as_deref(),
        query,
        Some("application/json"),
        &body,
    )
    .await;
    assert_eq!(status, expected, "{json}");
    if !status.is_success() {
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "the error says why: {json}"
        );
    }
}

macro_rules! cases {
    ($($name:ident: |$c:ident| ($token:expr, $query:expr, $body:expr) => $status:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let $c = case().await;
            let (token, query, body): (Option<String>, String, Value) = ($token, $query, $body);
            check(&$c, token, &query, body, StatusCode::$status).await;
        }
    )*};
}

fn fresh() -> Value {
    reply("hi", Uuid::new_v4())
}

fn raw(text: &str) -> Value {
    Value::String(text.to_owned())
}

cases! {
    no_token_is_401: |c| (Some(String::new()), String::new(), fresh()) => UNAUTHORIZED;
    an_expired_token_is_401: |c| (Some(Keys::new(SECRET).sign(&Claims {
        feedback_id: c.thread, exp: now() - 3600, ..Claims::default() })), String::new(), fresh()) => UNAUTHORIZED;
    a_badly_signed_token_is_401: |c| (Some(Keys::new(b"another secret").mint(c.thread, Duration::from_secs(60), Role::EndUser)),
        String::new(), fresh()) => UNAUTHORIZED;
    another_thread_in_the_query_is_403: |c| (None, format!("?feedbackId={}", c.other), fresh()) => FORBIDDEN;
    another_thread_in_the_body_is_403: |c| (None, String::new(),
        json!({ "content": "x", "author_name": "M", "client_id": Uuid::new_v4(), "feedback_id": c.other })) => FORBIDDEN;
    the_tokens_thread_named_in_query_and_body_is_201: |c| (None, format!("?feedbackId={}", c.thread),
        json!({ "content": "x", "author_name": "M", "client_id": Uuid::new_v4(), "feedback_id": c.thread })) => CREATED;
    a_feedback_id_that_is_not_a_uuid_is_400: |c| (None, "?feedbackId=nope".into(), fresh()) => BAD_REQUEST;
    not_json_is_400: |c| (None, String::new(), raw("{\"content\": ")) => BAD_REQUEST;
    an_empty_body_is_400: |c| (None, String::new(), raw("")) => BAD_REQUEST;
    a_json_string_is_400: |c| (None, String::new(), json!("hi")) => BAD_REQUEST;
    no_content_is_400: |c| (None, String::new(), json!({ "author_name": "M", "client_id": Uuid::new_v4() })) => BAD_REQUEST;
    no_author_name_is_400: |c| (None, String::new(), json!({ "content": "x", "client_id": Uuid::new_v4() })) => BAD_REQUEST;
    no_client_id_is_400: |c| (None, String::new(), json!({ "content": "x", "author_name": "M" })) => BAD_REQUEST;
    a_client_id_that_is_not_a_uuid_is_400: |c| (None, String::new(),
        json!({ "content": "x", "author_name": "M", "client_id": "42" })) => BAD_REQUEST;
    content_of_a_number_is_400: |c| (None, String::new(),
        json!({ "content": 42, "author_name": "M", "client_id": Uuid::new_v4() })) => BAD_REQUEST;
    one_character_too_many_is_413: |c| (None, String::new(), reply(&"ü".repeat(MAX + 1), Uuid::new_v4())) => PAYLOAD_TOO_LARGE;
    a_body_far_over_the_limit_is_413: |c| (None, String::new(), reply(&"x".repeat(400_000), Uuid::new_v4())) => PAYLOAD_TOO_LARGE;
    empty_content_is_422: |c| (None, String::new(), reply("", Uuid::new_v4())) => UNPROCESSABLE_ENTITY;
    whitespace_only_content_is_422: |c| (None, String::new(), reply(" \n\t ", Uuid::new_v4())) => UNPROCESSABLE_ENTITY;
    a_nul_character_is_422: |c| (None, String::new(), reply("a\u{0}b", Uuid::new_v4())) => UNPROCESSABLE_ENTITY;
    an_author_name_over_200_characters_is_422: |c| (None, String::new(),
        json!({ "content": "x", "author_name": "n".repeat(201), "client_id": Uuid::new_v4() })) => UNPROCESSABLE_ENTITY;
    a_taken_client_id_with_other_content_is_409: |c| (None, String::new(), reply("not what was taken", c.taken)) => CONFLICT;
    a_client_id_taken_in_another_thread_is_409: |c| (None, String::new(), reply("elsewhere", c.taken_elsewhere)) => CONFLICT;
    a_thread_that_does_not_exist_is_404: |c| (Some(c.api.token(Uuid::new_v4())), String::new(), fresh()) => NOT_FOUND;
    exactly_the_longest_reply_is_201: |c| (None, String::new(), reply(&"ü".repeat(MAX), Uuid::new_v4())) => CREATED;
    a_repeat_of_a_stored_reply_is_200: |c| (None, String::new(), reply("taken", c.taken)) => OK;
}

#[tokio::test]
async fn a_body_not_sent_as_json_is_415_whatever_it_holds() {
    let c = case().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let (status, _, json) = post(&c.api, Some(&c.token), "", content_type, &fresh()).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {json}"
        );
        assert!(json["error"].is_string(), "{json}");
    }
}

#[tokio::test]
async fn the_author_type_is_the_tokens_role() {
    let api = Api::with(|c| c.reply_rate = None);
    let thread = api.store.create_thread("t");
    let keys = Keys::new(SECRET);
    let no_role = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "feedback_id": thread, "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    for (token, expected) in [
        (
            keys.mint(thread, Duration::from_secs(60), Role::Agency),
            "agency",
        ),
        (
            keys.mint(thread, Duration::from_secs(60), Role::EndUser),
            "end_user",
        ),
        (no_role, "end_user"),
    ] {
        let (status, _, row) =
            post(&api, Some(&token), "", Some("application/json"), &fresh()).await;
        assert_eq!(status, StatusCode::CREATED, "{row}");
        assert_eq!(row["author_type"], expected, "{row}");
    }
}

#[tokio::test]
async fn a_thread_side_that_posts_too_fast_gets_429_with_retry_after() {
    // Three at once, then one a minute: the fourth in a row is refused.
    let api = Api::with(|c| c.reply_rate = Some(Rate::new(1.0 / 60.0, 3)));
    let thread = api.store.create_thread("t");
    let other = api.store.create_thread("other");
    let json = Some("application/json");
    for i in 0..3 {
        // A fresh token each time: the bucket is the thread's end user, not the token.
        let body = reply(&format!("burst {i}"), Uuid::new_v4());
        let (status, _, answer) = post(&api, Some(&api.token(thread)), "", json, &body).await;
        assert_eq!(status, StatusCode::CREATED, "burst {i}: {answer}");
    }
    let body = reply("one too many", Uuid::new_v4());
    let (status, retry_after, answer) = post(&api, Some(&api.token(thread)), "", json, &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    let retry_after: u64 = retry_after
        .expect("a 429 says when to try again")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    let agency = Keys::new(SECRET).mint(thread, Duration::from_secs(60), Role::Agency);
    for (who, token) in [("the agency", agency), ("another thread", api.token(other))] {
        let (status, _, answer) = post(&api, Some(&token), "", json, &fresh()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{who} has a bucket of its own: {answer}"
        );
    }
}
