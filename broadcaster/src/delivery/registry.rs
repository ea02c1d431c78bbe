//! The registry of thread tasks: the inbox of each thread that has subscribers. A thread has a
//! task only while it has subscribers; notifications for a thread without one are dropped on the
//! spot, since nobody is listening and a later subscriber reads the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::inbox::{Inbox, InboxReader, Offered};
use super::msg::{Control, Notice};

/// Thread key (the thread column's text form) → the inbox of its task.
///
/// **Lock discipline.** Every subscription change is queued while this lock is held, and a task
/// retires (leaves the map) only under it, after finding no subscription change waiting. So a
/// subscriber never joins a task that has already looked at its inbox for the last time. Notices
/// and resyncs are offered under it too, which keeps a retiring task from taking them half way;
/// a retired task's notices are worth nothing (it had no subscribers). The lock is held for a map
/// look-up and an inbox update (the inbox's own lock, always taken after this one), never across
/// an await or while rendering.
#[derive(Default)]
pub(crate) struct Registry {
    threads: Mutex<HashMap<Arc<str>, Inbox>>,
}

impl Registry {
    fn threads(&self) -> MutexGuard<'_, HashMap<Arc<str>, Inbox>> {
        // Every change under the lock is one insert or remove: a panic cannot leave it half done,
        // so a poisoned lock is still good to use.
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` for `thread`'s task, starting one with `spawn` if the thread has none (or
    /// only a dead one and `respawn` allows replacing it). Returns the shared key.
    pub fn control_or_spawn(
        &self,
        thread: &str,
        respawn: bool,
        spawn: impl FnOnce(Arc<str>) -> Inbox,
        msg: Control,
    ) -> Arc<str> {
        let mut threads = self.threads();
        let key: Arc<str> = match threads.get_key_value(thread) {
            Some((key, _)) => key.clone(),
            None => Arc::from(thread),
        };
        // A task only stops without retiring on shutdown; outside shutdown a dead one is replaced
        // rather than left to swallow subscriptions.
        let live = threads
            .get(&key)
            .map(|inbox| !(inbox.is_closed() && respawn));
        if live != Some(true) {
            threads.insert(key.clone(), spawn(key.clone()));
        }
        // A task gone on shutdown refuses; the sender of `msg` learns it from its reply channel.
        let _ = threads[&key].control(msg);
        key
    }

    /// Queues `msg` for `thread`'s task if it has one.
    pub fn control(&self, thread: &str, msg: Control) {
        if let Some(inbox) = self.threads().get(thread) {
            let _ = inbox.control(msg);
        }
    }

    /// Offers `notice` to `thread`'s task; None if the thread has no task.
    pub fn offer(&self, thread: &str, notice: Notice) -> Option<Offered> {
        self.threads().get(thread).map(|inbox| inbox.offer(notice))
    }

    /// Asks `thread`'s task, if it has one, to read its table to the end.
    pub fn resync(&self, thread: &str) {
        if let Some(inbox) = self.threads().get(thread) {
            inbox.resync();
        }
    }

    /// Asks every task to read its thread's table to the end.
    pub fn resync_all(&self) {
        for inbox in self.threads().values() {
            inbox.resync();
        }
    }

    /// Removes `thread`'s task if no subscription change waits in its inbox; the task stops when
    /// this returns true.
    pub fn retire(&self, thread: &str, inbox: &InboxReader) -> bool {
        let mut threads = self.threads();
        if !inbox.no_control() {
            return false;
        }
        threads.remove(thread);
        true
    }

    /// The threads that have a task (for the anti-entropy sweep).
    pub fn live_threads(&self) -> Vec<Arc<str>> {
        self.threads().keys().cloned().collect()
    }

    /// The number of threads with a task.
    pub fn len(&self) -> usize {
        self.threads().len()
    }
}
