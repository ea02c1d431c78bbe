//! Dashboard streams against a real PostgreSQL and the real broadcaster, connected as its
//! least-privileged role: many threads on one stream, project-scoped tokens checked against
//! `public.feedback.project_id` (another project's thread, a forged claim, a card the token does
//! not cover, a thread moved away), an expired token mid-stream, a whole project followed, and a
//! broadcaster restart mid-conversation that loses and doubles nothing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_broadcaster::dashboard::{mint_projects, ScopeClaims};
use threadcast_tests::dashboard::{feedback_projects, project_token, Dashboard};
use threadcast_tests::{TestDb, TestServer};
use uuid::Uuid;

async fn server(db: &TestDb) -> TestServer {
    TestServer::start_with(db, |c| {
        c.projects = Some(feedback_projects());
        c.membership_ttl = Duration::from_millis(300);
        c.max_backoff = Duration::from_millis(300);
    })
    .await
}

/// Checks that the events `dashboard` received for each of `threads` are in strictly increasing
/// seq order (nothing twice), and that applying them leaves exactly the table's replies.
async fn assert_each_thread_matches_the_table(
    dashboard: &Dashboard,
    db: &TestDb,
    threads: &[Uuid],
) {
    for thread in threads {
        let seqs = dashboard.seqs(*thread);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "thread {thread}: each seq once, in order: {seqs:?}"
        );
        let mut shown = BTreeMap::new();
        for e in dashboard.events.iter().filter(|e| e.thread == *thread) {
            let id = e.data["id"].as_str().unwrap_or_default().to_owned();
            match e.kind.as_str() {
                "reply" => {
                    shown.insert(id, e.data["content"].as_str().unwrap().to_owned());
                }
                "delete" => {
                    shown.remove(&id);
                }
                _ => shown.clear(),
            }
        }
        let table: BTreeMap<String, String> = db
            .client
            .query(
                "SELECT id::text, content FROM feedback_replies WHERE feedback_id = $1",
                &[thread],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            shown, table,
            "thread {thread}: what the dashboard shows is the table"
        );
    }
}

#[tokio::test]
async fn a_project_token_streams_its_projects_threads_on_one_stream_and_nothing_of_another() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let (p, q) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ours = Vec::new();
    for _ in 0..5 {
        ours.push(db.create_thread_in(p).await);
    }
    let theirs = db.create_thread_in(q).await;
    db.insert_reply(ours[0], "before the stream").await;
    let token = project_token(&server, &[p]);
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    let mut follow: Vec<(Uuid, i64)> = ours.iter().map(|t| (*t, 0)).collect();
    follow.push((theirs, 0));
    let answer = dashboard.follow(&token, &follow).await;
    assert_eq!(
        answer["refused"][theirs.to_string()],
        "the thread is not in the token's projects",
        "{answer}"
    );
    assert_eq!(answer["following"].as_array().unwrap().len(), 5);
    dashboard.joined(&ours).await;

    for (i, thread) in ours.iter().enumerate() {
        db.insert_reply(*thread, &format!("card {i}")).await;
        db.insert_reply(theirs, &format!("their secret {i}")).await;
    }
    let edited = db.insert_reply(ours[1], "to edit").await;
    db.update_reply(edited, "edited").await;
    let gone = db.insert_reply(ours[2], "to delete").await;
    db.delete_reply(gone).await;
    let expected = 1 + 5 + 2 + 2;
    dashboard
        .until("every change of the project's threads", |d| {
            d.events.len() >= expected
        })
        .await;
    db.insert_reply(ours[4], "marker").await;
    dashboard
        .until("the marker", |d| {
            d.events.iter().any(|e| e.data["content"] == "marker")
        })
        .await;
    assert!(
        dashboard.events.iter().all(|e| e.thread != theirs),
        "nothing of another project's thread"
    );
    assert_each_thread_matches_the_table(&dashboard, &db, &ours).await;
    assert_eq!(server.metric("threadcast_dashboard_streams").await, 1.0);
    assert_eq!(server.metric("threadcast_dashboard_threads").await, 5.0);
}

#[tokio::test]
async fn a_forged_project_claim_is_refused() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let q = Uuid::new_v4();
    db.create_thread_in(q).await;
    let signed_elsewhere = mint_projects(
        &Keys::new(b"not the broadcaster's secret"),
        &[q.to_string()],
        Duration::from_secs(600),
        Role::Agency,
    );
    let refused = Dashboard::open(&server, &signed_elsewhere)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    // A genuine token for P with its claims swapped for Q's: the signature breaks.
    let genuine = project_token(&server, &[Uuid::new_v4()]);
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let claims = serde_json::to_vec(&json!({ "projects": [q], "exp": 4_000_000_000u64 })).unwrap();
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
    let refused = Dashboard::open(&server, &parts.join("."))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401, "{:?}", refused.body);
}

#[tokio::test]
async fn a_card_for_a_thread_the_token_does_not_cover_gets_nothing() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let p = Uuid::new_v4();
    let (own, other) = (db.create_thread_in(p).await, db.create_thread_in(p).await);
    // An end user's token: its one thread, whatever the project.
    let token = server.token(own);
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    let answer = dashboard.follow(&token, &[(own, 0), (other, 0)]).await;
    assert_eq!(
        answer["refused"][other.to_string()],
        "the token is for another thread"
    );
    let (status, _) = dashboard
        .change(&token, json!({ "projects": { p.to_string(): "live" } }))
        .await;
    assert_eq!(status, 403, "a thread token follows no project");
    db.insert_reply(other, "not for this card").await;
    db.insert_reply(own, "for this card").await;
    dashboard
        .until("its own reply", |d| !d.events.is_empty())
        .await;
    assert_eq!(dashboard.events.len(), 1);
    assert_eq!(dashboard.events[0].thread, own);
}

#[tokio::test]
async fn an_expired_token_ends_the_stream_and_nothing_after_it_is_sent() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let p = Uuid::new_v4();
    let thread = db.create_thread_in(p).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Past its exp, but within the 30 s of clock-skew leeway for 2 more seconds.
    let token = server.keys.sign_claims(&ScopeClaims {
        feedback_id: None,
        projects: Some(vec![p.to_string()]),
        exp: now - 28,
        role: Role::Agency,
    });
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    dashboard.follow(&token, &[(thread, 0)]).await;
    db.insert_reply(thread, "while valid").await;
    dashboard.until("the reply", |d| d.events.len() == 1).await;
    while dashboard.next().await.is_some() {}
    assert_eq!(
        dashboard.notes.last().map(|n| n.event.as_str()),
        Some("expired"),
        "the stream's last event"
    );
    assert_eq!(dashboard.events.len(), 1);
    let again = Dashboard::open(&server, &token)
        .await
        .err()
        .expect("refused");
    assert_eq!(again.status, 401);
}

#[tokio::test]
async fn a_thread_moved_to_another_project_is_revoked_and_gets_nothing_more() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let (p, q) = (Uuid::new_v4(), Uuid::new_v4());
    let (stays, moves) = (db.create_thread_in(p).await, db.create_thread_in(p).await);
    let token = project_token(&server, &[p]);
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    dashboard.follow(&token, &[(stays, 0), (moves, 0)]).await;
    dashboard.joined(&[stays, moves]).await;
    db.client
        .execute(
            "UPDATE feedback SET project_id = $1 WHERE id = $2",
            &[&q, &moves],
        )
        .await
        .unwrap();
    dashboard
        .until("the moved thread revoked", |d| {
            d.notes
                .iter()
                .any(|n| n.event == "revoked" && n.json()["thread"] == moves.to_string())
        })
        .await;
    db.insert_reply(moves, "now another project's").await;
    db.insert_reply(stays, "marker").await;
    dashboard
        .until("the marker", |d| !d.events.is_empty())
        .await;
    assert!(
        dashboard.events.iter().all(|e| e.thread == stays),
        "{:?}",
        dashboard.events
    );
    let answer = dashboard.follow(&token, &[(moves, 0)]).await;
    assert!(answer["refused"][moves.to_string()].is_string(), "{answer}");
}

#[tokio::test]
async fn following_a_project_brings_threads_created_after_the_stream_opened() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let p = Uuid::new_v4();
    let old = db.create_thread_in(p).await;
    let token = project_token(&server, &[p]);
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    let (status, answer) = dashboard
        .change(&token, json!({ "projects": { p.to_string(): "live" } }))
        .await;
    assert_eq!(status, 200, "{answer}");
    dashboard.joined(&[old]).await;
    let new = db.create_thread_in(p).await;
    db.insert_reply(new, "the first reply of a new thread")
        .await;
    db.insert_reply(new, "and its second").await;
    db.insert_reply(old, "news on the old one").await;
    dashboard
        .until("three replies", |d| d.events.len() >= 3)
        .await;
    assert_eq!(dashboard.seqs(new), [1, 2]);
    assert_eq!(dashboard.seqs(old), [1]);
}

#[tokio::test]
async fn a_broadcaster_restart_mid_conversation_loses_and_doubles_nothing_on_any_thread() {
    let db = TestDb::new().await;
    let first = server(&db).await;
    let addr = first.addr;
    let p = Uuid::new_v4();
    let mut threads = Vec::new();
    for _ in 0..8 {
        threads.push(db.create_thread_in(p).await);
    }
    let token = project_token(&first, &[p]);
    let mut dashboard = Dashboard::open(&first, &token).await.expect("open");
    dashboard
        .follow(&token, &threads.iter().map(|t| (*t, 0)).collect::<Vec<_>>())
        .await;
    dashboard.joined(&threads).await;
    let mut replies = Vec::new();
    for (i, t) in threads.iter().enumerate() {
        replies.push(db.insert_reply(*t, &format!("before {i}")).await);
    }
    dashboard
        .until("the first replies", |d| d.events.len() >= 8)
        .await;

    first.stop().await;
    while dashboard.next().await.is_some() {}
    // The conversation goes on while the broadcaster is away: new replies, an edit, a delete.
    for (i, t) in threads.iter().enumerate() {
        db.insert_reply(*t, &format!("while away {i}")).await;
    }
    db.update_reply(replies[0], "edited while away").await;
    db.delete_reply(replies[1]).await;

    let second = TestServer::start_at(&db, addr, |c| {
        c.projects = Some(feedback_projects());
    })
    .await;
    let cursor = dashboard.cursor();
    let before = std::mem::take(&mut dashboard.events);
    let mut resumed = Dashboard::open(&second, &token).await.expect("reopen");
    resumed.events = before;
    resumed
        .follow(
            &token,
            &threads.iter().map(|t| (*t, cursor[t])).collect::<Vec<_>>(),
        )
        .await;
    for (i, t) in threads.iter().enumerate() {
        db.insert_reply(*t, &format!("after {i}")).await;
    }
    let table_changes = 8 + 8 + 1 + 1 + 8;
    resumed
        .until("every change since the cursor", |d| {
            d.events.len() >= table_changes
        })
        .await;
    assert_each_thread_matches_the_table(&resumed, &db, &threads).await;
}

#[tokio::test]
async fn a_cursor_resumes_every_thread_through_updates_deletes_and_a_truncation() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let p = Uuid::new_v4();
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(db.create_thread_in(p).await);
    }
    let token = project_token(&server, &[p]);
    let mut dashboard = Dashboard::open(&server, &token).await.expect("open");
    dashboard
        .follow(&token, &threads.iter().map(|t| (*t, 0)).collect::<Vec<_>>())
        .await;
    let mut replies = Vec::new();
    for t in &threads {
        replies.push(db.insert_reply(*t, "first").await);
    }
    dashboard
        .until("the first replies", |d| d.events.len() == 3)
        .await;
    let cursor = dashboard.cursor();
    let before = std::mem::take(&mut dashboard.events);
    drop(dashboard);

    // While the client is away: an edit, a delete, then the table is truncated and a thread
    // starts again.
    db.update_reply(replies[0], "edited").await;
    db.delete_reply(replies[1]).await;
    db.client
        .batch_execute("TRUNCATE feedback_replies")
        .await
        .unwrap();
    db.insert_reply(threads[2], "after the truncation").await;

    let mut resumed = Dashboard::open(&server, &token).await.expect("reopen");
    resumed.events = before;
    resumed
        .follow(
            &token,
            &threads.iter().map(|t| (*t, cursor[t])).collect::<Vec<_>>(),
        )
        .await;
    resumed
        .until("every thread's reset and the new reply", |d| {
            threads
                .iter()
                .all(|t| d.events.iter().any(|e| e.thread == *t && e.kind == "reset"))
                && d.events
                    .iter()
                    .any(|e| e.data["content"] == "after the truncation")
        })
        .await;
    assert_each_thread_matches_the_table(&resumed, &db, &threads).await;
}
