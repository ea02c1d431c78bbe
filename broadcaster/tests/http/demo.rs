//! Demo mode on the in-memory store: off by default, its files with the types browsers insist
//! on, the redirect to its folder, and the token endpoint. (Which thread `/demo/thread` picks from
//! a real schema is `tests/it/demo.rs`'s; the page itself is tested in a browser.)

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use serde_json::Value;
use threadcast_broadcaster::auth::{Keys, Role};
use uuid::Uuid;

use crate::support::{get, Api, SECRET};

fn demo() -> Api {
    Api::with(|c| c.demo = true)
}

#[tokio::test]
async fn without_demo_mode_there_is_no_demo_and_no_token_endpoint() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    for path in [
        "/demo/".to_owned(),
        "/demo/thread".to_owned(),
        format!("/demo/token?feedbackId={thread}"),
    ] {
        assert_eq!(
            api.answer(get(&path, &[])).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let (status, headers, _) = api.answer(get("/widget/threadcast.js", &[])).await;
    assert_eq!(status, StatusCode::OK, "the widget client is served always");
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}

#[tokio::test]
async fn demo_files_are_served_with_their_types() {
    let api = demo();
    for (path, kind, needle) in [
        ("/demo/", "text/html", "pane-end_user"),
        ("/demo/index.html", "text/html", "pane-end_user"),
        ("/demo/demo.css", "text/css", ".pane"),
        ("/demo/demo.js", "text/javascript", "/widget/threadcast.js"),
        (
            "/widget/threadcast.js",
            "text/javascript",
            "export function subscribe",
        ),
        (
            "/widget/threadcast.d.ts",
            "application/typescript",
            "subscribe",
        ),
    ] {
        let (status, headers, body) = api.answer(get(path, &[])).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path} is {content_type}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains(needle),
            "{path} has {needle:?}"
        );
    }
}

#[tokio::test]
async fn demo_without_a_slash_redirects_to_the_folder_with_its_query() {
    let api = demo();
    for (path, location) in [
        ("/demo", "/demo/"),
        ("/demo?feedbackId=x&ttl=3", "/demo/?feedbackId=x&ttl=3"),
    ] {
        let (status, headers, _) = api.answer(get(path, &[])).await;
        assert!(status.is_redirection(), "{path}: {status}");
        assert_eq!(headers[header::LOCATION], location, "{path}");
    }
}

#[tokio::test]
async fn the_demo_thread_is_the_stores_first_thread_or_404() {
    let api = demo();
    let (status, _, body) = api.answer(get("/demo/thread", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no thread yet");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"].is_string(), "{error}");

    let first = api.store.create_thread("the first");
    api.store.create_thread("the second");
    let (status, _, body) = api.answer(get("/demo/thread", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let thread: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(thread["feedbackId"], first.to_string());
    assert_eq!(thread["title"], "the first");
}

#[tokio::test]
async fn demo_tokens_carry_the_thread_role_and_lifetime_asked_for() {
    let api = demo();
    let thread = api.store.create_thread("t");
    let keys = Keys::new(SECRET);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (query, role, ttl) in [
        ("", Role::EndUser, 3600),
        ("&role=end_user&ttl=3", Role::EndUser, 3),
        ("&role=agency&ttl=120", Role::Agency, 120),
    ] {
        let (status, headers, body) = api
            .answer(get(&format!("/demo/token?feedbackId={thread}{query}"), &[]))
            .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let body: Value = serde_json::from_slice(&body).unwrap();
        let claims = keys
            .verify(body["token"].as_str().expect("a token"))
            .expect("a valid token");
        assert_eq!((claims.feedback_id, claims.role), (thread, role), "{query}");
        assert!(
            claims.exp.abs_diff(now + ttl) <= 2,
            "{query}: exp {} is about now + {ttl}",
            claims.exp
        );
        let bearer = format!("Bearer {}", body["token"].as_str().unwrap());
        let stream = api
            .send(get(
                &format!("/api/widget/stream?feedbackId={thread}"),
                &[("authorization", &bearer)],
            ))
            .await;
        assert_eq!(
            stream.status(),
            StatusCode::OK,
            "a demo token opens its thread's stream"
        );
    }
}

#[tokio::test]
async fn a_demo_token_asked_for_wrongly_is_400() {
    let api = demo();
    let thread = api.store.create_thread("t");
    for query in [
        String::new(),
        "feedbackId=nope".into(),
        format!("feedbackId={thread}&role=admin"),
        format!("feedbackId={thread}&ttl=0"),
        format!("feedbackId={thread}&ttl=-5"),
        format!("feedbackId={thread}&ttl=999999"),
        format!("feedbackId={}&ttl=1h", Uuid::new_v4()),
    ] {
        let (status, _, body) = api.answer(get(&format!("/demo/token?{query}"), &[])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
}
