//! The dashboard stream on the in-memory store: many threads on one stream, the followed set
//! changed by POST, project-scoped tokens and their refusals, revocation, expiry, and a whole
//! project followed (new threads included).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_broadcaster::dashboard::{mint_projects, ScopeClaims};
use uuid::Uuid;

use crate::support::{get, Api, Frames, SECRET};

const P: &str = "11111111-1111-4111-8111-111111111111";
const Q: &str = "22222222-2222-4222-8222-222222222222";

fn project_token(projects: &[&str]) -> String {
    mint_projects(
        &Keys::new(SECRET),
        &projects.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        Duration::from_secs(3600),
        Role::Agency,
    )
}

/// A thread in `project`.
fn thread_in(api: &Api, project: &str) -> Uuid {
    let thread = api.store.create_thread("t");
    api.projects.set(&thread.to_string(), project);
    thread
}

/// Opens a dashboard stream with `token`; returns its frames and its id.
async fn open(api: &Api, token: &str) -> (Frames, String) {
    let response = api
        .send(get(
            "/api/dashboard/stream",
            &[("authorization", &format!("Bearer {token}"))],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = Frames::of(response);
    frames.until("event: open\ndata: ").await;
    let seen = frames.until("}\n\n").await;
    let data = seen.split_once("event: open\ndata: ").unwrap().1;
    let open: Value = serde_json::from_str(data.split_once("\n\n").unwrap().0).unwrap();
    (frames, open["stream"].as_str().unwrap().to_owned())
}

/// POSTs `body` to stream `id` with `token`.
async fn change(api: &Api, id: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post(format!("/api/dashboard/stream/{id}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, body) = api.answer(request).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The `(event, data)` pairs of the frames seen so far that are changes of threads.
fn changes(frames: &Frames) -> Vec<(String, Value)> {
    frames
        .seen
        .split("\n\n")
        .filter_map(|frame| {
            let (kind, data) = frame.strip_prefix("event: ")?.split_once("\ndata: ")?;
            matches!(kind, "reply" | "delete" | "reset")
                .then(|| (kind.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn one_stream_carries_many_threads_and_each_event_names_its_thread() {
    let api = Api::new();
    let threads: Vec<Uuid> = (0..3).map(|_| thread_in(&api, P)).collect();
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    let follow: serde_json::Map<String, Value> =
        threads.iter().map(|t| (t.to_string(), json!(0))).collect();
    let (status, body) = change(&api, &id, &token, json!({ "follow": follow })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["following"].as_array().unwrap().len(), 3, "{body}");
    for thread in &threads {
        frames
            .until(&format!(
                "event: joined\ndata: {{\"seq\":0,\"thread\":\"{thread}\"}}"
            ))
            .await;
    }
    for (i, thread) in threads.iter().enumerate() {
        api.store.insert(*thread, &format!("reply {i}"));
    }
    frames.until("\"reply 2\"").await;
    let (reply, _) = api.store.insert(threads[0], "second of thread 0");
    frames.until("\"second of thread 0\"").await;
    api.store.delete(reply).unwrap();
    frames
        .until(&format!(
            "event: delete\ndata: {{\"thread\":\"{}\",\"seq\":3",
            threads[0]
        ))
        .await;
    let seen: Vec<(String, String, i64)> = changes(&frames)
        .into_iter()
        .map(|(kind, data)| {
            (
                kind,
                data["thread"].as_str().unwrap().to_owned(),
                data["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let t = |i: usize| threads[i].to_string();
    for expected in [
        ("reply".to_owned(), t(0), 1),
        ("reply".to_owned(), t(1), 1),
        ("reply".to_owned(), t(2), 1),
        ("reply".to_owned(), t(0), 2),
        ("delete".to_owned(), t(0), 3),
    ] {
        assert_eq!(
            seen.iter().filter(|s| **s == expected).count(),
            1,
            "{expected:?} once in {seen:?}"
        );
    }
    let first = changes(&frames)
        .into_iter()
        .find(|(_, d)| d["thread"] == threads[0].to_string())
        .unwrap()
        .1;
    assert_eq!(
        first["data"]["content"], "reply 0",
        "data is the widget's row"
    );
    assert_eq!(first["data"]["thread_seq"], 1);
    assert_eq!(api.state.metrics.dashboard.streams.get(), 1);
    assert_eq!(api.state.metrics.dashboard.threads.get(), 3);
}

#[tokio::test]
async fn a_thread_of_another_project_or_unknown_is_refused_and_never_streamed() {
    let api = Api::new();
    let ours = thread_in(&api, P);
    let theirs = thread_in(&api, Q);
    let unknown = Uuid::new_v4();
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    let (status, body) = change(
        &api,
        &id,
        &token,
        json!({ "follow": { ours.to_string(): 0, theirs.to_string(): 0, unknown.to_string(): 0 } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["following"], json!([ours.to_string()]));
    assert_eq!(
        body["refused"][theirs.to_string()],
        "the thread is not in the token's projects"
    );
    assert!(body["refused"][unknown.to_string()].is_string(), "{body}");
    api.store.insert(theirs, "their secret");
    api.store.insert(ours, "ours");
    frames.until("\"ours\"").await;
    assert!(!frames.seen.contains("their secret"), "{}", frames.seen);
    assert!(!frames.seen.contains(&theirs.to_string()));
}

#[tokio::test]
async fn a_forged_project_claim_is_refused() {
    let api = Api::new();
    let theirs = thread_in(&api, Q);
    let genuine = project_token(&[P]);
    // The same token with its claims rewritten to name project Q: the signature no longer holds.
    let parts: Vec<&str> = genuine.split('.').collect();
    let claims = ScopeClaims {
        feedback_id: None,
        projects: Some(vec![Q.to_owned()]),
        exp: u64::MAX / 4,
        role: Role::Agency,
    };
    use base64::Engine;
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let signed_elsewhere = mint_projects(
        &Keys::new(b"another secret"),
        &[Q.to_owned()],
        Duration::from_secs(60),
        Role::Agency,
    );
    for token in [&forged, &signed_elsewhere] {
        let response = api
            .send(get(
                "/api/dashboard/stream",
                &[("authorization", &format!("Bearer {token}"))],
            ))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
    // Nor can a genuine P stream take Q's thread with the forged token.
    let (_frames, id) = open(&api, &genuine).await;
    let (status, _) = change(
        &api,
        &id,
        &forged,
        json!({ "follow": { theirs.to_string(): 0 } }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn changing_the_set_keeps_the_threads_that_stay_without_a_gap() {
    let api = Api::new();
    let (a, b, c) = (thread_in(&api, P), thread_in(&api, P), thread_in(&api, P));
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    change(
        &api,
        &id,
        &token,
        json!({ "follow": { a.to_string(): 0, b.to_string(): 0 } }),
    )
    .await;
    frames.until(&format!("\"thread\":\"{b}\"}}")).await;
    api.store.insert(a, "a1");
    frames.until("\"a1\"").await;
    // B leaves the page and C arrives, while A keeps changing.
    let (status, body) = change(
        &api,
        &id,
        &token,
        json!({ "follow": { c.to_string(): 0 }, "unfollow": [b.to_string()] }),
    )
    .await;
    assert_eq!(
        (status, &body["following"]),
        (StatusCode::OK, &json!([c.to_string()]))
    );
    api.store.insert(a, "a2");
    api.store.insert(b, "b-after-unfollow");
    api.store.insert(c, "c1");
    api.store.insert(a, "a3");
    frames.until("\"a3\"").await;
    frames.until("\"c1\"").await;
    let of_a: Vec<i64> = changes(&frames)
        .iter()
        .filter(|(_, d)| d["thread"] == a.to_string())
        .map(|(_, d)| d["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(of_a, [1, 2, 3], "A's replies, each once, none missing");
    assert!(!frames.seen.contains("b-after-unfollow"));
}

#[tokio::test]
async fn a_cursor_resumes_each_thread_after_its_own_seq() {
    let api = Api::new();
    let (a, b) = (thread_in(&api, P), thread_in(&api, P));
    for i in 1..=3 {
        api.store.insert(a, &format!("a{i}"));
        api.store.insert(b, &format!("b{i}"));
    }
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    // The client had A up to 2 and B up to 1 when its last connection dropped.
    change(
        &api,
        &id,
        &token,
        json!({ "follow": { a.to_string(): 2, b.to_string(): 1 } }),
    )
    .await;
    api.store.insert(a, "a4");
    frames.until("\"a4\"").await;
    frames.until("\"b3\"").await;
    let got: Vec<String> = changes(&frames)
        .iter()
        .map(|(_, d)| d["data"]["content"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["a3", "a4", "b2", "b3"], "in stream order: {got:?}");
}

#[tokio::test]
async fn a_thread_that_leaves_the_project_is_revoked_and_gets_nothing_more() {
    let api = Api::with(|c| c.membership_ttl = Duration::from_millis(100));
    let (stays, leaves) = (thread_in(&api, P), thread_in(&api, P));
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    change(
        &api,
        &id,
        &token,
        json!({ "follow": { stays.to_string(): 0, leaves.to_string(): 0 } }),
    )
    .await;
    api.store.insert(leaves, "before the move");
    frames.until("before the move").await;
    api.projects.set(&leaves.to_string(), Q);
    frames
        .until(&format!("event: revoked\ndata: {{\"reason\":\"the thread is not in the token's projects\",\"thread\":\"{leaves}\"}}"))
        .await;
    api.store.insert(leaves, "after the move");
    api.store.insert(stays, "marker");
    frames.until("marker").await;
    assert!(!frames.seen.contains("after the move"), "{}", frames.seen);
    assert_eq!(api.state.metrics.dashboard.threads.get(), 1);
    // Following it again is refused.
    let (_, body) = change(
        &api,
        &id,
        &token,
        json!({ "follow": { leaves.to_string(): 2 } }),
    )
    .await;
    assert!(body["refused"][leaves.to_string()].is_string(), "{body}");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let api = Api::new();
    let thread = thread_in(&api, P);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Accepted for 2 more seconds thanks to the 30 s of clock-skew leeway.
    let token = Keys::new(SECRET).sign_claims(&ScopeClaims {
        feedback_id: None,
        projects: Some(vec![P.to_owned()]),
        exp: now - 28,
        role: Role::Agency,
    });
    let (mut frames, id) = open(&api, &token).await;
    change(
        &api,
        &id,
        &token,
        json!({ "follow": { thread.to_string(): 0 } }),
    )
    .await;
    api.store.insert(thread, "while valid");
    frames.until("while valid").await;
    let seen = frames.end().await;
    assert!(
        seen.ends_with("event: expired\ndata: {}\n\n"),
        "the stream ends with `expired`: {seen}"
    );
}

#[tokio::test]
async fn a_change_with_a_token_of_another_scope_or_for_an_ended_stream_is_refused() {
    let api = Api::new();
    let thread = thread_in(&api, P);
    let token = project_token(&[P]);
    let (_frames, id) = open(&api, &token).await;
    let (status, _) = change(&api, &id, &project_token(&[P, Q]), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another scope");
    let (status, _) = change(&api, &id, &api.token(thread), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a thread token");
    let (status, _) = change(&api, "no-such-stream", &token, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = change(&api, &id, &token, json!({ "follow": { "nope": 0 } })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = change(&api, &id, &token, json!({ "follw": {} })).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
}

#[tokio::test]
async fn a_thread_token_opens_a_dashboard_stream_of_its_one_thread() {
    let api = Api::new();
    let (own, other) = (thread_in(&api, P), thread_in(&api, P));
    let token = api.token(own);
    let (mut frames, id) = open(&api, &token).await;
    let (_, body) = change(
        &api,
        &id,
        &token,
        json!({ "follow": { own.to_string(): 0, other.to_string(): 0 } }),
    )
    .await;
    assert_eq!(body["following"], json!([own.to_string()]));
    assert_eq!(
        body["refused"][other.to_string()],
        "the token is for another thread"
    );
    let (status, _) = change(&api, &id, &token, json!({ "projects": { P: "live" } })).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a thread token follows no project"
    );
    api.store.insert(other, "other");
    api.store.insert(own, "own");
    frames.until("\"own\"").await;
    assert!(!frames.seen.contains("\"other\""));
}

#[tokio::test]
async fn following_a_project_brings_its_threads_and_threads_new_to_it() {
    let api = Api::new();
    let old = thread_in(&api, P);
    api.store.insert(old, "old history");
    let elsewhere = thread_in(&api, Q);
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    let (status, body) = change(&api, &id, &token, json!({ "projects": { P: "live" } })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["following"], json!([old.to_string()]));
    frames
        .until(&format!(
            "event: joined\ndata: {{\"seq\":1,\"thread\":\"{old}\"}}"
        ))
        .await;
    let new = thread_in(&api, P);
    api.store.insert(new, "first of a new thread");
    api.store.insert(elsewhere, "not ours");
    api.store.insert(old, "news on the old one");
    frames.until("first of a new thread").await;
    frames.until("news on the old one").await;
    assert!(!frames.seen.contains("old history"), "live: no history");
    assert!(!frames.seen.contains("not ours"));
    let (status, body) = change(&api, &id, &token, json!({ "projects": { Q: "live" } })).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["refused_projects"][Q].is_string(), "{body}");
}

#[tokio::test]
async fn resuming_a_project_sends_known_threads_after_their_cursor_and_others_whole() {
    let api = Api::new();
    let (known, unknown) = (thread_in(&api, P), thread_in(&api, P));
    for i in 1..=2 {
        api.store.insert(known, &format!("known {i}"));
        api.store.insert(unknown, &format!("unknown {i}"));
    }
    let token = project_token(&[P]);
    let (mut frames, id) = open(&api, &token).await;
    // A reconnecting inbox: it had `known` up to seq 1, and never heard of `unknown`.
    let (status, _) = change(
        &api,
        &id,
        &token,
        json!({ "follow": { known.to_string(): 1 }, "projects": { P: "resume" } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    frames.until("\"known 2\"").await;
    frames.until("\"unknown 2\"").await;
    let got: Vec<String> = changes(&frames)
        .iter()
        .map(|(_, d)| d["data"]["content"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["known 2", "unknown 1", "unknown 2"], "{got:?}");
}

#[tokio::test]
async fn the_demo_dashboard_is_demo_mode_only_and_says_how_to_build_its_page() {
    let api = Api::new();
    for path in [
        "/demo/dashboard/",
        "/demo/dashboard/app.js",
        "/demo/dashboard/token?projectId=p",
    ] {
        assert_eq!(
            api.answer(get(path, &[])).await.0,
            StatusCode::NOT_FOUND,
            "{path} without demo mode"
        );
    }
    let api = Api::with(|c| c.demo = true);
    let (status, headers, _) = api.answer(get("/demo/dashboard/", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let (status, _, body) = api.answer(get("/demo/dashboard/app.js", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not built");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("npm run build:demo"),
        "{error}"
    );
    let (status, _, body) = api
        .answer(get(
            &format!("/demo/dashboard/token?projectId={P}&ttl=60"),
            &[],
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let token: Value = serde_json::from_slice(&body).unwrap();
    let claims: ScopeClaims = Keys::new(SECRET)
        .verify_as(token["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.projects, Some(vec![P.to_owned()]));
    assert_eq!(claims.role, Role::Agency);
}
