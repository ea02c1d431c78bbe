//! What a thread's task is told: subscription changes ([`Control`], queued in order) and notices
//! (what delivery takes from one notification once [`trust`](super::trust) has judged it, which
//! the [`inbox`](super::inbox) coalesces).

use tokio::sync::oneshot;

use super::queue;
use crate::sse::Event;

/// A subscription change, handled in the order it came.
pub(crate) enum Control {
    Subscribe {
        id: u64,
        events: queue::Sender<Event>,
        /// Answered with the last seq forwarded before this subscriber joined.
        joined: oneshot::Sender<i64>,
    },
    Unsubscribe(u64),
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
