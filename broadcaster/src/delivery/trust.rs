//! What a notification is trusted for: the one place that decides.
//!
//! NOTIFY needs no privilege: any role that can connect may send any payload on any channel. So
//! a notification is trusted for nothing but this:
//! - it must decode as a payload of the served table on its channel (anything else is ignored);
//! - its number says that the thread has changed *up to* that seq, and only up to the thread's
//!   counter: a repair never goes past `current_seq` ([`bound`]), or a forged far-ahead number
//!   would make every real change up to it look delivered;
//! - its row is used only on a source that sends rows (`payload => 'full'`); a keys-only source
//!   reads every row from the table, whatever a (forged) payload carries.
//!
//! A signed payload format would be checked in [`Trust::admit`]; a new kind of change (a
//! `reset`) would become a [`NoticeBody`] of its own there.

use threadcast_payload::{Op, Payload};

use super::msg::{Notice, NoticeBody};
use crate::source::Source;
use crate::sse::Event;

/// The rule for one served source.
pub(crate) struct Trust {
    table: String,
    channel: String,
    keys_only: bool,
}

impl Trust {
    pub fn new(source: &Source) -> Self {
        Trust {
            table: source.name.clone(),
            channel: source.channel.clone(),
            keys_only: source.keys_only,
        }
    }

    /// The thread and the notice that a notification on `channel` carrying `text` gives; None
    /// for one that is not a payload of the served table.
    pub fn admit(&self, channel: &str, text: &str) -> Option<(String, Notice)> {
        if channel != self.channel {
            return None;
        }
        let payload = match Payload::decode(text) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "ignoring a notification that is not a threadcast payload");
                return None;
            }
        };
        // The channel may be shared with other sources; only ours is served.
        if payload.table != self.table {
            tracing::trace!(table = %payload.table, "notification for another table");
            return None;
        }
        let body = match (payload.op, payload.row) {
            _ if self.keys_only || payload.needs_fetch() => NoticeBody::Fetch,
            (Op::Delete, _) => NoticeBody::Ready(Event::delete(payload.seq, &payload.id)),
            (_, Some(row)) => NoticeBody::Ready(Event::reply(payload.seq, row.get())),
            (_, None) => NoticeBody::Fetch,
        };
        let notice = Notice {
            seq: payload.seq,
            body,
        };
        Some((payload.thread.into_owned(), notice))
    }
}

/// The highest seq a repair may read to when a notification claims `claimed` and the thread's
/// counter is `current`. A notification arrives only after its change committed, so a real one
/// is never past the counter read after it; a higher number was forged.
pub(crate) fn bound(claimed: i64, current: i64) -> i64 {
    if claimed > current {
        tracing::warn!(
            seq = claimed,
            current,
            "ignoring a notification for a number the thread has not handed out"
        );
    }
    claimed.min(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const THREAD: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    fn payload(table: &str, seq: i64, tail: &str) -> String {
        format!(
            r#"{{"v":1,"op":"I","table":"{table}","thread":"{THREAD}","seq":{seq},"id":"x"{tail}}}"#
        )
    }

    #[test]
    fn only_payloads_of_the_served_table_on_its_channel_are_admitted() {
        let trust = Trust::new(&MemStore::source(false));
        let ours = payload("public.feedback_replies", 3, r#","row":{"a":1}"#);
        let (thread, notice) = trust.admit("threadcast", &ours).expect("ours");
        assert_eq!((thread.as_str(), notice.seq), (THREAD, 3));
        assert!(matches!(notice.body, NoticeBody::Ready(_)));
        assert!(trust.admit("other", &ours).is_none(), "another channel");
        let theirs = payload("public.other", 3, r#","row":{"a":1}"#);
        assert!(
            trust.admit("threadcast", &theirs).is_none(),
            "another table"
        );
        assert!(trust.admit("threadcast", "not json").is_none());
    }

    #[test]
    fn a_keys_only_source_takes_no_row_from_a_notification() {
        let trust = Trust::new(&MemStore::source(true));
        let forged = payload(
            "public.feedback_replies",
            1,
            r#","row":{"content":"forged"}"#,
        );
        let (_, notice) = trust.admit("threadcast", &forged).unwrap();
        assert!(matches!(notice.body, NoticeBody::Fetch));
    }

    #[test]
    fn a_number_past_the_counter_is_not_trusted() {
        assert_eq!(bound(1_000_000, 4), 4);
        assert_eq!(bound(3, 4), 3);
    }
}
