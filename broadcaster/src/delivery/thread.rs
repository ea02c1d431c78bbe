//! The task of one thread with subscribers: forwards its changes to every subscriber strictly in
//! seq order, repairs holes and left-out rows from the table, and drops subscribers that fall
//! behind.
//!
//! The extension numbers each thread's changes 1, 2, 3, ... without holes, so the task only needs
//! the last seq it forwarded (its [`Cursor`]): a notice for anything but the next number means
//! notifications were missed, and `Store::changes(after = last, until = seq)` brings back what
//! they carried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cursor::{Cursor, Pages};
use super::msg::{Notice, NoticeBody, ThreadMsg};
use super::queue::{self, TrySendError};
use super::registry::Registry;
use super::trust;
use crate::metrics::Metrics;
use crate::sse::Event;
use crate::store::{Store, StoreError};

/// What every thread task needs, shared.
pub(crate) struct ThreadContext {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub subscriber_buffer: usize,
    /// Rows per table read.
    pub page_rows: i32,
    pub max_backoff: Duration,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Starts the task of `thread` and returns its inbox.
pub(crate) fn spawn(ctx: Arc<ThreadContext>, thread: Arc<str>) -> queue::Sender<ThreadMsg> {
    let (tx, inbox) = queue::queue(None);
    let task = ThreadTask {
        ctx: ctx.clone(),
        thread,
        inbox,
        cursor: Cursor::default(),
        subscribers: Vec::new(),
    };
    ctx.tasks.spawn(task.run());
    tx
}

struct ThreadTask {
    ctx: Arc<ThreadContext>,
    thread: Arc<str>,
    inbox: queue::Receiver<ThreadMsg>,
    /// The last seq forwarded (or known to have nothing left to forward).
    cursor: Cursor,
    subscribers: Vec<(u64, queue::Sender<Event>)>,
}

impl ThreadTask {
    // A root span: the task outlives the request that started it, and a child span would keep
    // its parent's span alive for as long.
    #[tracing::instrument(name = "thread", parent = None, skip(self), fields(thread = %self.thread))]
    async fn run(mut self) {
        // Changes up to the baseline are the table's business (catch-up); every later one is
        // forwarded. Notifications queued meanwhile wait in the inbox.
        // Table reads are boxed here and below: a task lives as long as its thread has
        // subscribers (with one subscriber per thread, as long as a stream), and would otherwise
        // keep room for a read's state all that time.
        let (ctx, thread) = (self.ctx.clone(), self.thread.clone());
        let Some(baseline) = Box::pin(retry(&ctx, || ctx.store.current_seq(&thread))).await else {
            return;
        };
        self.cursor = Cursor::at(baseline);
        tracing::debug!(baseline, "thread task started");
        loop {
            let msg = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return,
                msg = self.inbox.recv() => msg,
            };
            let Some(msg) = msg else { return };
            let carry_on = match msg {
                ThreadMsg::Notice(notice) => self.on_notice(notice).await,
                ThreadMsg::Subscribe { id, events, joined } => {
                    if joined.send(self.cursor.last()).is_ok() {
                        self.subscribers.push((id, events));
                    }
                    true
                }
                ThreadMsg::Unsubscribe(id) => {
                    self.subscribers.retain(|(sid, _)| *sid != id);
                    true
                }
                ThreadMsg::Resync => {
                    let before = self.cursor.last();
                    let done = Box::pin(self.fill(None)).await;
                    if self.cursor.last() > before {
                        self.ctx.metrics.gap_fills.inc();
                        tracing::info!(
                            from = before,
                            to = self.cursor.last(),
                            "caught up after reconnect"
                        );
                    }
                    done
                }
            };
            if !carry_on {
                return;
            }
            if self.subscribers.is_empty() && self.ctx.registry.retire(&self.thread, &self.inbox) {
                tracing::debug!("thread task retired");
                return;
            }
        }
    }

    /// Forwards one notice, or repairs from the table what it cannot carry. Returns false on
    /// shutdown.
    async fn on_notice(&mut self, notice: Notice) -> bool {
        let last = self.cursor.last();
        if notice.seq <= last {
            // Already delivered by a repair or a resync.
            return true;
        }
        let next = notice.seq == last + 1;
        match notice.body {
            NoticeBody::Ready(event) if next => {
                self.cursor.advance(notice.seq);
                self.forward(event);
                true
            }
            _ => {
                if next {
                    self.ctx.metrics.row_fetches.inc();
                } else {
                    self.ctx.metrics.gap_fills.inc();
                    tracing::info!(
                        last,
                        seq = notice.seq,
                        "hole in the sequence; reading the table"
                    );
                }
                // The notice's own row is read with the rest: the table has the row's current
                // state at its current seq, which keeps every subscriber on one order.
                Box::pin(self.fill(Some(notice.seq))).await
            }
        }
    }

    /// Forwards every change after the cursor up to `until` (None: up to the end) from the
    /// table, then counts `until` as forwarded (a seq that is not in the table any more belonged
    /// to a row since updated to a higher seq, forwarded then). Returns false on shutdown.
    async fn fill(&mut self, until: Option<i64>) -> bool {
        let ctx = self.ctx.clone();
        let thread = self.thread.clone();
        let until = match until {
            Some(claimed) => {
                let Some(current) = retry(&ctx, || ctx.store.current_seq(&thread)).await else {
                    return false;
                };
                Some(trust::bound(claimed, current))
            }
            None => None,
        };
        let mut pages = Pages::new(thread, self.cursor.last(), until, ctx.page_rows);
        while !pages.is_done() {
            let Some(page) = retry(&ctx, || pages.read(&*ctx.store)).await else {
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
