//! A thread task's inbox, bounded whatever arrives: the subscriptions in the order they came, and
//! what the thread's notices amount to, coalesced rather than queued one by one.
//!
//! A notice is worth something to the task only if it is past what the task already has. So the
//! inbox keeps, beside the subscriptions:
//! - `ready`: events of full-payload notices whose seqs follow on, one by one, from the last seq
//!   handed to the task (the fast path: forwarded without a table read), at most [`READY_MAX`];
//! - `repair_to`: the highest seq any other notice claimed (a left-out row, a keys-only source, a
//!   hole, or `ready` full), which the task reads from the table up to (bounded by the thread's
//!   counter), in one read however many notices claimed it;
//! - `resync`: read the table to its end (after the listener reconnects, or drops notifications).
//!
//! A notice at or below what the task already has (a replay, or a copy of what a repair read) is
//! dropped on the spot. So a flood of notifications for a thread costs a few words of memory and
//! at most one wake-up of its task per notice that moves something, never a queue that grows.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::task::AtomicWaker;

use super::msg::{Control, Notice, NoticeBody};
use crate::sse::Event;

/// The most events of full-payload notices an inbox holds for its task; past it, notices are
/// coalesced into a repair. The task normally takes them at once: they pile up only while it
/// waits for the table.
pub(crate) const READY_MAX: usize = 64;

/// Creates a thread's inbox: the end delivery offers to, and the end its task reads.
pub(crate) fn inbox() -> (Inbox, InboxReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            control: VecDeque::new(),
            ready: VecDeque::new(),
            handed: 0,
            repair_to: None,
            resync: false,
            reader: true,
        }),
        waker: AtomicWaker::new(),
    });
    (
        Inbox {
            shared: shared.clone(),
        },
        InboxReader { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    control: VecDeque<Control>,
    /// Consecutive seqs, the first one more than `handed` was when it was queued.
    ready: VecDeque<Event>,
    /// The highest seq the task has: forwarded (as it last said) or taken from `ready`.
    handed: i64,
    /// The highest seq claimed by a notice the task must read from the table.
    repair_to: Option<i64>,
    /// Read the table to its end.
    resync: bool,
    /// Whether the task still reads the inbox.
    reader: bool,
}

impl State {
    /// The highest seq the task has, or has queued for it.
    fn tip(&self) -> i64 {
        self.ready
            .back()
            .map_or(self.handed, |e| e.seq.max(self.handed))
    }

    fn has_work(&self) -> bool {
        !self.control.is_empty()
            || !self.ready.is_empty()
            || self.repair_to.is_some()
            || self.resync
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What became of an offered notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Its event is queued for the task (the next seq, with its row).
    Ready,
    /// The task is to read it from the table: its row was left out.
    Fetch,
    /// The task is to read it from the table: notifications before it were missed (a hole), or
    /// the task has [`READY_MAX`] events waiting already.
    Hole,
    /// It claims nothing past what the task has or will read already (a replay, a duplicate, a
    /// number a pending repair covers): dropped.
    Stale,
    /// The task is gone.
    Closed,
}

/// The sending end of a thread's inbox, kept in the registry.
pub(crate) struct Inbox {
    shared: Arc<Shared>,
}

impl Inbox {
    /// Takes what `notice` is worth, and wakes the task if that is anything new.
    pub fn offer(&self, notice: Notice) -> Offered {
        let offered = {
            let mut state = self.shared.state();
            if !state.reader {
                return Offered::Closed;
            }
            let tip = state.tip();
            if notice.seq <= tip || state.repair_to.is_some_and(|r| notice.seq <= r) {
                return Offered::Stale;
            }
            match notice.body {
                NoticeBody::Ready(event)
                    if notice.seq == tip + 1 && state.ready.len() < READY_MAX =>
                {
                    state.ready.push_back(event);
                    Offered::Ready
                }
                body => {
                    state.repair_to = Some(notice.seq);
                    match body {
                        NoticeBody::Fetch if notice.seq == tip + 1 => Offered::Fetch,
                        _ => Offered::Hole,
                    }
                }
            }
        };
        self.shared.waker.wake();
        offered
    }

    /// Queues a subscription change; gives it back if the task is gone.
    pub fn control(&self, msg: Control) -> Result<(), Control> {
        {
            let mut state = self.shared.state();
            if !state.reader {
                return Err(msg);
            }
            state.control.push_back(msg);
        }
        self.shared.waker.wake();
        Ok(())
    }

    /// Asks the task to read the table to its end.
    pub fn resync(&self) {
        {
            let mut state = self.shared.state();
            if !state.reader || state.resync {
                return;
            }
            state.resync = true;
        }
        self.shared.waker.wake();
    }

    /// Whether the task is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.state().reader
    }
}

/// Until where the task must read the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Up to this seq (bounded by the thread's counter).
    Seq(i64),
    /// To the end.
    End,
}

impl Until {
    /// The farther of two.
    pub fn max(self, other: Option<Until>) -> Until {
        match (self, other) {
            (Until::End, _) | (_, Some(Until::End)) => Until::End,
            (Until::Seq(a), Some(Until::Seq(b))) => Until::Seq(a.max(b)),
            (seq, None) => seq,
        }
    }
}

/// What the task takes from its inbox in one go.
#[derive(Default)]
pub(crate) struct Work {
    pub control: VecDeque<Control>,
    pub ready: VecDeque<Event>,
    pub repair: Option<Until>,
}

/// The task's end of its inbox.
pub(crate) struct InboxReader {
    shared: Arc<Shared>,
}

impl InboxReader {
    /// Waits until there is something to do and takes all of it. `forwarded` is the last seq
    /// the task has passed on: notices at or below it are stale from now on.
    pub async fn next(&mut self, forwarded: i64) -> Work {
        // Like tokio's channels, take part in cooperative scheduling: a task that always finds
        // work still yields now and then.
        tokio::task::consume_budget().await;
        poll_fn(|cx| {
            if let Some(work) = self.take(forwarded) {
                return Poll::Ready(work);
            }
            self.shared.waker.register(cx.waker());
            // Whatever came before the waker was in place is seen now.
            match self.take(forwarded) {
                Some(work) => Poll::Ready(work),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn take(&self, forwarded: i64) -> Option<Work> {
        let mut state = self.shared.state();
        state.handed = state.handed.max(forwarded);
        if !state.has_work() {
            return None;
        }
        let ready = std::mem::take(&mut state.ready);
        if let Some(last) = ready.back() {
            state.handed = state.handed.max(last.seq);
        }
        let repair = match (state.resync, state.repair_to.take()) {
            (true, _) => Some(Until::End),
            (false, to) => to.map(Until::Seq),
        };
        state.resync = false;
        Some(Work {
            control: std::mem::take(&mut state.control),
            ready,
            repair,
        })
    }

    /// Whether no subscription change is waiting (the task may retire).
    pub fn no_control(&self) -> bool {
        self.shared.state().control.is_empty()
    }
}

impl Drop for InboxReader {
    fn drop(&mut self) {
        let control = {
            let mut state = self.shared.state();
            state.reader = false;
            state.ready.clear();
            std::mem::take(&mut state.control)
        };
        // Dropped outside the lock: a subscription's reply channel wakes its stream.
        drop(control);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(seq: i64) -> Notice {
        Notice {
            seq,
            body: NoticeBody::Ready(Event::reply(seq, "{}")),
        }
    }

    fn fetch(seq: i64) -> Notice {
        Notice {
            seq,
            body: NoticeBody::Fetch,
        }
    }

    fn take(reader: &mut InboxReader, forwarded: i64) -> Work {
        futures::executor::block_on(reader.next(forwarded))
    }

    fn seqs(work: &Work) -> Vec<i64> {
        work.ready.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn consecutive_events_queue_and_anything_else_becomes_one_repair() {
        let (inbox, mut reader) = inbox();
        assert_eq!(inbox.offer(ready(1)), Offered::Ready);
        assert_eq!(inbox.offer(ready(2)), Offered::Ready);
        assert_eq!(inbox.offer(ready(2)), Offered::Stale, "a duplicate");
        assert_eq!(inbox.offer(ready(5)), Offered::Hole, "3 and 4 were missed");
        assert_eq!(
            inbox.offer(fetch(4)),
            Offered::Stale,
            "the repair to 5 covers it"
        );
        assert_eq!(inbox.offer(fetch(7)), Offered::Hole);
        let work = take(&mut reader, 0);
        assert_eq!(seqs(&work), [1, 2]);
        assert_eq!(work.repair, Some(Until::Seq(7)));
        assert_eq!(inbox.offer(ready(2)), Offered::Stale, "handed to the task");
        assert_eq!(
            inbox.offer(ready(3)),
            Offered::Ready,
            "follows what was handed"
        );
    }

    #[test]
    fn a_million_replays_and_claims_leave_the_inbox_bounded() {
        let (inbox, mut reader) = inbox();
        for _ in 0..1_000_000 {
            inbox.offer(ready(1));
        }
        for seq in 2..1_000_000 {
            inbox.offer(ready(seq));
        }
        let work = take(&mut reader, 0);
        assert_eq!(work.ready.len(), READY_MAX, "at most READY_MAX events");
        assert_eq!(
            work.repair,
            Some(Until::Seq(999_999)),
            "the rest is one repair"
        );
        assert!(take_now(&mut reader).is_none(), "nothing else was kept");
    }

    fn take_now(reader: &mut InboxReader) -> Option<Work> {
        reader.take(0)
    }

    #[test]
    fn a_row_left_out_is_a_fetch_and_what_the_task_forwarded_is_stale() {
        let (inbox, mut reader) = inbox();
        assert!(take_now(&mut reader).is_none());
        assert_eq!(inbox.offer(fetch(1)), Offered::Fetch);
        let work = take(&mut reader, 0);
        assert_eq!(work.repair, Some(Until::Seq(1)));
        // The task read 1..=3 from the table and says so when it next waits.
        assert!(take_now(&mut reader).is_none());
        reader.take(3);
        assert_eq!(inbox.offer(ready(3)), Offered::Stale);
        assert_eq!(inbox.offer(ready(4)), Offered::Ready);
    }

    #[test]
    fn a_resync_reads_to_the_end_and_comes_once() {
        let (inbox, mut reader) = inbox();
        inbox.offer(fetch(3));
        inbox.resync();
        inbox.resync();
        let work = take(&mut reader, 0);
        assert_eq!(work.repair, Some(Until::End));
        assert!(take_now(&mut reader).is_none());
    }

    #[test]
    fn a_gone_task_takes_nothing() {
        let (inbox, reader) = inbox();
        drop(reader);
        assert!(inbox.is_closed());
        assert_eq!(inbox.offer(ready(1)), Offered::Closed);
        assert!(inbox.control(Control::Unsubscribe(1)).is_err());
    }

    #[test]
    fn untils_merge_to_the_farther() {
        assert_eq!(Until::Seq(3).max(Some(Until::Seq(5))), Until::Seq(5));
        assert_eq!(Until::Seq(3).max(Some(Until::End)), Until::End);
        assert_eq!(Until::End.max(None), Until::End);
    }
}
