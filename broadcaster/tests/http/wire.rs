//! The SSE wire format of a stream: `retry:` first, events as `id`/`event`/`data`, deletes by id,
//! heartbeats on silence, catch-up and history before live events; and a posted reply reaching
//! the stream once.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use uuid::Uuid;

use crate::support::{get, Api, Frames};

async fn open(api: &Api, thread: Uuid, extra: &str, headers: &[(&str, &str)]) -> Frames {
    let bearer = format!("Bearer {}", api.token(thread));
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    let response = api
        .send(get(
            &format!("/api/widget/stream?feedbackId={thread}{extra}"),
            &all,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    Frames::of(response)
}

#[tokio::test]
async fn a_stream_starts_with_its_retry_field_and_a_live_one_with_its_position() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    for i in 0..3 {
        let (_, payload) = api.store.insert(thread, &format!("before {i}"));
        api.state.delivery.notify("threadcast", &payload).await;
    }
    let mut live = open(&api, thread, "", &[]).await;
    assert_eq!(
        live.until("\n\n").await,
        "retry: 2000\nid: 3\nevent: joined\ndata: {}\n\n",
        "a live stream that drops before its first event resumes after 3, as EventSource \
         sends the id back"
    );
    for (extra, headers) in [("&history=2", vec![]), ("", vec![("last-event-id", "1")])] {
        let mut frames = open(&api, thread, extra, &headers).await;
        assert_eq!(
            frames.until("\n\n").await,
            "retry: 2000\n\n",
            "{extra} {headers:?}: the client's position comes with its events"
        );
    }
}

#[tokio::test]
async fn a_reply_and_a_delete_are_framed_with_their_seq_kind_and_data() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    let mut frames = open(&api, thread, "", &[]).await;
    frames.until("retry:").await;
    let (id, payload) = api.store.insert(thread, "hi\nthere");
    api.state.delivery.notify("threadcast", &payload).await;
    let deleted = api.store.delete(id).unwrap();
    api.state.delivery.notify("threadcast", &deleted).await;

    let text = frames
        .until(&format!("{{\"id\":\"{id}\"}}\n\n"))
        .await
        .to_owned();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("id:"))
        .collect();
    assert_eq!(events.len(), 2, "{text:?}");
    assert!(
        events[0].starts_with("id: 1\nevent: reply\ndata: {"),
        "{}",
        events[0]
    );
    assert!(
        events[0].contains(r#""content":"hi\nthere""#),
        "escaped, one data line: {}",
        events[0]
    );
    assert_eq!(
        events[1],
        format!("id: 2\nevent: delete\ndata: {{\"id\":\"{id}\"}}")
    );
}

#[tokio::test]
async fn a_silent_stream_gets_heartbeat_comments() {
    let api = Api::with(|c| c.heartbeat = Duration::from_millis(50));
    let thread = api.store.create_thread("t");
    let mut frames = open(&api, thread, "", &[]).await;
    let text = frames.until(": keep-alive\n\n: keep-alive\n\n").await;
    assert!(
        text.starts_with("retry: 2000\nid: 0\nevent: joined\ndata: {}\n\n: keep-alive\n\n"),
        "{text:?}"
    );
}

#[tokio::test]
async fn last_event_id_replays_what_was_missed_then_goes_live() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    for i in 1..=3 {
        api.store.insert(thread, &format!("r{i}"));
    }
    let mut frames = open(&api, thread, "&lastEventId=1", &[("last-event-id", "2")]).await;
    frames.until("r3").await;
    let (_, payload) = api.store.insert(thread, "live");
    api.state.delivery.notify("threadcast", &payload).await;
    let text = frames.until("live").await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["3", "4"], "the header wins over the query: {text:?}");
}

#[tokio::test]
async fn history_sends_the_last_replies_first() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    for i in 1..=5 {
        api.store.insert(thread, &format!("old-{i}"));
    }
    let mut frames = open(&api, thread, "&history=2", &[]).await;
    let text = frames.until("old-5").await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["4", "5"], "{text:?}");
}

#[tokio::test]
async fn a_posted_reply_is_answered_with_its_row_and_reaches_the_stream_once() {
    let api = Api::new();
    let thread = api.store.create_thread("t");
    let mut frames = open(&api, thread, "", &[]).await;
    frames.until("retry:").await;
    let client_id = Uuid::new_v4();
    let post = || {
        Request::post("/api/widget/replies")
            .header("authorization", format!("Bearer {}", api.token(thread)))
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::json!({ "content": "Hello!", "author_name": "Maya", "client_id": client_id })
                    .to_string(),
            ))
            .unwrap()
    };
    let (first, _, row) = api.answer(post()).await;
    let (again, _, repeat) = api.answer(post()).await;
    assert_eq!((first, again), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(row, repeat, "a repeat answers the stored row");
    let row: serde_json::Value = serde_json::from_slice(&row).unwrap();
    assert_eq!(row["author_type"], "end_user");

    let (_, payload) = api.store.insert(thread, "next");
    api.state.delivery.notify("threadcast", &payload).await;
    let text = frames.until("next").await;
    assert_eq!(text.matches("Hello!").count(), 1, "once: {text:?}");
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_age_asking_to_be_resumed_at_once() {
    let api = Api::with(|c| c.max_stream_age = Some(Duration::from_millis(200)));
    let thread = api.store.create_thread("t");
    let mut frames = open(&api, thread, "", &[]).await;
    let text = frames.end().await;
    assert!(
        text.starts_with("retry: 2000\n") && text.ends_with("retry: 250\n\n"),
        "{text:?}"
    );
}
