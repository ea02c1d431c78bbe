//! The two notification forms of batched delivery (`threadcast.enable(..., delivery =>
//! 'batched')`), besides the single change of [`Payload`](crate::Payload):
//!
//! - a **batch**, several signed changes in one notification, each member byte for byte as the
//!   writer's backend signed it: `{"v":2,"batch":[<payload>,<payload>,...]}`. The batch itself is
//!   not signed; each member is, and a reader verifies each member as it would a single one. A
//!   batch of one is never sent: one change travels in the single form.
//! - a **resync**, signed: `{"v":2,"resync":"overflow","at":<µs>,"kid":1,"sig":"..."}`. The
//!   database says that changes may have committed without a notification (its ring of pending
//!   notifications overflowed, or the worker that sends them restarted), so a reader must read
//!   every live thread from the table.
//!
//! [`Notification::parse`] tells the three forms apart without trusting anything.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::sign::{self, Key};
use crate::{KeyRing, PayloadError, FORMAT_VERSION, MAX_PAYLOAD_BYTES};

const BATCH_PREFIX: &str = "{\"v\":2,\"batch\":[";
const BATCH_SUFFIX: &str = "]}";
const RESYNC_PREFIX: &str = "{\"v\":2,\"resync\":";
/// What a batch starts with, whatever follows: a malformed batch is refused as a batch.
const BATCH_MARK: &str = "{\"v\":2,\"batch\":";

/// Bytes a batch adds around its members, besides the commas between them.
pub const BATCH_OVERHEAD: usize = BATCH_PREFIX.len() + BATCH_SUFFIX.len();

/// One notification, as far as its form goes; nothing in it is trusted yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Notification<'a> {
    /// A single change: verify it with [`Payload::verify`](crate::Payload::verify).
    Change(&'a str),
    /// Several changes, each to verify on its own, in the order they committed.
    Batch(Vec<&'a str>),
    /// A resync notice: verify it with [`Resync::verify`].
    Resync(&'a str),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchDoc<'a> {
    v: u32,
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
}

impl<'a> Notification<'a> {
    /// Tells the form of `text`. A batch's members are returned as the exact text they had in
    /// the batch, so that each verifies byte for byte. Never panics.
    pub fn parse(text: &'a str) -> Result<Notification<'a>, PayloadError> {
        if text.starts_with(BATCH_MARK) {
            let doc: BatchDoc<'a> =
                serde_json::from_str(text).map_err(|e| PayloadError::Malformed(e.to_string()))?;
            if doc.v != FORMAT_VERSION {
                return Err(PayloadError::Version(doc.v));
            }
            return Ok(Notification::Batch(
                doc.batch.into_iter().map(RawValue::get).collect(),
            ));
        }
        if text.starts_with(RESYNC_PREFIX) {
            return Ok(Notification::Resync(text));
        }
        Ok(Notification::Change(text))
    }
}

/// Packs signed single payloads into as few notifications as fit in NOTIFY's limit, in order.
#[derive(Default)]
pub struct BatchWriter {
    text: String,
    members: usize,
    first_end: usize,
}

impl BatchWriter {
    pub fn new() -> BatchWriter {
        BatchWriter::default()
    }

    /// Adds `member` if the notification still fits; false when it is full (take it with
    /// [`BatchWriter::take`] and push again). A member too long for any batch is taken alone.
    pub fn push(&mut self, member: &str) -> bool {
        if self.members == 0 {
            self.text.clear();
            self.text.push_str(BATCH_PREFIX);
            self.text.push_str(member);
            self.first_end = self.text.len();
            self.members = 1;
            return true;
        }
        if self.text.len() + 1 + member.len() + BATCH_SUFFIX.len() > MAX_PAYLOAD_BYTES {
            return false;
        }
        self.text.push(',');
        self.text.push_str(member);
        self.members += 1;
        true
    }

    /// How many changes the pending notification holds.
    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The pending notification (a lone change in its single form), and starts afresh.
    pub fn take(&mut self) -> Option<String> {
        let members = std::mem::take(&mut self.members);
        match members {
            0 => None,
            1 => Some(self.text[BATCH_PREFIX.len()..self.first_end].to_owned()),
            _ => {
                self.text.push_str(BATCH_SUFFIX);
                Some(std::mem::take(&mut self.text))
            }
        }
    }
}

/// Why a database asks its readers to read every live thread from the table.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The ring of pending notifications was full at a commit: its changes were dropped.
    Overflow,
    /// The worker that sends notifications (re)started: what a previous one held may be lost.
    Restart,
}

/// A signed resync notice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resync {
    pub v: u32,
    pub resync: ResyncReason,
    /// When the database sent it, in microseconds since the Unix epoch (makes each one unique).
    pub at: i64,
    pub kid: u32,
    #[serde(default, skip_serializing)]
    pub sig: Option<String>,
}

impl Resync {
    /// A notice for `reason`, signed with `key`.
    pub fn sign(reason: ResyncReason, at: i64, key: &Key) -> String {
        let notice = Resync {
            v: FORMAT_VERSION,
            resync: reason,
            at,
            kid: key.id,
            sig: None,
        };
        let json = serde_json::to_string(&notice).expect("a Resync always serializes");
        sign::append(json, key)
    }

    /// Decodes a resync notice and checks its signature against `keys`. Never panics.
    pub fn verify(text: &str, keys: &KeyRing) -> Result<Resync, PayloadError> {
        let notice: Resync =
            serde_json::from_str(text).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        if notice.v != FORMAT_VERSION {
            return Err(PayloadError::Version(notice.v));
        }
        let key = keys
            .get(notice.kid)
            .ok_or(PayloadError::UnknownKey(notice.kid))?;
        sign::check(text, key)?;
        Ok(notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, Payload, KEY_BYTES};

    const KEY: Key = Key {
        id: 3,
        secret: [5; KEY_BYTES],
    };

    fn change(seq: i64, content_len: usize) -> String {
        let row = format!(r#"{{"content":"{}"}}"#, "x".repeat(content_len));
        let row: &RawValue = serde_json::from_str(&row).unwrap();
        Payload {
            v: FORMAT_VERSION,
            op: Op::Insert,
            table: "public.feedback_replies".into(),
            src: Some(16384),
            thread: "t".into(),
            seq,
            id: seq.to_string().into(),
            row: Some(row),
            omitted: None,
            kid: None,
            sig: None,
        }
        .sign(&KEY)
        .unwrap()
    }

    fn pack(members: &[String]) -> Vec<String> {
        let mut writer = BatchWriter::new();
        let mut out = Vec::new();
        for m in members {
            if !writer.push(m) {
                out.extend(writer.take());
                assert!(writer.push(m), "an empty batch takes any member");
            }
        }
        out.extend(writer.take());
        out
    }

    #[test]
    fn changes_are_packed_in_order_under_the_limit_and_each_verifies() {
        let members: Vec<String> = (1..=60).map(|seq| change(seq, 300)).collect();
        let notifications = pack(&members);
        assert!(
            notifications.len() > 1 && notifications.len() < 10,
            "{} notifications",
            notifications.len()
        );
        let keys = KeyRing::new([KEY]);
        let mut seqs = Vec::new();
        for n in &notifications {
            assert!(n.len() <= MAX_PAYLOAD_BYTES, "{} bytes", n.len());
            let Notification::Batch(parts) = Notification::parse(n).unwrap() else {
                panic!("a batch: {n}");
            };
            for part in parts {
                seqs.push(Payload::verify(part, &keys).unwrap().seq);
            }
        }
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    }

    #[test]
    fn a_lone_change_and_one_too_big_for_a_batch_travel_in_the_single_form() {
        // The longest change that still carries its row, too long to be wrapped in a batch.
        let big = (0..MAX_PAYLOAD_BYTES)
            .rev()
            .map(|n| change(1, n))
            .find(|c| c.contains("\"row\""))
            .unwrap();
        assert!(
            big.len() + BATCH_OVERHEAD > MAX_PAYLOAD_BYTES,
            "{}",
            big.len()
        );
        let small = change(2, 10);
        let notifications = pack(&[big.clone(), small.clone()]);
        assert_eq!(notifications, vec![big.clone(), small]);
        assert_eq!(
            Notification::parse(&big).unwrap(),
            Notification::Change(&big)
        );
    }

    #[test]
    fn a_resync_is_signed_and_a_forged_one_is_refused() {
        let keys = KeyRing::new([KEY]);
        let text = Resync::sign(ResyncReason::Overflow, 1_700_000_000_000_000, &KEY);
        assert!(
            text.starts_with(r#"{"v":2,"resync":"overflow","at":1700000000000000,"kid":3,"sig":""#),
            "{text}"
        );
        assert_eq!(
            Notification::parse(&text).unwrap(),
            Notification::Resync(&text)
        );
        let notice = Resync::verify(&text, &keys).unwrap();
        assert_eq!(notice.resync, ResyncReason::Overflow);
        let forged = text.replace("overflow", "restart");
        assert_eq!(
            Resync::verify(&forged, &keys),
            Err(PayloadError::BadSignature)
        );
        let other = Key {
            id: 3,
            secret: [6; KEY_BYTES],
        };
        let foreign = Resync::sign(ResyncReason::Restart, 1, &other);
        assert_eq!(
            Resync::verify(&foreign, &keys),
            Err(PayloadError::BadSignature)
        );
    }

    #[test]
    fn malformed_batches_are_refused_not_panicked_on() {
        for text in [
            r#"{"v":2,"batch":["#,
            r#"{"v":2,"batch":[1,2],"x":1}"#,
            r#"{"v":2,"batch":{}}"#,
            r#"{"v":2,"resync":"#,
        ] {
            let parsed = Notification::parse(text);
            match parsed {
                Ok(Notification::Resync(t)) => {
                    assert!(Resync::verify(t, &KeyRing::default()).is_err())
                }
                other => assert!(other.is_err(), "{text}: {other:?}"),
            }
        }
        assert_eq!(
            Notification::parse(r#"{"v":2,"batch":[]}"#).unwrap(),
            Notification::Batch(vec![]),
            "an empty batch carries nothing"
        );
    }
}
