//! Making lost notifications impossible to miss under batched delivery, where a committed change
//! can go unannounced: its database's ring overflowed, or the database crashed between the
//! commit and the batch worker's NOTIFY.
//!
//! - A **resync notice** (signed, from the batch worker after an overflow or when it starts) has
//!   every live thread read the table, as a reconnect of the LISTEN connection does. Notices are
//!   coalesced: at most one resync a second, and one that arrives meanwhile is done at the end of
//!   that second rather than dropped, so a flood of replayed notices costs one table read per
//!   live thread per second at most.
//! - The **anti-entropy sweep** reads, every `period`, the counters of every thread that has
//!   subscribers, in batches of [`SWEEP_BATCH`], and hands each thread its counter as a notice
//!   to be read from the table. A thread whose counter is above what it forwarded repairs up to
//!   it; the others ignore it. So a lost tail (the last changes of a thread, with no later
//!   notification to reveal the hole) reaches its subscribers within one period plus a read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::msg::{Notice, NoticeBody};
use super::Delivery;

/// The shortest time between two resyncs of every live thread.
pub(crate) const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Threads whose counters one sweep query reads.
pub(crate) const SWEEP_BATCH: usize = 500;

/// Coalesces resync notices into at most one resync of every live thread per [`RESYNC_EVERY`].
#[derive(Default)]
pub(crate) struct ResyncGate {
    /// A resync is scheduled and has not run yet: later notices ride on it.
    scheduled: AtomicBool,
    last: Mutex<Option<Instant>>,
}

impl Delivery {
    /// Takes a genuine resync notice: every live thread reads the table, now or, if a resync
    /// ran less than [`RESYNC_EVERY`] ago, once that second is over.
    pub(crate) fn resync_soon(&self) {
        let gate = self.resyncs.clone();
        if gate.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let last = *gate.last.lock().unwrap_or_else(|e| e.into_inner());
        let at = last.map_or_else(Instant::now, |l| l + RESYNC_EVERY);
        let delivery = self.clone();
        let shutdown = self.ctx.shutdown.clone();
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            // Cleared before the resync, so that a notice arriving from now on schedules another:
            // the changes it speaks of may have committed after this resync's reads began.
            gate.scheduled.store(false, Ordering::SeqCst);
            *gate.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            delivery.ctx.metrics.resyncs.inc();
            tracing::info!(
                threads = delivery.thread_count(),
                "the database announced lost notifications; reading every live thread"
            );
            delivery.resync_all();
        });
    }

    /// Starts the anti-entropy sweep: every `period`, while the source is batched, each thread
    /// with subscribers learns its counter and repairs up to it if it is behind. Runs until
    /// shutdown.
    pub fn spawn_anti_entropy(&self, period: Duration) {
        let delivery = self.clone();
        let shutdown = self.ctx.shutdown.clone();
        self.ctx.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => delivery.sweep().await,
                }
            }
        });
    }

    /// One anti-entropy pass over the threads that have subscribers.
    pub(crate) async fn sweep(&self) {
        // Only a batch worker can leave a tail unannounced; a per-transaction source (which
        // `enable()` may switch to while this runs) loses notifications only with the LISTEN
        // connection, and its reconnect resyncs.
        if !self.trust.batched() {
            return;
        }
        let threads = self.ctx.registry.live_threads();
        for batch in threads.chunks(SWEEP_BATCH) {
            let counters = match self.ctx.store.current_seqs(batch).await {
                Ok(counters) => counters,
                Err(error) => {
                    // The database is away; the reconnect's resync covers what this would have.
                    tracing::debug!(error = %crate::error::chain(&error), "anti-entropy sweep skipped");
                    return;
                }
            };
            for (thread, seq) in counters {
                if seq > 0 {
                    // A thread that already forwarded `seq` finds the notice stale and drops it.
                    let _ = self.ctx.registry.offer(
                        &thread,
                        Notice {
                            seq,
                            body: NoticeBody::Fetch,
                        },
                    );
                }
            }
        }
    }
}

/// A shared gate, one per [`Delivery`].
pub(crate) fn gate() -> Arc<ResyncGate> {
    Arc::new(ResyncGate::default())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::delivery::{Settings, Start, Step};
    use crate::metrics::Metrics;
    use crate::source::Source;
    use crate::store::MemStore;

    fn rig() -> (Arc<MemStore>, Delivery, CancellationToken) {
        rig_of(Source {
            batched: true,
            ..MemStore::source(false)
        })
    }

    fn rig_of(source: Source) -> (Arc<MemStore>, Delivery, CancellationToken) {
        // A store that announces nothing: every change is a lost notification.
        let store = Arc::new(MemStore::new(source.clone()));
        let shutdown = CancellationToken::new();
        let delivery = Delivery::new(
            store.clone(),
            &source,
            Settings::default(),
            Metrics::new(),
            shutdown.clone(),
            TaskTracker::new(),
        );
        (store, delivery, shutdown)
    }

    async fn next_seq(feed: &mut crate::delivery::Feed) -> i64 {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("an event within 10 s")
            {
                Some(Step::Event(event)) => return event.seq,
                Some(Step::Joined) => continue,
                None => panic!("the feed ended"),
            }
        }
    }

    async fn joined(feed: &mut crate::delivery::Feed) {
        assert!(matches!(feed.next().await, Some(Step::Joined)));
    }

    #[tokio::test]
    async fn a_lost_tail_reaches_the_subscriber_at_the_next_sweep() {
        let (store, delivery, shutdown) = rig();
        let thread = store.create_thread("t");
        let mut feed = delivery.feed(&thread.to_string(), Start::Live);
        joined(&mut feed).await;
        store.insert(thread, "one");
        store.insert(thread, "two");
        delivery.spawn_anti_entropy(Duration::from_millis(50));
        assert_eq!(next_seq(&mut feed).await, 1);
        assert_eq!(next_seq(&mut feed).await, 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_source_switched_to_batched_under_a_running_broadcaster_is_swept() {
        let per_transaction = MemStore::source(false);
        let (store, delivery, shutdown) = rig_of(per_transaction.clone());
        let thread = store.create_thread("t");
        let mut feed = delivery.feed(&thread.to_string(), Start::Live);
        joined(&mut feed).await;
        delivery.spawn_anti_entropy(Duration::from_millis(50));
        store.insert(thread, "one");
        // `enable(..., delivery => 'batched')` run again; the listener follows the registration.
        delivery.set_source(&Source {
            batched: true,
            ..per_transaction
        });
        assert_eq!(next_seq(&mut feed).await, 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn resync_notices_are_coalesced_and_none_is_dropped() {
        let (store, delivery, shutdown) = rig();
        let thread = store.create_thread("t");
        let mut feed = delivery.feed(&thread.to_string(), Start::Live);
        joined(&mut feed).await;
        store.insert(thread, "one");
        for _ in 0..100 {
            delivery.resync_soon();
        }
        assert_eq!(next_seq(&mut feed).await, 1);
        // A change that committed after the first resync began, then a notice for it: served by
        // the coalesced resync a second later, not lost.
        store.insert(thread, "two");
        delivery.resync_soon();
        assert_eq!(next_seq(&mut feed).await, 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_batch_delivers_each_of_its_changes_and_a_forged_resync_is_counted_not_obeyed() {
        let (store, delivery, shutdown) = rig();
        delivery
            .refresh_keys()
            .await
            .expect("the store's keys are readable");
        let thread = store.create_thread("t");
        let mut feed = delivery.feed(&thread.to_string(), Start::Live);
        joined(&mut feed).await;
        let mut batch = threadcast_payload::BatchWriter::new();
        for content in ["one", "two", "three"] {
            let (_, payload) = store.insert(thread, content);
            assert!(batch.push(&payload));
        }
        let text = batch.take().expect("a batch of three");
        delivery.notify("threadcast", &text).await;
        assert_eq!(
            [
                next_seq(&mut feed).await,
                next_seq(&mut feed).await,
                next_seq(&mut feed).await
            ],
            [1, 2, 3]
        );

        let forger = threadcast_payload::Key {
            id: MemStore::KEY.id,
            secret: [8; threadcast_payload::KEY_BYTES],
        };
        let forged = threadcast_payload::Resync::sign(
            threadcast_payload::ResyncReason::Overflow,
            1,
            &forger,
        );
        delivery.notify("threadcast", &forged).await;
        assert_eq!(delivery.ctx.metrics.notifications_rejected.get(), 1);
        let genuine = threadcast_payload::Resync::sign(
            threadcast_payload::ResyncReason::Overflow,
            2,
            &MemStore::KEY,
        );
        delivery.notify("threadcast", &genuine).await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while delivery.ctx.metrics.resyncs.get() < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the genuine resync is acted on");
        assert_eq!(
            delivery.ctx.metrics.resyncs.get(),
            1,
            "the forged one was not"
        );
        shutdown.cancel();
    }
}
