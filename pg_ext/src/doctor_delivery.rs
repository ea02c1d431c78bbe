//! `doctor()`'s rows about how a source's notifications leave the database: the delivery mode
//! and, under batched delivery, whether its batch worker is alive and how full its ring is.

use pgrx::pg_sys;
use threadcast_payload::DeliveryMode;

use crate::doctor::{check, Check};
use crate::ring;

/// A worker that has not shown a sign of life for this long is reported as not alive (it beats
/// at least once a second).
const SILENT_MICROS: i64 = 5_000_000;

/// The rows for a source registered with `delivery`.
pub fn checks(delivery: &str) -> Vec<Check> {
    if DeliveryMode::parse(delivery) != Some(DeliveryMode::Batched) {
        return vec![check(
            "delivery",
            true,
            "per transaction: each writer's commit sends its NOTIFYs (and takes PostgreSQL's notification commit lock)",
        )];
    }
    if !ring::available() {
        return vec![check(
            "delivery",
            false,
            "batched, but this server did not load threadcast when it started, so changes are announced per transaction: set shared_preload_libraries = 'threadcast' (and threadcast.batch_workers above 0) and restart PostgreSQL",
        )];
    }
    // SAFETY: MyDatabaseId is set in every backend.
    let database = unsafe { pg_sys::MyDatabaseId };
    let unslotted = ring::unslotted();
    let Some(slot) = ring::find(database) else {
        return vec![check(
            "delivery",
            unslotted == 0,
            if unslotted == 0 {
                "batched; no batch worker serves this database yet: one takes it at its next change"
                    .to_owned()
            } else {
                format!("batched, but {unslotted} transaction(s) found every batch worker serving another database (announced per transaction, or read by the broadcaster's anti-entropy check): raise threadcast.batch_workers")
            },
        )];
    };
    let stats = slot.stats();
    // SAFETY: reading the clock has no preconditions.
    let silent = unsafe { pg_sys::GetCurrentTimestamp() } - stats.heartbeat;
    let alive = stats.worker_pid != 0 && silent < SILENT_MICROS;
    let worker = if alive {
        format!(
            "batched: batch worker (pid {}) alive, last seen {} ms ago",
            stats.worker_pid,
            silent / 1000
        )
    } else {
        format!(
            "batched, but its batch worker has not been seen for {} s (the postmaster restarts it within seconds; see the server log)",
            silent / 1_000_000
        )
    };
    let delivery = check(
        "delivery",
        alive,
        format!(
            "{worker}; since the server started: {} transaction(s), {} change(s) handed over, {} announced in {} notification(s), {} resync(s), {} worker start(s)",
            stats.transactions,
            stats.events,
            stats.delivered,
            stats.notifications,
            stats.resyncs,
            stats.starts
        ),
    );
    let percent = |bytes: u64| bytes as f64 * 100.0 / stats.capacity.max(1) as f64;
    let use_detail = format!(
        "{:.1}% of {} kB in use (at most {:.1}% so far)",
        percent(stats.used),
        stats.capacity / 1024,
        percent(stats.high_water)
    );
    let ring = if stats.overflows == 0 {
        check("ring", true, format!("{use_detail}; no overflow"))
    } else {
        check(
            "ring",
            false,
            format!(
                "{use_detail}; {} overflow(s) dropped {} change(s), each followed by a resync notification: raise threadcast.ring_size (and restart)",
                stats.overflows, stats.dropped
            ),
        )
    };
    vec![delivery, ring]
}
