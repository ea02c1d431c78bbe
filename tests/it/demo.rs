//! Demo mode on a real schema: which thread `/demo/thread` shows, from `public.feedback` when the
//! broadcaster may read it and from the served table otherwise. (The rest of demo mode is tested
//! on the in-memory store, `broadcaster/tests/http/demo.rs`; the page itself in a browser.)

use reqwest::redirect::Policy;
use serde_json::Value;
use threadcast_tests::{TestDb, TestServer};

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

async fn demo_server(db: &TestDb) -> TestServer {
    TestServer::start_with(db, |c| c.demo = true).await
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
