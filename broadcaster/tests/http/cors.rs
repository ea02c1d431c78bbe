//! CORS: only the configured origins are granted, for streams and for posting replies.

use axum::body::Body;
use axum::http::{HeaderMap, Request};

use crate::support::Api;

async fn preflight(api: &Api, path: &str, origin: &str, method: &str, headers: &str) -> HeaderMap {
    let request = Request::options(path)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .body(Body::empty())
        .unwrap();
    api.answer(request).await.1
}

fn allowed() -> Api {
    Api::with(|c| c.allowed_origins = vec!["https://app.example".into()])
}

#[tokio::test]
async fn a_configured_origin_may_open_streams() {
    let headers = preflight(
        &allowed(),
        "/api/widget/stream",
        "https://app.example",
        "GET",
        "authorization",
    )
    .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_grant() {
    let headers = preflight(
        &allowed(),
        "/api/widget/stream",
        "https://evil.example",
        "GET",
        "authorization",
    )
    .await;
    assert_eq!(headers.get("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_configured_origin_may_post_json_replies() {
    let headers = preflight(
        &allowed(),
        "/api/widget/replies",
        "https://app.example",
        "POST",
        "content-type",
    )
    .await;
    let header = |name: &str| headers[name].to_str().unwrap().to_ascii_lowercase();
    assert_eq!(header("access-control-allow-origin"), "https://app.example");
    assert!(header("access-control-allow-methods").contains("post"));
    assert!(header("access-control-allow-headers").contains("content-type"));
}

#[tokio::test]
async fn without_configured_origins_nobody_is_granted() {
    let headers = preflight(
        &Api::new(),
        "/api/widget/stream",
        "https://app.example",
        "GET",
        "authorization",
    )
    .await;
    assert_eq!(headers.get("access-control-allow-origin"), None);
}
