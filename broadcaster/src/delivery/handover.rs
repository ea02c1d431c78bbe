//! The hand-over of one stream from the table to live events, with nothing missed and nothing
//! doubled.
//!
//! A [`Feed`] subscribes first; the thread's task answers with the last seq it had forwarded (the
//! join point), and from then on forwards every later change to it. Only then does the feed read
//! the table, up to the join point and no further (catch-up from `Last-Event-ID`, none at all for
//! a client already there; or the last replies for `?history=N`), and pass that on; afterwards it drops live events at or below the last seq it passed on. It
//! says [`Step::Joined`] once the subscription is in place, before anything else.

use std::collections::VecDeque;
use std::sync::Arc;

use super::cursor::{Cursor, Pages};
use super::subscription::Subscription;
use crate::metrics::{Metrics, Read};
use crate::sse::Event;
use crate::store::{PageSize, Store, StoreError};

/// Where a new stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With live events only.
    Live,
    /// With the last `n` replies, then live.
    History(i32),
    /// With every change after this seq (the client's Last-Event-ID), then live.
    After(i64),
}

/// What a feed has for its stream next.
#[derive(Debug)]
pub enum Step {
    /// The subscription is in place: every change committed from now on will follow.
    Joined,
    /// The next event, in seq order.
    Event(Event),
}

enum Phase {
    /// Waiting for the thread's task to register the subscriber.
    Joining,
    /// Sending the last `n` replies.
    History(i32),
    /// Sending changes read from the table.
    CatchUp(Pages),
    Live,
}

/// One stream's events: its subscription and how far it got.
pub struct Feed {
    store: Arc<dyn Store>,
    metrics: Metrics,
    subscription: Subscription,
    start: Start,
    page: PageSize,
    /// The highest seq passed on; live events at or below it are duplicates.
    cursor: Cursor,
    pending: VecDeque<Event>,
    phase: Phase,
    /// The last seq the thread's task had forwarded when it took this subscriber on.
    joined_at: Option<i64>,
}

impl Feed {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        metrics: Metrics,
        subscription: Subscription,
        start: Start,
        page: PageSize,
    ) -> Self {
        Feed {
            store,
            metrics,
            subscription,
            start,
            page,
            cursor: Cursor::default(),
            pending: VecDeque::new(),
            phase: Phase::Joining,
            joined_at: None,
        }
    }

    /// Where the subscription joined its thread, once [`Step::Joined`] has been returned: every
    /// change after this seq reaches the feed live.
    pub fn joined_at(&self) -> Option<i64> {
        self.joined_at
    }

    /// The next step, or None to end the stream: delivery stopped, the subscriber was dropped
    /// as too slow (after what it had queued), or a table read failed. Ending makes EventSource
    /// resume with Last-Event-ID.
    pub async fn next(&mut self) -> Option<Step> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if self.cursor.advance(event.seq) {
                    return Some(Step::Event(event));
                }
                continue;
            }
            match &mut self.phase {
                Phase::Joining => {
                    let joined_at = self.subscription.joined().await?;
                    tracing::debug!(joined_at, "joined");
                    self.joined_at = Some(joined_at);
                    let thread = self.subscription.thread().clone();
                    self.phase = match self.start {
                        Start::Live => Phase::Live,
                        Start::After(n) => {
                            // The client has everything up to n. The thread's task may be behind
                            // it (repairing a hole, or not yet resynced after an outage) and
                            // forward some of that again later: the cursor drops it.
                            self.cursor.skip_to(n);
                            // Everything after the join point reaches the feed live, so the table
                            // owes it (n, joined_at] only, and nothing when the client is at or
                            // past the join point: a reconnect storm costs one table read per
                            // thread (its task's baseline), not one per stream.
                            if n >= joined_at {
                                Phase::Live
                            } else {
                                Phase::CatchUp(Pages::new(thread, n, Some(joined_at), self.page))
                            }
                        }
                        Start::History(n) => Phase::History(n),
                    };
                    return Some(Step::Joined);
                }
                Phase::History(n) => {
                    let n = *n;
                    let thread = self.subscription.thread();
                    self.metrics.table_read(Read::History);
                    let rows = read(self.store.latest_within(thread, n, self.page.bytes)).await?;
                    // Replies after the join point reach this feed live, in order with every
                    // other change after it; taken from the history they would put the cursor
                    // past changes still to come live, which would then be dropped as sent.
                    let joined_at = self.joined_at.unwrap_or(0);
                    self.pending.extend(
                        rows.iter()
                            .filter(|c| c.seq <= joined_at)
                            .map(|c| c.event()),
                    );
                    self.phase = Phase::Live;
                }
                Phase::CatchUp(pages) if pages.is_done() => self.phase = Phase::Live,
                Phase::CatchUp(pages) => {
                    self.metrics.table_read(Read::CatchUp);
                    let page = read(pages.read(&*self.store)).await?;
                    pages.advance(&page);
                    self.pending.extend(page.iter().map(|c| c.event()));
                }
                Phase::Live => {
                    let event = self.subscription.recv().await?;
                    if self.cursor.advance(event.seq) {
                        return Some(Step::Event(event));
                    }
                }
            }
        }
    }
}

/// Awaits a table read; a failure ends the stream, and the client resumes where it stopped.
async fn read<T>(read: impl std::future::Future<Output = Result<T, StoreError>>) -> Option<T> {
    match read.await {
        Ok(rows) => Some(rows),
        Err(error) => {
            tracing::warn!(error = %crate::error::chain(&error), "reading the table for a stream failed; ending it so the client resumes");
            None
        }
    }
}
