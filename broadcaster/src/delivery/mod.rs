//! Exactly-once delivery: every committed change of a thread reaches each of its open streams
//! once, in seq order, whatever is lost on the way (notifications during an outage, rows too
//! large for NOTIFY) and whenever the stream joined.
//!
//! The path is `listener → delivery → stream`: the listener hands each notification to
//! [`Delivery::notify`]; `trust.rs` decides what it is trusted for; `registry.rs` offers it to its
//! thread's inbox (`inbox.rs`), which keeps what it is worth (bounded, coalesced); the thread's
//! task (`thread.rs`) forwards it, or repairs from the [`Store`] what it cannot carry, into each
//! subscriber's bounded queue (`queue.rs`); a stream's [`Feed`] does the subscribe/catch-up
//! hand-over (`handover.rs`) and yields the events to write. Seq bookkeeping and table paging are
//! `cursor.rs`'s. Under batched delivery a notification may carry several changes, or a resync
//! notice; `loss.rs` handles those notices and the anti-entropy sweep.
//!
//! Module graph (no cycles):
//! `mod → {registry, thread, trust, handover, subscription, inbox, loss}`, `loss → {msg, registry}`,
//! `thread → {registry, cursor, trust, msg, inbox, queue}`, `handover → {cursor, subscription}`,
//! `subscription → {registry, msg, queue}`, `registry → {inbox, msg}`, `inbox → msg`.

mod cursor;
mod handover;
mod inbox;
mod loss;
mod msg;
pub(crate) mod queue;
mod registry;
mod subscription;
mod thread;
mod trust;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use threadcast_payload::{Notification, PayloadError};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handover::{Feed, Start, Step};
pub use subscription::Subscription;

pub(crate) use thread::backoff;

use crate::metrics::Metrics;
use crate::source::Source;
use crate::store::{PageSize, Store, StoreError, PAGE_BYTES, PAGE_ROWS};
use inbox::Offered;
use msg::Control;
use registry::Registry;
use thread::ThreadContext;
use trust::{Trust, Verdict};

/// How delivery is tuned.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Events one subscriber may have queued before it is disconnected as too slow.
    pub subscriber_buffer: usize,
    /// The longest wait between two attempts to read the table.
    pub max_backoff: Duration,
    /// Rows per table read.
    pub page_rows: i32,
    /// Bytes of row data per table read (a read brings at least one row).
    pub page_bytes: usize,
    /// The shortest time between two repairs of one thread: the notices that arrive meanwhile
    /// coalesce into the next one.
    pub repair_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            subscriber_buffer: 256,
            max_backoff: Duration::from_secs(5),
            page_rows: PAGE_ROWS,
            page_bytes: PAGE_BYTES,
            repair_interval: REPAIR_INTERVAL,
        }
    }
}

/// The default [`Settings::repair_interval`]: a hot keys-only thread is read at most 20 times a
/// second, each read bringing every row since the last; a quiet thread's first repair is
/// immediate.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(50);

/// The delivery core of one served source. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    ctx: Arc<ThreadContext>,
    trust: Arc<Trust>,
    next_id: Arc<AtomicU64>,
    /// Reads of the keys prompted by unknown key ids: at most one a second, so that forged ids
    /// cannot turn into a query storm.
    key_reads: Arc<DefaultDirectRateLimiter>,
    /// Resync notices of batched delivery, coalesced ([`loss`]).
    resyncs: Arc<loss::ResyncGate>,
    /// The thread of every admitted notification, for whoever follows threads it does not know
    /// yet (a dashboard following a whole project). Sent only while someone receives.
    admitted: broadcast::Sender<Arc<str>>,
}

/// Admitted threads a [`Delivery::admitted`] receiver may fall behind by before it is told
/// (`RecvError::Lagged`) and must look its threads up in the table instead.
const ADMITTED_BUFFER: usize = 4096;

impl Delivery {
    /// Delivery of `source`'s changes, reading the table through `store`. Thread tasks run on
    /// `tasks` and stop on `shutdown`.
    pub fn new(
        store: Arc<dyn Store>,
        source: &Source,
        settings: Settings,
        metrics: Metrics,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Delivery {
            ctx: Arc::new(ThreadContext {
                store,
                registry: Arc::new(Registry::default()),
                metrics,
                subscriber_buffer: settings.subscriber_buffer.max(1),
                page: PageSize {
                    rows: settings.page_rows.max(1),
                    bytes: settings.page_bytes.max(1),
                },
                max_backoff: settings.max_backoff,
                repair_interval: settings.repair_interval,
                shutdown,
                tasks,
            }),
            trust: Arc::new(Trust::new(source)),
            next_id: Arc::new(AtomicU64::new(1)),
            key_reads: Arc::new(RateLimiter::direct(Quota::per_second(NonZeroU32::MIN))),
            resyncs: loss::gate(),
            admitted: broadcast::channel(ADMITTED_BUFFER).0,
        }
    }

    /// Subscribes to `thread` (the thread key's text form). The subscriber is registered at once;
    /// [`Subscription::joined`] tells from which seq on it receives every change.
    pub fn subscribe(&self, thread: &str) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = queue::queue(self.ctx.subscriber_buffer);
        let (joined_tx, joined) = oneshot::channel();
        let ctx = &self.ctx;
        let key = ctx.registry.control_or_spawn(
            thread,
            !ctx.shutdown.is_cancelled(),
            |key| thread::spawn(ctx.clone(), key),
            Control::Subscribe {
                id,
                events: events_tx,
                joined: joined_tx,
            },
        );
        Subscription {
            registry: ctx.registry.clone(),
            thread: key,
            id,
            events,
            joined: Some(joined),
        }
    }

    /// A stream's feed of `thread`, starting at `start`: subscribes now.
    pub fn feed(&self, thread: &str, start: Start) -> Feed {
        Feed::new(
            self.ctx.store.clone(),
            self.ctx.metrics.clone(),
            self.subscribe(thread),
            start,
            self.ctx.page,
        )
    }

    /// Takes one notification as the LISTEN connection received it: a change, a batch of changes
    /// (batched delivery), or a resync notice. Anything signed with a key not known yet (a
    /// rotation) makes it read the keys again, at most once a second, and try again.
    pub async fn notify(&self, channel: &str, text: &str) {
        if !self.trust.listens_on(channel) {
            return;
        }
        match Notification::parse(text) {
            Ok(Notification::Change(payload)) => self.notify_change(channel, payload).await,
            Ok(Notification::Batch(payloads)) => {
                for payload in payloads {
                    self.notify_change(channel, payload).await;
                }
            }
            Ok(Notification::Resync(notice)) => {
                let mut verdict = self.trust.admit_resync(notice);
                if let Err(PayloadError::UnknownKey(_)) = verdict {
                    if self.key_reads.check().is_ok() && self.refresh_keys().await.is_ok() {
                        verdict = self.trust.admit_resync(notice);
                    }
                }
                match verdict {
                    Ok(()) => self.resync_soon(),
                    Err(error) => self.reject(&error),
                }
            }
            Err(error) => self.reject(&error),
        }
    }

    fn reject(&self, error: &PayloadError) {
        self.ctx.metrics.notifications_rejected.inc();
        self.trust.warn_rejected(error);
    }

    /// One change's payload.
    async fn notify_change(&self, channel: &str, payload: &str) {
        let mut verdict = self.trust.admit(channel, payload);
        if let Verdict::Reject(PayloadError::UnknownKey(_)) = verdict {
            if self.key_reads.check().is_ok() && self.refresh_keys().await.is_ok() {
                verdict = self.trust.admit(channel, payload);
            }
        }
        match verdict {
            Verdict::Admit(thread, notice) => {
                // A dashboard that follows a whole project learns of the thread here, new ones
                // included, whether or not anyone follows the thread yet.
                if self.admitted.receiver_count() > 0 {
                    let _ = self.admitted.send(Arc::from(thread.as_str()));
                }
                let metrics = &self.ctx.metrics;
                let counter = match self.ctx.registry.offer(&thread, notice) {
                    Some(Offered::Fetch) => &metrics.row_fetches,
                    Some(Offered::Hole) => &metrics.gap_fills,
                    Some(Offered::Stale) => &metrics.notifications_stale,
                    // No task: nobody follows the thread, and a later subscriber reads the table.
                    Some(Offered::Ready | Offered::Closed) | None => return,
                };
                counter.inc();
            }
            Verdict::Ignore => {}
            Verdict::Reject(error) => {
                self.reject(&error);
                // Signed by a key that could not be read just now (the database unreachable,
                // or key reads spent on forged ids): the change may be genuine. Its thread, if
                // it has subscribers, reads the table instead, which takes nothing from the
                // notification; so a rotation never costs a live change.
                if let PayloadError::UnknownKey(_) = error {
                    if let Some(thread) = self.trust.unverified_thread(channel, payload) {
                        self.ctx.registry.resync(&thread);
                    }
                }
            }
        }
    }

    /// Reads the signing keys from the store (each time the LISTEN connection is established,
    /// and when a notification names a key not known yet).
    pub async fn refresh_keys(&self) -> Result<(), StoreError> {
        let keys = self.ctx.store.keys().await?;
        if keys.is_empty() {
            tracing::warn!("threadcast.keys holds no key: no notification can be trusted");
        }
        self.trust.set_keys(keys);
        Ok(())
    }

    /// Follows a changed registration of the served table: its channel, its payload mode. The
    /// caller (the listener) LISTENs again and resyncs.
    pub fn set_source(&self, source: &Source) {
        self.trust.set_source(source);
    }

    /// Asks every thread task to read what committed while notifications may have been missed
    /// (each time the LISTEN connection is (re-)established).
    pub fn resync_all(&self) {
        self.ctx.registry.resync_all();
    }

    /// The thread of every notification admitted from now on, whether or not the thread has
    /// subscribers: how a follower of a whole project learns of threads new to it. A receiver
    /// that falls [`ADMITTED_BUFFER`] behind is told so (`Lagged`) and must read the table.
    pub fn admitted(&self) -> broadcast::Receiver<Arc<str>> {
        self.admitted.subscribe()
    }

    /// The number of threads that have a task (threads with subscribers).
    pub fn thread_count(&self) -> usize {
        self.ctx.registry.len()
    }
}

#[cfg(test)]
mod tests;
