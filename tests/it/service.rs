//! The service as a whole on a real database: the operations endpoints with a real LISTEN
//! connection behind them, and no start on a table that is not enabled. (The HTTP status matrix,
//! CORS and the connection limit are tested on the in-memory store: `broadcaster/tests/http/`.)

use reqwest::StatusCode;
use threadcast_tests::server::SECRET;
use threadcast_tests::{TestDb, TestServer};

#[tokio::test]
async fn operations_endpoints_report_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "counted").await;
    stream.next_event().await;

    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(server.readyz().await, 200, "ready while LISTEN is in force");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "threadcast_open_streams 1",
        "threadcast_events_delivered_total 1",
        "threadcast_notifications_received_total 1",
        "threadcast_listener_reconnects_total 0",
        "threadcast_gap_fills_total 0",
        "threadcast_slow_consumer_disconnects_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == name),
            "/metrics lacks `{name}`:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_broadcaster_refuses_to_start_for_a_table_that_is_not_enabled() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE public.plain (id int)")
        .await
        .unwrap();
    let mut config = threadcast_broadcaster::Config::new(db.reader_url.clone(), SECRET);
    config.source = "public.plain".into();

    let error = threadcast_broadcaster::Broadcaster::start(config, Default::default())
        .await
        .err()
        .expect("starting on a table that is not enabled fails");

    assert!(
        error.to_string().contains("threadcast.enable"),
        "the error says what to do: {error}"
    );
}
