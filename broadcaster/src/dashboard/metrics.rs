//! The dashboard's metrics, registered on the broadcaster's registry beside the widget's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Gauges and counters of the dashboard streams.
#[derive(Clone, Debug, Default)]
pub struct DashboardMetrics {
    /// Dashboard streams open right now (each is also counted in `threadcast_open_streams`).
    pub streams: Gauge,
    /// Threads followed by open dashboard streams, summed over the streams.
    pub threads: Gauge,
    /// Threads dropped from a stream because the token no longer covers them.
    pub revoked: Counter,
}

impl DashboardMetrics {
    /// Registers every metric on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = DashboardMetrics::default();
        registry.register(
            "threadcast_dashboard_streams",
            "Dashboard streams open right now",
            metrics.streams.clone(),
        );
        registry.register(
            "threadcast_dashboard_threads",
            "Threads followed by the open dashboard streams, summed over the streams",
            metrics.threads.clone(),
        );
        registry.register(
            "threadcast_dashboard_revoked",
            "Threads dropped from dashboard streams because the token no longer covers them",
            metrics.revoked.clone(),
        );
        metrics
    }
}
