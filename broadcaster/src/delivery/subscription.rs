//! [`Subscription`]: one subscriber's end of its thread, a bounded queue of events. Dropping it
//! unsubscribes.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::msg::Control;
use super::queue::Receiver;
use super::registry::Registry;
use crate::sse::Event;

/// One subscriber of one thread.
pub struct Subscription {
    pub(crate) registry: Arc<Registry>,
    pub(crate) thread: Arc<str>,
    pub(crate) id: u64,
    pub(crate) events: Receiver<Event>,
    pub(crate) joined: Option<oneshot::Receiver<i64>>,
}

impl Subscription {
    /// Waits until the thread's task has registered this subscriber and returns the last seq it
    /// had forwarded by then: every change after it reaches this subscriber, in seq order. None
    /// if delivery is shutting down.
    pub async fn joined(&mut self) -> Option<i64> {
        self.joined.take()?.await.ok()
    }

    /// The next event; None once the subscriber was dropped as too slow or delivery stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The thread this subscription follows.
    pub fn thread(&self) -> &Arc<str> {
        &self.thread
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry
            .control(&self.thread, Control::Unsubscribe(self.id));
    }
}
