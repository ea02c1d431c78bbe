//! The registry of thread tasks: the inbox of each thread that has subscribers. A thread has a
//! task only while it has subscribers; notifications for a thread without one are dropped on the
//! spot, since nobody is listening and a later subscriber reads the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::msg::ThreadMsg;
use super::queue::{Receiver, Sender};

/// Thread key (the thread column's text form) → the inbox of its task.
///
/// **Lock discipline.** Every message is queued while this lock is held, and a task retires
/// (leaves the map) only under it, after finding its inbox empty. So a message is never queued
/// for a task that has already looked at its inbox for the last time: a subscriber never joins a
/// task that is gone, and a notice never lands behind a retirement. The lock is held for a map
/// look-up and a queue push, never across an await or while rendering.
#[derive(Default)]
pub(crate) struct Registry {
    threads: Mutex<HashMap<Arc<str>, Sender<ThreadMsg>>>,
}

impl Registry {
    fn threads(&self) -> MutexGuard<'_, HashMap<Arc<str>, Sender<ThreadMsg>>> {
        // Every change under the lock is one insert or remove: a panic cannot leave it half done,
        // so a poisoned lock is still good to use.
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` for `thread`'s task, starting one with `spawn` if the thread has none (or
    /// only a dead one and `respawn` allows replacing it). Returns the shared key.
    pub fn send_or_spawn(
        &self,
        thread: &str,
        respawn: bool,
        spawn: impl FnOnce(Arc<str>) -> Sender<ThreadMsg>,
        msg: ThreadMsg,
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
        let _ = threads[&key].try_send(msg);
        key
    }

    /// Queues `msg` for `thread`'s task if it has one.
    pub fn send(&self, thread: &str, msg: ThreadMsg) {
        if let Some(inbox) = self.threads().get(thread) {
            let _ = inbox.try_send(msg);
        }
    }

    /// Queues a message made by `msg` for every task.
    pub fn send_all(&self, msg: impl Fn() -> ThreadMsg) {
        for inbox in self.threads().values() {
            let _ = inbox.try_send(msg());
        }
    }

    /// Removes `thread`'s task if its inbox is empty; the task stops when this returns true.
    pub fn retire(&self, thread: &str, inbox: &Receiver<ThreadMsg>) -> bool {
        let mut threads = self.threads();
        if !inbox.is_empty() {
            return false;
        }
        threads.remove(thread);
        true
    }

    /// The number of threads with a task.
    pub fn len(&self) -> usize {
        self.threads().len()
    }
}
