//! The task of one thread with subscribers: forwards its changes to every subscriber strictly in
//! seq order, repairs holes and left-out rows from the table, and drops subscribers that fall
//! behind.
//!
//! The extension numbers each thread's changes 1, 2, 3, ... without holes, so the task only needs
//! the last seq it forwarded (its [`Cursor`]): the [`inbox`](super::inbox) hands it the events
//! that follow on from it, and coalesces every other notice into one claim, "the thread changed up
//! to seq N", which `Store::changes(after = last, until = N)` brings back. Two things keep a flood
//! of notices from turning into a flood of queries: the thread's counter is cached (a claim at or
//! below the last counter read needs no new read of it), and repairs are at most one per
//! `repair_interval` per thread (the claims that arrive meanwhile coalesce into the next one).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cursor::{Cursor, Pages};
use super::inbox::{self, InboxReader, Until};
use super::msg::Control;
use super::queue::{self, TrySendError};
use super::registry::Registry;
use super::trust;
use crate::metrics::{Metrics, Read};
use crate::sse::Event;
use crate::store::{PageSize, Store, StoreError};

/// What every thread task needs, shared.
pub(crate) struct ThreadContext {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub subscriber_buffer: usize,
    /// How much one table read may bring.
    pub page: PageSize,
    pub max_backoff: Duration,
    /// The shortest time between two repairs of one thread.
    pub repair_interval: Duration,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Starts the task of `thread` and returns its inbox.
pub(crate) fn spawn(ctx: Arc<ThreadContext>, thread: Arc<str>) -> inbox::Inbox {
    let (tx, inbox) = inbox::inbox();
    let task = ThreadTask {
        ctx: ctx.clone(),
        thread,
        inbox,
        cursor: Cursor::default(),
        counter: 0,
        subscribers: Vec::new(),
    };
    ctx.tasks.spawn(task.run());
    tx
}

struct ThreadTask {
    ctx: Arc<ThreadContext>,
    thread: Arc<str>,
    inbox: InboxReader,
    /// The last seq forwarded (or known to have nothing left to forward).
    cursor: Cursor,
    /// The thread's counter as last read: a notice up to it is trusted without reading it again.
    counter: i64,
    subscribers: Vec<(u64, queue::Sender<Event>)>,
}

impl ThreadTask {
    // A root span: the task outlives the request that started it, and a child span would keep
    // its parent's span alive for as long.
    #[tracing::instrument(name = "thread", parent = None, skip(self), fields(thread = %self.thread))]
    async fn run(mut self) {
        // Changes up to the baseline are the table's business (catch-up); every later one is
        // forwarded. Notices offered meanwhile wait, coalesced, in the inbox.
        // Table reads are boxed here and below: a task lives as long as its thread has
        // subscribers (with one subscriber per thread, as long as a stream), and would otherwise
        // keep room for a read's state all that time.
        let (ctx, thread) = (self.ctx.clone(), self.thread.clone());
        let baseline = retry(&ctx, || {
            ctx.metrics.table_read(Read::Baseline);
            ctx.store.current_seq(&thread)
        });
        let Some(baseline) = Box::pin(baseline).await else {
            return;
        };
        self.cursor = Cursor::at(baseline);
        self.counter = baseline;
        tracing::debug!(baseline, "thread task started");
        // A repair owed but not yet due, and when the next one may start.
        let mut owed: Option<Until> = None;
        let mut next_repair = Instant::now();
        loop {
            let due = owed.map(|_| next_repair);
            let work = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return,
                work = self.inbox.next(self.cursor.last()) => work,
                _ = tokio::time::sleep_until(due.unwrap_or(next_repair)), if due.is_some() => {
                    inbox::Work::default()
                }
            };
            for msg in work.control {
                match msg {
                    Control::Subscribe { id, events, joined } => {
                        if joined.send(self.cursor.last()).is_ok() {
                            self.subscribers.push((id, events));
                        }
                    }
                    Control::Unsubscribe(id) => self.subscribers.retain(|(sid, _)| *sid != id),
                }
            }
            for event in work.ready {
                // The inbox queues events that follow on from what it was told the task has; one
                // the task has since passed on (read with a repair) is skipped, and one past a
                // hole is left to the repair that the hole makes owed.
                if event.seq == self.cursor.last() + 1 {
                    self.cursor.advance(event.seq);
                    self.forward(event);
                } else if event.seq > self.cursor.last() {
                    owed = Some(Until::Seq(event.seq).max(owed));
                }
            }
            if let Some(repair) = work.repair {
                owed = Some(repair.max(owed));
            }
            if let Some(until) = owed.filter(|_| Instant::now() >= next_repair) {
                owed = None;
                next_repair = Instant::now() + self.ctx.repair_interval;
                if !Box::pin(self.repair(until)).await {
                    return;
                }
            }
            if self.subscribers.is_empty() && self.ctx.registry.retire(&self.thread, &self.inbox) {
                tracing::debug!("thread task retired");
                return;
            }
        }
    }

    /// Forwards every change after the cursor up to `until` from the table, then counts a
    /// claimed seq as forwarded (a seq that is not in the table any more belonged to a row since
    /// updated to a higher seq, forwarded then). A claim is trusted only up to the thread's
    /// counter ([`trust::bound`]). Returns false on shutdown.
    async fn repair(&mut self, until: Until) -> bool {
        let ctx = self.ctx.clone();
        let thread = self.thread.clone();
        let before = self.cursor.last();
        let until = match until {
            Until::Seq(claimed) => {
                if claimed > self.counter {
                    let current = retry(&ctx, || {
                        ctx.metrics.table_read(Read::Repair);
                        ctx.store.current_seq(&thread)
                    });
                    let Some(current) = current.await else {
                        return false;
                    };
                    self.counter = self.counter.max(current);
                }
                Some(trust::bound(claimed, self.counter))
            }
            Until::End => None,
        };
        let mut pages = Pages::new(thread, self.cursor.last(), until, ctx.page);
        while !pages.is_done() {
            let page = retry(&ctx, || {
                ctx.metrics.table_read(Read::Repair);
                pages.read(&*ctx.store)
            });
            let Some(page) = page.await else {
                return false;
            };
            tracing::debug!(rows = page.len(), ?until, "read changes from the table");
            for change in &page {
                if self.cursor.advance(change.seq) {
                    self.forward(change.event());
                }
            }
            pages.advance(&page);
        }
        if let Some(until) = until {
            self.cursor.skip_to(until);
        }
        if until.is_none() && self.cursor.last() > before {
            ctx.metrics.gap_fills.inc();
            tracing::info!(
                from = before,
                to = self.cursor.last(),
                "caught up from the table"
            );
        }
        true
    }

    /// Queues `event` for every subscriber without waiting. One whose queue is full is dropped:
    /// its stream ends after what it has queued, and the client resumes from the table.
    fn forward(&mut self, event: Event) {
        let metrics = &self.ctx.metrics;
        self.subscribers
            .retain(|(_, tx)| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    metrics.slow_consumer_disconnects.inc();
                    tracing::info!(seq = event.seq, "subscriber too slow; disconnected");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            });
    }
}

/// Exponential backoff from 100 ms up to `max`, with jitter: after a database restart, thousands
/// of thread tasks retry spread out rather than in step.
pub(crate) fn backoff(max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max.max(Duration::from_millis(100)))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `attempt` until it succeeds, backing off between failures; None on shutdown.
async fn retry<T, F, Fut>(ctx: &ThreadContext, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = backoff(ctx.max_backoff);
    loop {
        let result = tokio::select! {
            _ = ctx.shutdown.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = delays.next().unwrap_or(ctx.max_backoff);
                tracing::warn!(error = %crate::error::chain(&error), ?delay, "reading the table failed; retrying");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let max = Duration::from_millis(800);
        let delays: Vec<Duration> = backoff(max).take(8).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        assert!(
            delays.iter().all(|d| *d < max * 2),
            "jitter adds less than the delay itself: {delays:?}"
        );
        let runs: Vec<Vec<Duration>> = (0..4).map(|_| backoff(max).take(6).collect()).collect();
        assert!(
            runs.windows(2).any(|w| w[0] != w[1]),
            "two tasks do not back off in lockstep: {runs:?}"
        );
    }
}
