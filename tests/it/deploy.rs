//! The shipped nginx configuration (`deploy/nginx/threadcast.conf`) in front of two broadcaster
//! replicas, with TLS from a CA made by the test and a real Chromium told to trust it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use threadcast_tests::browser::Browser;
use threadcast_tests::proxied::Proxied;
use threadcast_tests::{assert_exactly_once, SseEvent, TestDb};
use uuid::Uuid;

/// More than HTTP/1.1's six connections per origin: only HTTP/2 keeps them all open at once.
const STREAMS: usize = 12;

/// Opens one EventSource per thread (`args[0]`: `[{thread, token}]`) on the page's origin; each
/// keeps its events, its `open`s and its errors in `window.tc`.
const OPEN_SOURCES: &str = r#"
    window.tc = { sources: [], events: [], opens: [], errors: [] };
    args[0].forEach(({ thread, token }, i) => {
        const es = new EventSource(`/api/widget/stream?feedbackId=${thread}&lastEventId=0&token=${encodeURIComponent(token)}`);
        tc.events[i] = []; tc.opens[i] = 0; tc.errors[i] = 0;
        es.onopen = () => { tc.opens[i] += 1; };
        es.onerror = () => { tc.errors[i] += 1; };
        for (const type of ['reply', 'delete']) {
            es.addEventListener(type, (e) => tc.events[i].push({ id: e.lastEventId, event: type, data: e.data }));
        }
        tc.sources.push(es);
    });
    return true;
"#;

/// What one EventSource received.
#[derive(Deserialize)]
struct Received {
    id: String,
    event: String,
    data: String,
}

async fn arrange(db: &TestDb, proxied: &Proxied, browser: &Browser) -> Vec<Uuid> {
    let mut threads = Vec::with_capacity(STREAMS);
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let thread = db.create_thread().await;
        threads.push(thread);
        let token = proxied.replicas[0].server.token(thread);
        streams.push(json!({ "thread": thread, "token": token }));
    }
    // Any page of the origin will do: the streams are same-origin requests from it.
    browser.goto(&proxied.nginx.url("/healthz")).await;
    browser.run_async(OPEN_SOURCES, vec![json!(streams)]).await;
    browser
        .wait_until(
            "every EventSource to be open",
            "tc.sources.every((es) => es.readyState === EventSource.OPEN) && tc.opens.every((n) => n >= 1)",
            Duration::from_secs(30),
        )
        .await;
    threads
}

/// Waits until every EventSource has an event with seq `seqs[i]` or later.
async fn wait_for_seqs(browser: &Browser, what: &str, seqs: &[i64]) {
    let condition = format!(
        "{}.every((seq, i) => tc.events[i].some((e) => Number(e.id) >= seq))",
        json!(seqs)
    );
    browser
        .wait_until(what, &condition, Duration::from_secs(30))
        .await;
}

async fn current_seqs(db: &TestDb, threads: &[Uuid]) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(threads.len());
    for thread in threads {
        seqs.push(db.current_seq(*thread).await);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_event_sources_are_all_live_at_once_over_one_http2_origin_through_nginx() {
    let db = TestDb::new().await;
    let proxied = Proxied::start(&db, 2).await;
    let browser = Browser::launch_trusting(&proxied.ca).await;
    let threads = arrange(&db, &proxied, &browser).await;

    let protocol: String = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2", "the browser talks HTTP/2 to nginx");

    for (i, thread) in threads.iter().enumerate() {
        db.insert_reply(*thread, &format!("live {i}")).await;
    }
    wait_for_seqs(
        &browser,
        "each reply on its stream",
        &current_seqs(&db, &threads).await,
    )
    .await;
    // Delivered while the streams stayed open: nothing held the events back until a response
    // ended (proxy buffering would), and no stream had to reconnect to get them.
    let (open, opens): (Vec<bool>, Vec<u32>) = (
        browser
            .eval("tc.sources.map((es) => es.readyState === EventSource.OPEN)")
            .await,
        browser.eval("tc.opens").await,
    );
    assert!(
        open.iter().all(|o| *o),
        "all {STREAMS} streams are still open: {open:?}"
    );
    assert_eq!(opens, vec![1; STREAMS], "no stream reconnected");
    let contents: Vec<Vec<String>> = browser
        .eval("tc.events.map((es) => es.map((e) => JSON.parse(e.data).content))")
        .await;
    for (i, got) in contents.iter().enumerate() {
        assert_eq!(
            got,
            &vec![format!("live {i}")],
            "stream {i} got its own thread's reply"
        );
    }
    let served = open_streams(&proxied).await;
    assert_eq!(
        served.iter().sum::<f64>(),
        STREAMS as f64,
        "the replicas hold the {STREAMS} streams between them: {served:?}"
    );
    assert!(
        served.iter().all(|n| *n > 0.0),
        "nginx spreads the streams over both replicas: {served:?}"
    );

    // nginx logs a request when it ends: each stream came over HTTP/2.
    browser
        .eval::<bool>("(tc.sources.forEach((es) => es.close()), true)")
        .await;
    // The browser's own account of each stream's protocol: its resource timing entry, which it
    // records once the response has ended.
    const STREAM_ENTRIES: &str = "performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/widget/stream'))";
    browser
        .wait_until(
            "a resource timing entry for every closed stream",
            &format!("{STREAM_ENTRIES}.length >= {STREAMS}"),
            Duration::from_secs(30),
        )
        .await;
    let protocols: Vec<String> = browser
        .eval(&format!("{STREAM_ENTRIES}.map((e) => e.nextHopProtocol)"))
        .await;
    assert_eq!(
        protocols,
        vec!["h2"; STREAMS],
        "the browser says every stream went over HTTP/2"
    );
    threadcast_tests::eventually("nginx to log the closed streams", || async {
        stream_lines(&proxied.nginx.access_log()).len() >= STREAMS
    })
    .await;
    let log = proxied.nginx.access_log();
    let lines = stream_lines(&log);
    assert!(
        lines.iter().all(|l| l.starts_with("HTTP/2.0 ")),
        "every stream request came over HTTP/2:\n{log}"
    );
    browser.quit().await;
}

/// Streams open on each replica, by its `threadcast_open_streams`.
async fn open_streams(proxied: &Proxied) -> Vec<f64> {
    futures::future::join_all(
        proxied
            .replicas
            .iter()
            .map(|r| r.server.metric("threadcast_open_streams")),
    )
    .await
}

fn stream_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("GET /api/widget/stream"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_mid_conversation_resumes_every_stream_through_the_other_exactly_once() {
    let db = TestDb::new().await;
    let mut proxied = Proxied::start(&db, 2).await;
    let browser = Browser::launch_trusting(&proxied.ca).await;
    let threads = arrange(&db, &proxied, &browser).await;
    let before = open_streams(&proxied).await;
    assert!(
        before.iter().all(|n| *n > 0.0),
        "both replicas serve streams before one dies: {before:?}"
    );

    // The conversation goes on from another connection while replica 0 dies.
    let writer_db = db.connect().await;
    let conversation = {
        let threads = threads.clone();
        tokio::spawn(async move {
            for round in 0..8 {
                for thread in &threads {
                    threadcast_tests::db::insert_reply(
                        &writer_db,
                        *thread,
                        &format!("round {round}"),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Kill it once every stream has had some of the conversation.
    threadcast_tests::eventually("the conversation to start", || async {
        current_seqs(&db, &threads).await.iter().all(|s| *s >= 2)
    })
    .await;
    let killed = proxied.replicas.remove(0);
    killed.kill().await;
    conversation.await.expect("the conversation is written");

    // A last reply per thread: once every stream has it, anything doubled or late came before.
    for thread in &threads {
        db.insert_reply(*thread, "the last reply").await;
    }
    wait_for_seqs(
        &browser,
        "every stream to resume through the live replica",
        &current_seqs(&db, &threads).await,
    )
    .await;
    let survivor = &proxied.replicas[0].server;
    assert_eq!(
        survivor.metric("threadcast_open_streams").await,
        STREAMS as f64,
        "the live replica now holds every stream"
    );
    let opens: Vec<u32> = browser.eval("tc.opens").await;
    let resumed = opens.iter().filter(|n| **n > 1).count();
    assert_eq!(
        resumed as f64, before[0],
        "exactly the streams of the killed replica reconnected: opens {opens:?}, before {before:?}"
    );

    let received: Vec<Vec<Received>> = browser.eval("tc.events").await;
    for (i, (thread, events)) in threads.iter().zip(received).enumerate() {
        let events: Vec<SseEvent> = events
            .into_iter()
            .map(|e| SseEvent {
                id: Some(e.id),
                event: e.event,
                data: e.data,
            })
            .collect();
        assert_exactly_once(&format!("EventSource {i}"), &events, &db, *thread).await;
    }
    browser.quit().await;
}

#[tokio::test]
async fn nginx_passes_the_real_client_address_and_scheme_and_keeps_metrics_private() {
    use threadcast_tests::capture::Capture;
    use threadcast_tests::nginx::Nginx;
    use threadcast_tests::pki::TestCa;
    use threadcast_tests::scratch::ScratchDir;

    let certs = ScratchDir::new("threadcast-capture-certs");
    let ca = TestCa::new(certs.path(), "capture");
    let cert = ca.server_cert("nginx", &["localhost"]);
    let upstream = Capture::start().await;
    let nginx = Nginx::start(&[upstream.addr], &cert);

    // A client that forges the forwarding headers, as anyone can.
    let response = threadcast_tests::https::request(
        nginx.port,
        &ca.cert_path(),
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\nX-Real-IP: 203.0.113.9\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        upstream.header("x-real-ip"),
        vec![Some("127.0.0.1".to_owned())],
        "X-Real-IP is the address nginx saw, whatever the client claimed"
    );
    assert_eq!(
        upstream.header("x-forwarded-for"),
        vec![Some("203.0.113.9, 127.0.0.1".to_owned())],
        "X-Forwarded-For ends with the address nginx saw"
    );
    assert_eq!(
        upstream.header("x-forwarded-proto"),
        vec![Some("https".to_owned())]
    );
    assert_eq!(upstream.header("host"), vec![Some("localhost".to_owned())]);

    let response = threadcast_tests::https::request(
        nginx.port,
        &ca.cert_path(),
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert_eq!(
        upstream.count(),
        1,
        "/metrics never reaches a replica through the proxy"
    );
}
