//! The messages a thread's task reads from its inbox, and the notice: what delivery takes from one
//! notification once [`trust`](super::trust) has judged it.

use tokio::sync::oneshot;

use super::queue;
use crate::sse::Event;

/// A message to a thread's task. Order matters: the task handles them in the order they were
/// queued, so a subscriber joins after every notice queued before it.
pub(crate) enum ThreadMsg {
    Notice(Notice),
    Subscribe {
        id: u64,
        events: queue::Sender<Event>,
        /// Answered with the last seq forwarded before this subscriber joined.
        joined: oneshot::Sender<i64>,
    },
    Unsubscribe(u64),
    /// Notifications may have been lost (the LISTEN connection was down): read the table.
    Resync,
}

/// One notification of a thread, as far as it is trusted.
#[derive(Debug)]
pub(crate) struct Notice {
    /// The number the notification claims; trusted only up to the thread's counter.
    pub seq: i64,
    pub body: NoticeBody,
}

#[derive(Debug)]
pub(crate) enum NoticeBody {
    /// The event, rendered from the payload (a full source's insert, update or delete).
    Ready(Event),
    /// The change must be read from the table (the row was left out, or the source is
    /// keys-only and takes no content from a notification).
    Fetch,
}
