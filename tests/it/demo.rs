//! Demo mode over HTTP: off by default, its files with the types browsers insist on, the demo
//! thread, and the token endpoint. The page itself is tested in a browser (`browser.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_tests::server::SECRET;
use threadcast_tests::{TestDb, TestServer};
use uuid::Uuid;

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn demo_server(db: &TestDb) -> TestServer {
    TestServer::start_with(db, |c| c.demo = true).await
}

#[tokio::test]
async fn without_demo_mode_there_is_no_demo_and_no_token_endpoint() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    for path in [
        "/demo/".to_owned(),
        "/demo/thread".to_owned(),
        format!("/demo/token?feedbackId={thread}"),
    ] {
        assert_eq!(get(&server, &path).await.status(), 404, "{path}");
    }
    let module = get(&server, "/widget/threadcast.js").await;
    assert_eq!(module.status(), 200, "the widget client is served always");
    assert!(content_type(&module).starts_with("text/javascript"));
}

#[tokio::test]
async fn demo_files_are_served_with_their_types() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    for (path, kind, needle) in [
        ("/demo/", "text/html", "pane-end_user"),
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
        let response = get(&server, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            content_type(&response).starts_with(kind),
            "{path} is {}",
            content_type(&response)
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} has {needle:?}");
    }
}

#[tokio::test]
async fn demo_without_a_slash_redirects_to_the_folder_with_its_query() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    for (path, location) in [
        ("/demo", "/demo/"),
        ("/demo?feedbackId=x&ttl=3", "/demo/?feedbackId=x&ttl=3"),
    ] {
        let response = get(&server, path).await;
        assert!(response.status().is_redirection(), "{path}");
        assert_eq!(response.headers()["location"], location, "{path}");
    }
}

#[tokio::test]
async fn the_demo_thread_is_the_first_feedback_thread() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let empty = get(&server, "/demo/thread").await;
    assert_eq!(empty.status(), 404, "no thread yet");
    let error: Value = empty.json().await.unwrap();
    assert!(error["error"].is_string());

    let first = db.create_thread().await;
    let second = db.create_thread().await;
    db.insert_reply(second, "x").await;
    // Without SELECT on public.feedback the broadcaster takes a thread of the replies, untitled.
    let untitled: Value = get(&server, "/demo/thread").await.json().await.unwrap();
    assert_eq!(untitled["feedbackId"], second.to_string());
    assert_eq!(untitled["title"], Value::Null);

    db.client
        .batch_execute(&format!(
            "GRANT SELECT ON public.feedback TO {}",
            threadcast_tests::db::READER_ROLE
        ))
        .await
        .unwrap();
    let titled: Value = get(&server, "/demo/thread").await.json().await.unwrap();
    assert_eq!(titled["feedbackId"], first.to_string());
    assert_eq!(titled["title"], "a thread");
}

#[tokio::test]
async fn demo_tokens_carry_the_thread_role_and_lifetime_asked_for() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let thread = db.create_thread().await;
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
        let response = get(&server, &format!("/demo/token?feedbackId={thread}{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        let claims = keys
            .verify(body["token"].as_str().expect("a token"))
            .expect("a valid token");
        assert_eq!((claims.feedback_id, claims.role), (thread, role), "{query}");
        assert!(
            claims.exp.abs_diff(now + ttl) <= 2,
            "{query}: exp {} is about now + {ttl}",
            claims.exp
        );
    }

    let token: Value = get(&server, &format!("/demo/token?feedbackId={thread}"))
        .await
        .json()
        .await
        .unwrap();
    let stream = server
        .http
        .get(server.stream_url(thread, ""))
        .bearer_auth(token["token"].as_str().unwrap())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.status(),
        200,
        "a demo token opens its thread's stream"
    );

    for query in [
        String::new(),
        "feedbackId=nope".into(),
        format!("feedbackId={thread}&role=admin"),
        format!("feedbackId={thread}&ttl=0"),
        format!("feedbackId={thread}&ttl=-5"),
        format!("feedbackId={thread}&ttl=999999"),
        format!("feedbackId={}&ttl=1h", Uuid::new_v4()),
    ] {
        let response = get(&server, &format!("/demo/token?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
}
