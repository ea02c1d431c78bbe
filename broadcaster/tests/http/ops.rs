//! Operations endpoints and the connection limit.

use axum::http::StatusCode;

use crate::support::{get, Api, Frames};

#[tokio::test]
async fn healthz_answers_ok() {
    let (status, _, body) = Api::new().answer(get("/healthz", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
}

#[tokio::test]
async fn readyz_follows_the_listen_connection_and_shutdown() {
    let api = Api::new();
    assert_eq!(api.answer(get("/readyz", &[])).await.0, StatusCode::OK);
    api.state.set_ready(false);
    let (status, headers, body) = api.answer(get("/readyz", &[])).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not listening: {body:?}"
    );
    assert_eq!(headers["retry-after"], "5");
    api.state.set_ready(true);
    api.state.shutdown.cancel();
    assert_eq!(
        api.answer(get("/readyz", &[])).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting down"
    );
}

#[tokio::test]
async fn metrics_count_streams_notifications_and_deliveries() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    let bearer = format!("Bearer {}", api.token(thread));
    let response = api
        .send(get(
            &format!("/api/widget/stream?feedbackId={thread}"),
            &[("authorization", &bearer)],
        ))
        .await;
    let mut frames = Frames::of(response);
    frames.until("retry:").await;
    let (_, payload) = api.store.insert(thread, "counted");
    api.state.delivery.notify("threadcast", &payload).await;
    frames.until("counted").await;

    let (status, headers, body) = api.answer(get("/metrics", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "threadcast_open_streams 1",
        "threadcast_events_delivered_total 1",
        "threadcast_listener_reconnects_total 0",
        "threadcast_gap_fills_total 0",
        "threadcast_slow_consumer_disconnects_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "/metrics lacks `{line}`:\n{text}"
        );
    }
}

#[tokio::test]
async fn at_the_connection_limit_new_streams_get_503_until_one_closes() {
    let api = Api::with(|c| c.max_connections = 2);
    let thread = api.store.create_thread("t");
    let uri = format!("/api/widget/stream?feedbackId={thread}");
    let bearer = format!("Bearer {}", api.token(thread));
    let open = || api.send(get(&uri, &[("authorization", &bearer)]));
    let first = open().await;
    let _second = open().await;
    assert_eq!(first.status(), StatusCode::OK);

    let third = open().await;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(third.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].is_string(), "{body}");

    drop(first);
    assert_eq!(
        open().await.status(),
        StatusCode::OK,
        "a closed stream frees its place"
    );
}
