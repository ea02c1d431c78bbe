//! The task of one thread with subscribers: forwards its changes to every subscriber strictly in
//! seq order, repairs holes and left-out rows from the table, and drops subscribers that fall
//! behind.
//!
//! The extension numbers each thread's changes 1, 2, 3, ... without holes, so the task only needs
//! the last seq it forwarded: a notification for anything but the next number means notifications
//! were missed, and `threadcast.changes(after = last, until = seq)` brings back what they carried.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::fetch::{self, FetchError, PAGE_ROWS};
use crate::hub::{Hub, ThreadContext};
use crate::queue::{self, TrySendError};
use crate::sse::Event;

/// A message to a thread's task. Order matters: the hub sends them under one lock.
pub(crate) enum ThreadMsg {
    Notice(Notice),
    Subscribe {
        id: u64,
        events: queue::Sender<Event>,
        joined: oneshot::Sender<i64>,
    },
    Unsubscribe(u64),
    /// Notifications may have been lost (the LISTEN connection was down): read the table.
    Resync,
}

/// One notification of this thread.
pub(crate) struct Notice {
    pub seq: i64,
    pub body: NoticeBody,
}

pub(crate) enum NoticeBody {
    /// The event, rendered from the payload.
    Ready(Event),
    /// The payload left the row out; it must be read from the table.
    Fetch,
}

/// Starts the task of `thread` and returns its inbox.
pub(crate) fn spawn(
    hub: Hub,
    ctx: Arc<ThreadContext>,
    thread: Arc<str>,
) -> queue::Sender<ThreadMsg> {
    let (tx, inbox) = queue::queue(None);
    let task = ThreadTask {
        hub,
        ctx: ctx.clone(),
        thread,
        inbox,
        last: 0,
        subscribers: Vec::new(),
    };
    ctx.tasks.spawn(task.run());
    tx
}

struct ThreadTask {
    hub: Hub,
    ctx: Arc<ThreadContext>,
    thread: Arc<str>,
    inbox: queue::Receiver<ThreadMsg>,
    /// The last seq forwarded (or known to have nothing left to forward).
    last: i64,
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
        // subscribers, and would otherwise keep room for a query's state all that time.
        let (ctx, thread) = (self.ctx.clone(), self.thread.clone());
        let Some(baseline) = Box::pin(retry(&ctx, || {
            fetch::current_seq(&ctx.pool, &ctx.source, &thread)
        }))
        .await
        else {
            return;
        };
        self.last = baseline;
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
                    if joined.send(self.last).is_ok() {
                        self.subscribers.push((id, events));
                    }
                    true
                }
                ThreadMsg::Unsubscribe(id) => {
                    self.subscribers.retain(|(sid, _)| *sid != id);
                    true
                }
                ThreadMsg::Resync => {
                    let before = self.last;
                    let done = Box::pin(self.fill(None)).await;
                    if self.last > before {
                        self.ctx.metrics.gap_fills.increment(1);
                        tracing::info!(from = before, to = self.last, "caught up after reconnect");
                    }
                    done
                }
            };
            if !carry_on {
                return;
            }
            if self.subscribers.is_empty() && self.hub.retire(&self.thread, &self.inbox) {
                tracing::debug!("thread task retired");
                return;
            }
        }
    }

    /// Forwards one notification, or repairs from the table what it cannot carry. Returns false
    /// on shutdown.
    async fn on_notice(&mut self, notice: Notice) -> bool {
        if notice.seq <= self.last {
            // Already delivered by a repair or a resync.
            return true;
        }
        let next = notice.seq == self.last + 1;
        match notice.body {
            NoticeBody::Ready(event) if next => {
                self.last = notice.seq;
                self.forward(event);
                true
            }
            body => {
                if next {
                    self.ctx.metrics.row_fetches.increment(1);
                } else {
                    self.ctx.metrics.gap_fills.increment(1);
                    tracing::info!(
                        last = self.last,
                        seq = notice.seq,
                        "hole in the sequence; reading the table"
                    );
                }
                // The notice's own row is read with the rest: the table has the row's current state
                // at its current seq, which keeps every subscriber on one order.
                drop(body);
                Box::pin(self.fill(Some(notice.seq))).await
            }
        }
    }

    /// Forwards every change with `last < seq <= until` from the table, paging, then records
    /// `until` as forwarded (a seq that is not in the table any more belonged to a row that has
    /// since been updated to a higher seq, which will be forwarded then). Returns false on
    /// shutdown.
    async fn fill(&mut self, until: Option<i64>) -> bool {
        let ctx = self.ctx.clone();
        let thread = self.thread.clone();
        // A notification arrives only after its change committed, so its number is at most the
        // thread's counter, read now. A higher one was forged (NOTIFY needs no privilege):
        // recording it as forwarded would drop every real change up to it.
        let until = match until {
            Some(until) => {
                let Some(current) =
                    retry(&ctx, || fetch::current_seq(&ctx.pool, &ctx.source, &thread)).await
                else {
                    return false;
                };
                if until > current {
                    tracing::warn!(
                        seq = until,
                        current,
                        "ignoring a notification for a number the thread has not handed out"
                    );
                }
                Some(until.min(current))
            }
            None => None,
        };
        if until.is_some_and(|until| until <= self.last) {
            return true;
        }
        loop {
            let after = self.last;
            let Some(page) = retry(&ctx, || {
                fetch::changes(&ctx.pool, &ctx.source, &thread, after, until)
            })
            .await
            else {
                return false;
            };
            let full = page.len() >= PAGE_ROWS as usize;
            tracing::debug!(
                after,
                ?until,
                rows = page.len(),
                "read changes from the table"
            );
            for change in page {
                if change.seq > self.last {
                    self.last = change.seq;
                    self.forward(change.event());
                }
            }
            if !full || self.last == after {
                break;
            }
        }
        if let Some(until) = until {
            self.last = self.last.max(until);
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
                    metrics.slow_consumer_disconnects.increment(1);
                    tracing::info!(seq = event.seq, "subscriber too slow; disconnected");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            });
    }
}

/// Runs `attempt` until it succeeds, backing off between failures; None on shutdown.
async fn retry<T, F, Fut>(ctx: &ThreadContext, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut backoff = Backoff::new(std::time::Duration::from_millis(100), ctx.max_backoff);
    loop {
        let result = tokio::select! {
            _ = ctx.shutdown.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %crate::error::chain(&error), ?delay, "reading the table failed; retrying");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
