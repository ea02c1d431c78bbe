//! A plain `EventSource` in a real browser (headless Chromium), deduplicating nothing: the
//! server alone must deliver each change once, in order, none missing, through a broadcaster
//! restart before the stream's first event, a cut LISTEN connection and writes meanwhile. What
//! the browser dispatched is checked against the table with the same audit as every fault test.

use std::time::Duration;

use threadcast_tests::browser::Browser;
use threadcast_tests::exactly_once::{assert_exactly_once_in, REPLIES};
use threadcast_tests::{db, eventually, SseEvent, TestDb, TestServer};

/// Anything after the page is live: a reconnect, events arriving.
const ARRIVAL: Duration = Duration::from_secs(30);

fn quick(config: &mut threadcast_broadcaster::Config) {
    config.retry = Duration::from_millis(200);
    config.max_backoff = Duration::from_millis(500);
}

/// Every event the page's EventSource dispatched, in order.
async fn dispatched(browser: &Browser) -> Vec<SseEvent> {
    let events: Vec<(String, String, String)> = browser
        .eval("window.__events.map((e) => [e.id, e.event, e.data])")
        .await;
    events
        .into_iter()
        .map(|(id, event, data)| SseEvent {
            id: Some(id),
            event,
            data,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_event_source_gets_each_change_once_across_a_restart_and_a_listen_cut() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, quick).await;
    let thread = db.create_thread().await;
    for i in 1..=2 {
        db.insert_reply(thread, &format!("before the page {i}"))
            .await;
    }
    let browser = Browser::launch().await;
    // A page of the broadcaster's own origin, so that the stream needs no CORS.
    browser.goto(&server.url("/healthz")).await;
    let url = server.stream_url(thread, &format!("&token={}", server.token(thread)));
    let opened: bool = browser
        .eval(&format!(
            "(() => {{
                window.__events = [];
                window.__opens = 0;
                window.__joined = [];
                const es = new EventSource({url:?});
                es.onopen = () => window.__opens++;
                es.addEventListener('joined', (e) => window.__joined.push(e.lastEventId));
                for (const type of ['reply', 'delete', 'reset']) {{
                    es.addEventListener(type, (e) =>
                        window.__events.push({{ id: e.lastEventId, event: type, data: e.data }}));
                }}
                return true;
            }})()"
        ))
        .await;
    assert!(opened);
    browser
        .wait_until(
            "the stream to say where it joined",
            "window.__joined.length === 1",
            ARRIVAL,
        )
        .await;
    let joined: Vec<String> = browser.eval("window.__joined").await;
    assert_eq!(joined, ["2"], "it joined after the two earlier replies");

    // Down before the stream's first event: EventSource resumes from the position the first
    // frame gave it, or it would start live again and miss what committed meanwhile.
    let addr = server.addr;
    server.stop().await;
    for i in 1..=2 {
        db.insert_reply(thread, &format!("while the broadcaster is down {i}"))
            .await;
    }
    let server = TestServer::start_at(&db, addr, quick).await;
    browser
        .wait_until(
            "EventSource to reconnect by itself",
            "window.__opens === 2",
            ARRIVAL,
        )
        .await;
    db.insert_reply(thread, "after the restart").await;

    // The LISTEN connection cut, with writes while it is re-established.
    assert_eq!(db.terminate_listener().await, 1);
    let writer = db.connect().await;
    for i in 1..=3 {
        db::insert_reply(&writer, thread, &format!("while listening again {i}")).await;
    }
    eventually("the broadcaster to listen again", || async {
        server.readyz().await == 200
    })
    .await;
    db.insert_reply(thread, "the last reply").await;

    browser
        .wait_until(
            "the last reply to arrive",
            "window.__events.some((e) => e.data.includes('the last reply'))",
            ARRIVAL,
        )
        .await;
    let events = dispatched(&browser).await;
    assert_exactly_once_in(
        "a plain EventSource started live",
        &events,
        &db.client,
        REPLIES,
        &thread.to_string(),
        2,
    )
    .await;
    assert_eq!(events.len(), 7, "every change after its join point, once");
    browser.quit().await;
}
