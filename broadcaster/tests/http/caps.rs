//! Caps on open streams per token subject and per thread (a refusal is a 429 with a JSON error
//! and `Retry-After`), and the issuer and audience pins of tokens. One case per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::Response;
use threadcast_broadcaster::auth::{Claims, Keys, Pins, Role};
use uuid::Uuid;

use crate::support::{get, Api, SECRET};

fn claims(thread: Uuid, sub: Option<&str>) -> Claims {
    Claims {
        feedback_id: thread,
        exp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600,
        sub: sub.map(str::to_owned),
        ..Claims::default()
    }
}

async fn open(api: &Api, thread: Uuid, token: &str) -> Response {
    api.send(get(
        &format!("/api/widget/stream?feedbackId={thread}"),
        &[("authorization", &format!("Bearer {token}"))],
    ))
    .await
}

/// Checks a refusal: `status`, a JSON error naming `says`, and `Retry-After` for a 429.
async fn assert_refused(response: Response, status: StatusCode, says: &str) {
    assert_eq!(response.status(), status);
    if status == StatusCode::TOO_MANY_REQUESTS {
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    let error = body["error"].as_str().expect("{\"error\": ...}");
    assert!(error.contains(says), "{error:?} says {says:?}");
}

#[tokio::test]
async fn a_stream_past_its_subjects_cap_is_429_and_other_subjects_still_connect() {
    let api = Api::with(|c| c.max_streams_per_subject = 2);
    let thread = api.store.create_thread("t");
    let token = api.token(thread);
    let held = [
        open(&api, thread, &token).await,
        open(&api, thread, &token).await,
    ];
    assert!(held.iter().all(|r| r.status() == StatusCode::OK));
    // Fresh tokens for the same thread and role are the same subject.
    assert_refused(
        open(&api, thread, &api.token(thread)).await,
        StatusCode::TOO_MANY_REQUESTS,
        "subject",
    )
    .await;

    let keys = Keys::new(SECRET);
    let ada = keys.sign(&claims(thread, Some("ada")));
    assert_eq!(
        open(&api, thread, &ada).await.status(),
        StatusCode::OK,
        "another subject"
    );
    let agency = keys.mint(thread, Duration::from_secs(60), Role::Agency);
    assert_eq!(
        open(&api, thread, &agency).await.status(),
        StatusCode::OK,
        "another role"
    );
}

#[tokio::test]
async fn a_stream_past_its_threads_cap_is_429_whoever_asks() {
    let api = Api::with(|c| c.max_streams_per_thread = 2);
    let (thread, other) = (api.store.create_thread("t"), api.store.create_thread("u"));
    let keys = Keys::new(SECRET);
    let _held = [
        open(&api, thread, &keys.sign(&claims(thread, Some("a")))).await,
        open(&api, thread, &keys.sign(&claims(thread, Some("b")))).await,
    ];
    assert_refused(
        open(&api, thread, &keys.sign(&claims(thread, Some("c")))).await,
        StatusCode::TOO_MANY_REQUESTS,
        "thread",
    )
    .await;
    let elsewhere = open(&api, other, &api.token(other)).await;
    assert_eq!(elsewhere.status(), StatusCode::OK, "another thread");
}

#[tokio::test]
async fn a_closed_stream_gives_its_place_under_the_cap_back() {
    let api = Api::with(|c| c.max_streams_per_subject = 1);
    let thread = api.store.create_thread("t");
    let first = open(&api, thread, &api.token(thread)).await;
    assert_eq!(first.status(), StatusCode::OK);
    drop(first);
    let again = open(&api, thread, &api.token(thread)).await;
    assert_eq!(again.status(), StatusCode::OK);
}

fn pinned() -> Api {
    Api::with(|c| {
        c.jwt_pins = Pins {
            issuer: Some("https://app.example".into()),
            audience: Some("threadcast".into()),
        }
    })
}

#[tokio::test]
async fn a_token_with_the_pinned_issuer_and_audience_opens_the_stream() {
    let api = pinned();
    let thread = api.store.create_thread("t");
    let keys = Keys::pinned(
        SECRET,
        Pins {
            issuer: Some("https://app.example".into()),
            audience: Some("threadcast".into()),
        },
    );
    let token = keys.mint(thread, Duration::from_secs(60), Role::EndUser);
    assert_eq!(open(&api, thread, &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_without_the_pinned_audience_is_401() {
    let api = pinned();
    let thread = api.store.create_thread("t");
    let token = Keys::new(SECRET).sign(&Claims {
        iss: Some("https://app.example".into()),
        ..claims(thread, None)
    });
    assert_refused(
        open(&api, thread, &token).await,
        StatusCode::UNAUTHORIZED,
        "aud",
    )
    .await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_401() {
    let api = pinned();
    let thread = api.store.create_thread("t");
    let token = Keys::new(SECRET).sign(&Claims {
        iss: Some("https://evil.example".into()),
        aud: Some("threadcast".into()),
        ..claims(thread, None)
    });
    assert_refused(
        open(&api, thread, &token).await,
        StatusCode::UNAUTHORIZED,
        "another issuer",
    )
    .await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_401() {
    let api = pinned();
    let thread = api.store.create_thread("t");
    let token = Keys::new(SECRET).sign(&Claims {
        iss: Some("https://app.example".into()),
        aud: Some("another-service".into()),
        ..claims(thread, None)
    });
    assert_refused(
        open(&api, thread, &token).await,
        StatusCode::UNAUTHORIZED,
        "another audience",
    )
    .await;
}
