//! The broadcaster's Prometheus metrics, on a `prometheus-client` registry of its own (not a
//! global one), so that several broadcasters in one process (tests, benchmarks) keep separate
//! counts. Names and help texts are registered once, here; the rest of the code holds typed
//! handles.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles to every metric the broadcaster keeps, and the renderer for `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Streams open right now.
    pub open_streams: Gauge,
    /// Events written to streams (catch-up and live).
    pub events_delivered: Counter,
    /// Notifications received on the LISTEN connection.
    pub notifications: Counter,
    /// Notifications dropped as not genuine: a bad or missing signature, or no payload at all.
    pub notifications_rejected: Counter,
    /// Genuine notifications that claimed nothing new for their thread (a replay, a duplicate, a
    /// seq a pending repair covers): dropped without waking the thread's task.
    pub notifications_stale: Counter,
    /// Notifications dropped because the listener's buffer was full; each overflow makes every
    /// live thread read the table instead.
    pub notifications_dropped: Counter,
    /// Times the LISTEN connection was re-established after it dropped.
    pub reconnects: Counter,
    /// Holes in a thread's sequence (missed notifications) repaired from the table.
    pub gap_fills: Counter,
    /// Rows read from the table because their notification left them out (large rows, keys-only).
    pub row_fetches: Counter,
    /// Subscribers disconnected because their buffer was full.
    pub slow_consumer_disconnects: Counter,
    /// Resync notices of batched delivery acted on (each has every live thread read the table).
    pub resyncs: Counter,
    /// The dashboard streams' own gauges and counters.
    pub dashboard: crate::dashboard::DashboardMetrics,
    /// Reads of the table by delivery, by purpose: `baseline` (a thread task's start), `repair`
    /// (holes, left-out rows, resyncs), `catch_up` (a resuming stream), `history`.
    pub table_reads: Family<[(&'static str, &'static str); 1], Counter>,
}

/// Why delivery read the table (the `purpose` label of `threadcast_table_reads_total`).
#[derive(Clone, Copy, Debug)]
pub enum Read {
    Baseline,
    Repair,
    CatchUp,
    History,
}

impl Metrics {
    /// Counts one read of the table for `purpose`.
    pub fn table_read(&self, purpose: Read) {
        let label = match purpose {
            Read::Baseline => "baseline",
            Read::Repair => "repair",
            Read::CatchUp => "catch_up",
            Read::History => "history",
        };
        self.table_reads.get_or_create(&[("purpose", label)]).inc();
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// Registers every metric on a fresh registry. Counters are rendered with `_total` added.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let events_delivered = counter("threadcast_events_delivered", "Events written to streams");
        let notifications = counter(
            "threadcast_notifications_received",
            "Notifications received on the LISTEN connection",
        );
        let notifications_rejected = counter(
            "threadcast_notifications_rejected",
            "Notifications dropped because their signature did not verify or they were malformed",
        );
        let notifications_stale = counter(
            "threadcast_notifications_stale",
            "Genuine notifications that claimed nothing new for their thread (replays, duplicates)",
        );
        let notifications_dropped = counter(
            "threadcast_notifications_dropped",
            "Notifications dropped because the listener's buffer was full (every live thread then reads the table)",
        );
        let reconnects = counter(
            "threadcast_listener_reconnects",
            "Times the LISTEN connection was re-established after it dropped",
        );
        let gap_fills = counter(
            "threadcast_gap_fills",
            "Missed notifications repaired by reading the table",
        );
        let row_fetches = counter(
            "threadcast_row_fetches",
            "Rows read from the table because their notification left them out",
        );
        let slow_consumer_disconnects = counter(
            "threadcast_slow_consumer_disconnects",
            "Subscribers disconnected because their buffer was full",
        );
        let resyncs = counter(
            "threadcast_resyncs",
            "Resync notices from the database acted on (batched delivery lost notifications)",
        );
        let table_reads = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "threadcast_table_reads",
            "Reads of the table by delivery, by purpose",
            table_reads.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "threadcast_open_streams",
            "Streams open right now",
            open_streams.clone(),
        );
        let dashboard = crate::dashboard::DashboardMetrics::register(&mut registry);
        Metrics {
            registry: Arc::new(registry),
            dashboard,
            open_streams,
            events_delivered,
            notifications,
            notifications_rejected,
            notifications_stale,
            notifications_dropped,
            reconnects,
            gap_fills,
            row_fetches,
            slow_consumer_disconnects,
            resyncs,
            table_reads,
        }
    }

    /// The current values in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_the_threadcast_prefix_from_the_start() {
        let metrics = Metrics::new();
        metrics.slow_consumer_disconnects.inc_by(2);
        let text = metrics.render();
        for line in [
            "threadcast_open_streams 0",
            "threadcast_events_delivered_total 0",
            "threadcast_notifications_received_total 0",
            "threadcast_listener_reconnects_total 0",
            "threadcast_gap_fills_total 0",
            "threadcast_row_fetches_total 0",
            "threadcast_slow_consumer_disconnects_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn two_instances_count_separately() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.reconnects.inc();
        assert!(
            b.render()
                .lines()
                .any(|l| l == "threadcast_listener_reconnects_total 0"),
            "{}",
            b.render()
        );
    }
}
