//! The black-box test harness: a real PostgreSQL cluster with the `threadcast` extension
//! ([`Cluster`], from `threadcast-harness`, which `cargo xtask` shares; [`TestDb`]), the real broadcaster served on a loopback port ([`TestServer`]), and
//! a real HTTP client reading the SSE wire format ([`SseStream`]), a client that reconnects like
//! EventSource ([`Subscriber`]), a writer that retries through outages ([`Writer`]), and the one
//! delivery check every fault test ends with ([`assert_exactly_once`]).
//!
//! ```no_run
//! # async fn example() {
//! use threadcast_tests::{TestDb, TestServer};
//! let db = TestDb::new().await;
//! let server = TestServer::start(&db).await;
//! let thread = db.create_thread().await;
//! let mut stream = server.open(thread).await;
//! db.insert_reply(thread, "hello").await;
//! assert_eq!(stream.next_event().await.content(), "hello");
//! # }
//! ```

pub mod attacker;
pub mod browser;
pub mod capture;
pub mod dashboard;
pub mod db;
pub mod exactly_once;
pub mod https;
pub mod proxied;
pub mod relay;
pub mod server;
pub mod sse;
pub mod subscriber;
pub mod tls_cluster;
pub mod writer;

use std::future::Future;
use std::time::Duration;

pub use db::TestDb;
pub use exactly_once::{
    assert_every_subscriber_got_exactly_once, assert_exactly_once, assert_exactly_once_in,
};
pub use server::TestServer;
pub use sse::{SseEvent, SseItem, SseStream};
pub use subscriber::Subscriber;
pub use threadcast_harness::Cluster;
/// The deployment tests' nginx, CA and scratch folders live in the harness, which
/// `cargo xtask bench proxy` shares.
pub use threadcast_harness::{nginx, pki, scratch};
pub use writer::Writer;

/// How long [`eventually`] waits before failing.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Waits until `condition` holds, checking every 20 ms; panics naming `what` after
/// [`EVENTUALLY`]. For conditions that cannot be awaited directly (metrics, readiness).
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {EVENTUALLY:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the broadcaster's logs to the test output when `RUST_LOG` asks for them; silent otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Defines a test once and runs it in both delivery modes: `name::per_transaction` (the writer's
/// commit NOTIFYs) and `name::batched` (the batch worker does). The body gets the mode as the
/// parameter it names; the attribute (`#[tokio::test(...)]`) applies to both.
///
/// ```text
/// in_both_modes! {
///     #[tokio::test]
///     async fn a_reply_arrives(mode) {
///         let db = TestDb::with_delivery(mode).await;
///     }
/// }
/// ```
#[macro_export]
macro_rules! in_both_modes {
    ($(#[$attr:meta])* async fn $name:ident($mode:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($mode: ::threadcast_payload::DeliveryMode) $body

            $(#[$attr])*
            async fn per_transaction() {
                body(::threadcast_payload::DeliveryMode::Transaction).await
            }

            $(#[$attr])*
            async fn batched() {
                body(::threadcast_payload::DeliveryMode::Batched).await
            }
        }
    };
}

/// The value of the series `name` (labels included) in `/metrics` text, or 0 if absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The seqs of `events`, for assertions about order.
pub fn seqs(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(SseEvent::seq).collect()
}
