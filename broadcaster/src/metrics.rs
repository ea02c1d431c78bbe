//! The broadcaster's Prometheus metrics, registered on a recorder of its own (not the global
//! one), so that several broadcasters in one process (tests, benchmarks) keep separate counts.

use metrics::{Counter, Gauge, Key, KeyName, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Handles to every metric the broadcaster keeps, and the renderer for `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    /// Streams open right now.
    pub open_streams: Gauge,
    /// Events written to streams (catch-up and live).
    pub events_delivered: Counter,
    /// Notifications received on the LISTEN connection.
    pub notifications: Counter,
    /// Times the LISTEN connection was re-established after it dropped.
    pub reconnects: Counter,
    /// Holes in a thread's sequence (missed notifications) repaired from the table.
    pub gap_fills: Counter,
    /// Rows read from the table because their notification left them out (large rows, keys-only).
    pub row_fetches: Counter,
    /// Subscribers disconnected because their buffer was full.
    pub slow_consumer_disconnects: Counter,
}

impl Metrics {
    /// Registers every metric on a fresh recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(
                KeyName::from(name),
                Some(Unit::Count),
                SharedString::from(help),
            );
            recorder.register_counter(&Key::from_static_name(name), &metadata)
        };
        let metrics = Metrics {
            handle: recorder.handle(),
            open_streams: {
                let name = "threadcast_open_streams";
                recorder.describe_gauge(KeyName::from(name), None, "Streams open right now".into());
                recorder.register_gauge(&Key::from_static_name(name), &metadata)
            },
            events_delivered: counter(
                "threadcast_events_delivered_total",
                "Events written to streams",
            ),
            notifications: counter(
                "threadcast_notifications_received_total",
                "Notifications received on the LISTEN connection",
            ),
            reconnects: counter(
                "threadcast_listener_reconnects_total",
                "Times the LISTEN connection was re-established after it dropped",
            ),
            gap_fills: counter(
                "threadcast_gap_fills_total",
                "Missed notifications repaired by reading the table",
            ),
            row_fetches: counter(
                "threadcast_row_fetches_total",
                "Rows read from the table because their notification left them out",
            ),
            slow_consumer_disconnects: counter(
                "threadcast_slow_consumer_disconnects_total",
                "Subscribers disconnected because their buffer was full",
            ),
        };
        // Every series shows from the start, so that dashboards and tests need not guess.
        metrics.open_streams.set(0.0);
        for c in [
            &metrics.events_delivered,
            &metrics.notifications,
            &metrics.reconnects,
            &metrics.gap_fills,
            &metrics.row_fetches,
            &metrics.slow_consumer_disconnects,
        ] {
            c.increment(0);
        }
        metrics
    }

    /// The current values in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
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
    fn every_metric_renders_with_the_threadcast_prefix() {
        let metrics = Metrics::new();
        metrics.slow_consumer_disconnects.increment(2);
        let text = metrics.render();
        for name in [
            "threadcast_open_streams",
            "threadcast_events_delivered_total",
            "threadcast_notifications_received_total",
            "threadcast_listener_reconnects_total",
            "threadcast_gap_fills_total",
            "threadcast_slow_consumer_disconnects_total 2",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn two_instances_count_separately() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.reconnects.increment(1);
        assert!(
            b.render()
                .contains("threadcast_listener_reconnects_total 0"),
            "{}",
            b.render()
        );
    }
}
