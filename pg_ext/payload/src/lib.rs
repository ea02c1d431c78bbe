//! The NOTIFY payload: the one contract between the `threadcast` extension, which writes it, and
//! the broadcaster, which reads it. `docs/payload.md` describes the same format for humans.
//!
//! ```text
//! {"v":2,"op":"I","table":"public.feedback_replies","src":16384,"thread":"<key>","seq":17,"id":"<pk>","row":{...},"kid":1,"sig":"<HMAC>"}
//! ```
//!
//! The extension signs with [`Payload::sign`]; the broadcaster accepts only what
//! [`Payload::verify`] accepts. Any role that can connect may NOTIFY on any channel, so an unsigned
//! or badly signed payload is never trusted (see [`sign`]). [`Payload::decode`] checks the shape
//! only, for tools and tests that inspect payloads. Keeping both directions on one type means a
//! change to the format is a compile error on both sides, not a silent mismatch. The names both
//! sides spell (the broadcaster's `application_name`, the payload and delivery modes, the kinds of
//! change) are in [`names`]. Batched delivery's two other forms, a batch of changes and a resync
//! notice, are in [`batch`].

pub mod batch;
pub mod names;
pub mod sign;

use std::borrow::Cow;

pub use batch::{BatchWriter, Notification, Resync, ResyncReason};
pub use names::{
    ChangeKind, DeliveryMode, PayloadMode, UnknownPayloadMode, APPLICATION_NAME, JOINED_EVENT,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use sign::{Key, KeyRing, KEY_BYTES, SIGNATURE_BYTES};

/// The format version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 2;

/// The unsigned format of threadcast 0.1.0, which the extension still writes while a database
/// runs the 0.2 library under 0.1.0's SQL objects (until `ALTER EXTENSION threadcast UPDATE`).
pub const LEGACY_VERSION: u32 = 1;

/// The longest payload PostgreSQL accepts: `pg_notify` refuses 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;

/// What happened.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    #[serde(rename = "I")]
    Insert,
    #[serde(rename = "U")]
    Update,
    #[serde(rename = "D")]
    Delete,
    /// The table was truncated: every earlier change of the thread is gone. `id` is empty.
    #[serde(rename = "T")]
    Reset,
}

/// Why an insert or update payload carries no `row`; the consumer then reads the row by `id`.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Omitted {
    /// The row would have pushed the payload past [`MAX_PAYLOAD_BYTES`].
    TooLarge,
    /// The source is configured with `payload => 'keys'`: no content travels over NOTIFY.
    KeysOnly,
}

/// One notification: one committed change of one row of a threadcast source.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Payload<'a> {
    /// [`FORMAT_VERSION`] ([`LEGACY_VERSION`] only from the legacy encoder).
    pub v: u32,
    pub op: Op,
    /// The source table, schema-qualified and quoted as `regclass` prints it.
    #[serde(borrow)]
    pub table: Cow<'a, str>,
    /// The source table's oid: what a consumer matches on, since a name can be renamed away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<u32>,
    /// The thread key as PostgreSQL's text output of the thread column.
    #[serde(borrow)]
    pub thread: Cow<'a, str>,
    /// The per-thread sequence number of this change (1, 2, 3, ... in commit order).
    pub seq: i64,
    /// The primary key as PostgreSQL's text output; empty for [`Op::Reset`].
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The whole row as `row_to_json` renders it; present on inserts and updates unless omitted.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub row: Option<&'a RawValue>,
    /// Set when an insert or update carries no row, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
    /// The id of the key that signed this payload (`threadcast.keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<u32>,
    /// The signature; always the last member, see [`sign`]. Never set by hand.
    #[serde(borrow, default, skip_serializing)]
    pub sig: Option<Cow<'a, str>>,
}

// RawValue has no PartialEq: two payloads are equal when their rows are the same JSON text.
impl PartialEq for Payload<'_> {
    fn eq(&self, other: &Self) -> bool {
        (
            self.v,
            self.op,
            &self.table,
            self.src,
            &self.thread,
            self.seq,
            &self.id,
            self.omitted,
            self.kid,
        ) == (
            other.v,
            other.op,
            &other.table,
            other.src,
            &other.thread,
            other.seq,
            &other.id,
            other.omitted,
            other.kid,
        ) && self.row.map(RawValue::get) == other.row.map(RawValue::get)
    }
}

/// Why a payload could not be encoded, decoded or trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("payload is not valid threadcast JSON: {0}")]
    Malformed(String),
    #[error("unsupported payload format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("sequence number {0} is out of range (must be 1 or more)")]
    Seq(i64),
    #[error("an {0:?} payload must carry either a row or the reason it was omitted")]
    MissingRow(Op),
    #[error("a version {FORMAT_VERSION} payload must name its source oid and its key id")]
    Unsigned,
    #[error("the payload is signed with key {0}, which is not among the known keys")]
    UnknownKey(u32),
    #[error("the signature does not match the payload")]
    BadSignature,
    #[error(
        "even without its row the payload is {0} bytes, over NOTIFY's limit of {MAX_PAYLOAD_BYTES}"
    )]
    TooLong(usize),
}

impl<'a> Payload<'a> {
    /// Decodes and checks the shape of one payload, signature NOT checked: for tools and tests.
    /// A consumer that acts on payloads uses [`Payload::verify`]. Never panics.
    pub fn decode(text: &'a str) -> Result<Self, PayloadError> {
        let p: Payload<'a> =
            serde_json::from_str(text).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        if p.v != FORMAT_VERSION {
            return Err(PayloadError::Version(p.v));
        }
        if p.src.is_none() || p.kid.is_none() {
            return Err(PayloadError::Unsigned);
        }
        if p.seq < 1 {
            return Err(PayloadError::Seq(p.seq));
        }
        if matches!(p.op, Op::Insert | Op::Update) && p.row.is_none() && p.omitted.is_none() {
            return Err(PayloadError::MissingRow(p.op));
        }
        Ok(p)
    }

    /// Decodes one payload and checks its signature against `keys`: the only way a consumer
    /// should read a notification. Never panics.
    pub fn verify(text: &'a str, keys: &KeyRing) -> Result<Self, PayloadError> {
        let p = Payload::decode(text)?;
        let kid = p.kid.ok_or(PayloadError::Unsigned)?;
        let key = keys.get(kid).ok_or(PayloadError::UnknownKey(kid))?;
        sign::check(text, key)?;
        Ok(p)
    }

    /// Encodes and signs the payload with `key`, so that it fits in one NOTIFY: when the row
    /// would push it past [`MAX_PAYLOAD_BYTES`], the row is left out and `omitted` says
    /// `too_large`.
    pub fn sign(mut self, key: &Key) -> Result<String, PayloadError> {
        self.v = FORMAT_VERSION;
        self.kid = Some(key.id);
        let text = self.fit(MAX_PAYLOAD_BYTES - SIGNATURE_BYTES)?;
        Ok(sign::append(text, key))
    }

    /// The unsigned 0.1.0 form (`"v":1`, no `src`, `kid` or `sig`), for the extension's legacy
    /// mode only. Nothing in this version reads it.
    pub fn encode_legacy(mut self) -> Result<String, PayloadError> {
        self.v = LEGACY_VERSION;
        self.src = None;
        self.kid = None;
        self.fit(MAX_PAYLOAD_BYTES)
    }

    /// Whether the consumer must read the row from the table itself.
    pub fn needs_fetch(&self) -> bool {
        matches!(self.op, Op::Insert | Op::Update) && self.row.is_none()
    }

    /// The JSON text, with the row left out when the whole would be longer than `limit`.
    fn fit(&mut self, limit: usize) -> Result<String, PayloadError> {
        let text = self.to_json();
        if text.len() <= limit {
            return Ok(text);
        }
        if self.row.take().is_some() {
            self.omitted = Some(Omitted::TooLarge);
            let text = self.to_json();
            if text.len() <= limit {
                return Ok(text);
            }
            return Err(PayloadError::TooLong(text.len()));
        }
        Err(PayloadError::TooLong(text.len()))
    }

    fn to_json(&self) -> String {
        // Serializing plain strings, integers and already-valid raw JSON cannot fail.
        serde_json::to_string(self).expect("a Payload always serializes")
    }
}

#[cfg(test)]
mod tests;
