//! The hub: routes each notification to the task of its thread, and hands out subscriptions.
//!
//! A thread has a task (see `thread.rs`) only while it has subscribers: the first subscriber
//! creates it and it retires when the last one leaves. Notifications for threads without a task
//! are dropped on the spot, since nobody is listening and a later subscriber reads the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use threadcast_payload::{Op, Payload};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::queue::{self, Receiver, Sender};
use crate::source::Source;
use crate::sse::Event;
use crate::thread::{self, Notice, NoticeBody, ThreadMsg};

/// What every thread task needs, shared.
pub(crate) struct ThreadContext {
    pub pool: Pool,
    pub source: Arc<Source>,
    pub metrics: Metrics,
    pub subscriber_buffer: usize,
    pub max_backoff: Duration,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// The in-memory router from threads to their subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// The inbox of each thread's task. Every send happens under this lock, and a task retires
    /// only under it with an empty inbox, so no message is ever sent to a task that is gone.
    threads: Mutex<HashMap<Arc<str>, Sender<ThreadMsg>>>,
    next_id: AtomicU64,
    ctx: Arc<ThreadContext>,
}

impl Hub {
    pub(crate) fn new(ctx: ThreadContext) -> Self {
        Hub {
            inner: Arc::new(Inner {
                threads: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                ctx: Arc::new(ctx),
            }),
        }
    }

    fn threads(&self) -> MutexGuard<'_, HashMap<Arc<str>, Sender<ThreadMsg>>> {
        // A panic while holding this lock cannot leave the map half-updated (every change is one
        // insert or remove), so a poisoned lock is still good to use.
        self.inner.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to `thread` (the thread key's text form). The subscriber is registered at once;
    /// [`Subscription::joined`] tells from which seq on it receives every change.
    pub fn subscribe(&self, thread: &str) -> Subscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = queue::queue(Some(self.inner.ctx.subscriber_buffer.max(1)));
        let (joined_tx, joined) = oneshot::channel();
        let mut threads = self.threads();
        let key: Arc<str> = match threads.get_key_value(thread) {
            Some((key, _)) => key.clone(),
            None => Arc::from(thread),
        };
        let inbox = threads
            .entry(key.clone())
            .and_modify(|inbox| {
                // A task only stops without retiring on shutdown; outside shutdown a dead one is
                // replaced rather than left to swallow subscriptions.
                if inbox.is_closed() && !self.inner.ctx.shutdown.is_cancelled() {
                    *inbox = thread::spawn(self.clone(), self.inner.ctx.clone(), key.clone());
                }
            })
            .or_insert_with(|| thread::spawn(self.clone(), self.inner.ctx.clone(), key.clone()));
        // If the task is gone (shutdown), `joined` resolves to None and the stream ends.
        let _ = inbox.try_send(ThreadMsg::Subscribe {
            id,
            events: events_tx,
            joined: joined_tx,
        });
        drop(threads);
        Subscription {
            hub: self.clone(),
            thread: key,
            id,
            events,
            joined: Some(joined),
        }
    }

    /// Routes one decoded notification to its thread's task, if the thread has one.
    pub(crate) fn dispatch(&self, payload: &Payload<'_>) {
        let Some(inbox) = self.threads().get(payload.thread.as_ref()).cloned() else {
            return;
        };
        // NOTIFY needs no privilege, so any role that can connect can forge a notification. A
        // keys-only source takes nothing but the number from one: every row is read from the
        // table, even when a (forged) payload carries one.
        let body = if payload.needs_fetch() || self.inner.ctx.source.keys_only {
            NoticeBody::Fetch
        } else if payload.op == Op::Delete {
            NoticeBody::Ready(Event::delete(payload.seq, &payload.id))
        } else {
            match payload.row {
                Some(row) => NoticeBody::Ready(Event::reply(payload.seq, row.get())),
                None => NoticeBody::Fetch,
            }
        };
        // Sent outside the lock so that rendering never holds it. A task that retired meanwhile
        // had no subscribers, and a new task's baseline is read after this change committed.
        let _ = inbox.try_send(ThreadMsg::Notice(Notice {
            seq: payload.seq,
            body,
        }));
    }

    /// Asks every thread task to read what committed while notifications may have been missed
    /// (called each time the LISTEN connection is (re-)established).
    pub(crate) fn resync_all(&self) {
        for inbox in self.threads().values() {
            let _ = inbox.try_send(ThreadMsg::Resync);
        }
    }

    /// Removes `thread`'s task if its inbox is empty; the task stops when this returns true.
    pub(crate) fn retire(&self, thread: &str, inbox: &Receiver<ThreadMsg>) -> bool {
        let mut threads = self.threads();
        if !inbox.is_empty() {
            return false;
        }
        threads.remove(thread);
        true
    }

    /// The number of threads that have a task (threads with subscribers).
    pub fn thread_count(&self) -> usize {
        self.threads().len()
    }

    fn unsubscribe(&self, thread: &str, id: u64) {
        if let Some(inbox) = self.threads().get(thread) {
            let _ = inbox.try_send(ThreadMsg::Unsubscribe(id));
        }
    }
}

/// One subscriber's end: its bounded queue of events. Dropping it unsubscribes.
pub struct Subscription {
    hub: Hub,
    thread: Arc<str>,
    id: u64,
    events: Receiver<Event>,
    joined: Option<oneshot::Receiver<i64>>,
}

impl Subscription {
    /// Waits until the thread's task has registered this subscriber and returns the last seq it
    /// had forwarded by then: every change after it reaches this subscriber, in seq order. None
    /// if the hub is shutting down.
    pub async fn joined(&mut self) -> Option<i64> {
        self.joined.take()?.await.ok()
    }

    /// The next event; None once the subscriber was dropped as too slow or the hub stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The thread this subscription follows.
    pub fn thread(&self) -> &str {
        &self.thread
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.thread, self.id);
    }
}
