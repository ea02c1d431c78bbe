//! What a notification is trusted for: the one place that decides.
//!
//! NOTIFY needs no privilege: any role that can connect may send any payload on any channel. So
//! a notification is trusted for nothing but this:
//! - it must carry a valid signature by a key of `threadcast.keys` ([`Payload::verify`]), and name
//!   the served table by oid, on its channel; anything else is dropped, counted
//!   (`threadcast_notifications_rejected_total`) and reported in a rate-limited WARN;
//! - its number says that the thread has changed *up to* that seq, and only up to the thread's
//!   counter: a repair never goes past `current_seq` ([`bound`]);
//! - its row is used only on a source that sends rows (`payload => 'full'`); a keys-only source
//!   reads every row from the table.
//!
//! A replayed genuine notification is harmless: its seq is at or below what the thread already
//! forwarded, and delivery forwards each seq once. Under batched delivery a notification may be a
//! batch, whose members are judged one by one exactly as single ones (the batch itself is not
//! signed, so it is trusted for nothing), or a resync notice, trusted only when signed.

use std::num::NonZeroU32;
use std::sync::RwLock;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use threadcast_payload::{KeyRing, Op, Payload, PayloadError, Resync};

use super::msg::{Notice, NoticeBody};
use crate::source::Source;
use crate::sse::Event;

/// At most one WARN about rejected notifications this often: a flood of forged ones must not
/// become a flood of log lines.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What one notification amounts to.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A genuine change of the served table: its thread and what it is trusted for.
    Admit(String, Notice),
    /// Not ours to judge: another channel, or another table on a shared channel.
    Ignore,
    /// Refused: forged, tampered with, or unreadable.
    Reject(PayloadError),
}

/// The rule for one served source.
pub(crate) struct Trust {
    rule: RwLock<Rule>,
    keys: RwLock<KeyRing>,
    warnings: DefaultDirectRateLimiter,
}

/// What the source's registration says about its notifications.
struct Rule {
    src: u32,
    channel: String,
    keys_only: bool,
    batched: bool,
}

impl Rule {
    fn of(source: &Source) -> Rule {
        Rule {
            src: source.oid,
            channel: source.channel.clone(),
            keys_only: source.keys_only,
            batched: source.batched,
        }
    }
}

impl Trust {
    pub fn new(source: &Source) -> Self {
        Trust {
            rule: RwLock::new(Rule::of(source)),
            keys: RwLock::new(KeyRing::default()),
            warnings: RateLimiter::direct(
                Quota::with_period(WARN_EVERY)
                    .expect("a non-zero period")
                    .allow_burst(NonZeroU32::MIN),
            ),
        }
    }

    /// Replaces the keys notifications are checked with.
    pub fn set_keys(&self, keys: KeyRing) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Follows the source's registration when it changes (`threadcast.enable` run again with
    /// another channel, payload or delivery mode).
    pub fn set_source(&self, source: &Source) {
        *self.rule.write().unwrap_or_else(|e| e.into_inner()) = Rule::of(source);
    }

    /// Whether notifications on `channel` are ours to judge at all.
    pub fn listens_on(&self, channel: &str) -> bool {
        channel == self.rule.read().unwrap_or_else(|e| e.into_inner()).channel
    }

    /// Whether the source is announced by a batch worker, which may lose a tail of changes
    /// (`loss.rs` then sweeps the live threads' counters).
    pub fn batched(&self) -> bool {
        self.rule.read().unwrap_or_else(|e| e.into_inner()).batched
    }

    /// Judges a resync notice (batched delivery): trusted only when signed by a key of
    /// `threadcast.keys`. A replayed genuine one costs at most one resync a second (`loss.rs`).
    pub fn admit_resync(&self, text: &str) -> Result<(), PayloadError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        Resync::verify(text, &keys).map(|_| ())
    }

    /// Judges a notification on `channel` carrying `text`.
    pub fn admit(&self, channel: &str, text: &str) -> Verdict {
        let rule = self.rule.read().unwrap_or_else(|e| e.into_inner());
        if channel != rule.channel {
            return Verdict::Ignore;
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let payload = match Payload::verify(text, &keys) {
            Ok(payload) => payload,
            Err(error) => return Verdict::Reject(error),
        };
        // The channel may be shared with other sources; only ours is served. The oid is signed,
        // and unlike a name it survives a rename.
        if payload.src != Some(rule.src) {
            tracing::trace!(table = %payload.table, "notification for another table");
            return Verdict::Ignore;
        }
        let body = match (payload.op, payload.row) {
            (Op::Reset, _) => NoticeBody::Ready(Event::reset(payload.seq)),
            _ if rule.keys_only || payload.needs_fetch() => NoticeBody::Fetch,
            (Op::Delete, _) => NoticeBody::Ready(Event::delete(payload.seq, &payload.id)),
            (_, Some(row)) => NoticeBody::Ready(Event::reply(payload.seq, row.get())),
            (_, None) => NoticeBody::Fetch,
        };
        let notice = Notice {
            seq: payload.seq,
            body,
        };
        Verdict::Admit(payload.thread.into_owned(), notice)
    }

    /// The thread a notification on our channel and table names, its signature unchecked: only
    /// for asking that thread to read the table, which trusts nothing else from it.
    pub fn unverified_thread(&self, channel: &str, text: &str) -> Option<String> {
        let payload = Payload::decode(text).ok()?;
        let rule = self.rule.read().unwrap_or_else(|e| e.into_inner());
        (channel == rule.channel && payload.src == Some(rule.src))
            .then(|| payload.thread.into_owned())
    }

    /// Reports a refused notification, at most once per [`WARN_EVERY`].
    pub fn warn_rejected(&self, error: &PayloadError) {
        if self.warnings.check().is_ok() {
            tracing::warn!(
                %error,
                "dropped a notification that is not a genuine threadcast change (forged, tampered \
                 with or malformed; threadcast_notifications_rejected_total counts them all)"
            );
        }
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
    use threadcast_payload::{Key, KEY_BYTES};

    const THREAD: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    fn payload(src: u32, seq: i64, tail: &str) -> String {
        format!(
            r#"{{"v":2,"op":"I","table":"public.feedback_replies","src":{src},"thread":"{THREAD}","seq":{seq},"id":"x"{tail}}}"#
        )
    }

    /// `text` signed with `key`, as the extension signs.
    fn signed(text: &str, key: &Key) -> String {
        Payload::decode(&format!("{},\"kid\":{}}}", &text[..text.len() - 1], key.id))
            .map(|p| p.sign(key).unwrap())
            .unwrap()
    }

    fn trust(keys_only: bool) -> Trust {
        let trust = Trust::new(&MemStore::source(keys_only));
        trust.set_keys(KeyRing::new([MemStore::KEY]));
        trust
    }

    const SRC: u32 = 16384;

    #[test]
    fn only_signed_payloads_of_the_served_table_on_its_channel_are_admitted() {
        let trust = trust(false);
        let ours = signed(&payload(SRC, 3, r#","row":{"a":1}"#), &MemStore::KEY);
        let Verdict::Admit(thread, notice) = trust.admit("threadcast", &ours) else {
            panic!("ours is admitted");
        };
        assert_eq!((thread.as_str(), notice.seq), (THREAD, 3));
        assert!(matches!(notice.body, NoticeBody::Ready(_)));
        assert!(
            matches!(trust.admit("other", &ours), Verdict::Ignore),
            "another channel"
        );
        let theirs = signed(&payload(SRC + 1, 3, r#","row":{"a":1}"#), &MemStore::KEY);
        assert!(
            matches!(trust.admit("threadcast", &theirs), Verdict::Ignore),
            "another table"
        );
        assert!(matches!(
            trust.admit("threadcast", "not json"),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn a_forged_or_tampered_payload_is_rejected() {
        let trust = trust(false);
        let forger = Key {
            id: MemStore::KEY.id,
            secret: [9; KEY_BYTES],
        };
        let forged = signed(&payload(SRC, 4, r#","row":{"a":1}"#), &forger);
        assert!(matches!(
            trust.admit("threadcast", &forged),
            Verdict::Reject(PayloadError::BadSignature)
        ));
        let genuine = signed(&payload(SRC, 4, r#","row":{"a":1}"#), &MemStore::KEY);
        let bumped = genuine.replace(r#""seq":4"#, r#""seq":5"#);
        assert!(matches!(
            trust.admit("threadcast", &bumped),
            Verdict::Reject(_)
        ));
        let unknown = signed(
            &payload(SRC, 4, r#","row":{}"#),
            &Key {
                id: 99,
                secret: [1; KEY_BYTES],
            },
        );
        assert!(matches!(
            trust.admit("threadcast", &unknown),
            Verdict::Reject(PayloadError::UnknownKey(99))
        ));
    }

    #[test]
    fn a_keys_only_source_takes_no_row_from_a_notification() {
        let trust = trust(true);
        let text = signed(
            &payload(SRC, 1, r#","row":{"content":"x"}"#),
            &MemStore::KEY,
        );
        let Verdict::Admit(_, notice) = trust.admit("threadcast", &text) else {
            panic!("admitted");
        };
        assert!(matches!(notice.body, NoticeBody::Fetch));
    }

    #[test]
    fn a_number_past_the_counter_is_not_trusted() {
        assert_eq!(bound(1_000_000, 4), 4);
        assert_eq!(bound(3, 4), 3);
    }
}
