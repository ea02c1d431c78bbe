//! The NOTIFY payload: the one contract between the `threadcast` extension, which writes it, and
//! the broadcaster, which reads it. `docs/payload.md` describes the same format for humans.
//!
//! ```text
//! {"v":1,"op":"I","table":"public.feedback_replies","thread":"<key>","seq":17,"id":"<pk>","row":{...}}
//! ```
//!
//! The extension encodes with [`Payload::encode`]; the broadcaster and the tests decode with
//! [`Payload::decode`]. Keeping both directions on one type means a change to the format is a
//! compile error on both sides, not a silent mismatch. The names both sides spell (the
//! broadcaster's `application_name`, the payload modes, the kinds of change) are here too.

use std::borrow::Cow;

mod names;

pub use names::{ChangeKind, PayloadMode, UnknownPayloadMode, APPLICATION_NAME};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The format version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The longest payload PostgreSQL accepts: `pg_notify` refuses 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;

/// What happened to the row.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    #[serde(rename = "I")]
    Insert,
    #[serde(rename = "U")]
    Update,
    #[serde(rename = "D")]
    Delete,
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
    /// Always [`FORMAT_VERSION`].
    pub v: u32,
    pub op: Op,
    /// The source table, schema-qualified and quoted as `regclass` prints it.
    #[serde(borrow)]
    pub table: Cow<'a, str>,
    /// The thread key as PostgreSQL's text output of the thread column.
    #[serde(borrow)]
    pub thread: Cow<'a, str>,
    /// The per-thread sequence number of this change (1, 2, 3, ... in commit order).
    pub seq: i64,
    /// The primary key as PostgreSQL's text output.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The whole row as `row_to_json` renders it; present on inserts and updates unless omitted.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub row: Option<&'a RawValue>,
    /// Set when an insert or update carries no row, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
}

// RawValue has no PartialEq: two payloads are equal when their rows are the same JSON text.
impl PartialEq for Payload<'_> {
    fn eq(&self, other: &Self) -> bool {
        (
            self.v,
            self.op,
            &self.table,
            &self.thread,
            self.seq,
            &self.id,
            self.omitted,
        ) == (
            other.v,
            other.op,
            &other.table,
            &other.thread,
            other.seq,
            &other.id,
            other.omitted,
        ) && self.row.map(RawValue::get) == other.row.map(RawValue::get)
    }
}

/// Why a payload could not be encoded or decoded.
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
    #[error(
        "even without its row the payload is {0} bytes, over NOTIFY's limit of {MAX_PAYLOAD_BYTES}"
    )]
    TooLong(usize),
}

impl<'a> Payload<'a> {
    /// Decodes and validates one payload. Any input either decodes or is refused; it never panics.
    pub fn decode(text: &'a str) -> Result<Self, PayloadError> {
        let p: Payload<'a> =
            serde_json::from_str(text).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        if p.v != FORMAT_VERSION {
            return Err(PayloadError::Version(p.v));
        }
        if p.seq < 1 {
            return Err(PayloadError::Seq(p.seq));
        }
        if p.op != Op::Delete && p.row.is_none() && p.omitted.is_none() {
            return Err(PayloadError::MissingRow(p.op));
        }
        Ok(p)
    }

    /// Encodes the payload so that it fits in one NOTIFY: when the row would push it past
    /// [`MAX_PAYLOAD_BYTES`], the row is left out and `omitted` says `too_large`.
    pub fn encode(mut self) -> Result<String, PayloadError> {
        let text = self.to_json();
        if text.len() <= MAX_PAYLOAD_BYTES {
            return Ok(text);
        }
        if self.row.take().is_some() {
            self.omitted = Some(Omitted::TooLarge);
            let text = self.to_json();
            if text.len() <= MAX_PAYLOAD_BYTES {
                return Ok(text);
            }
            return Err(PayloadError::TooLong(text.len()));
        }
        Err(PayloadError::TooLong(text.len()))
    }

    /// Whether the consumer must read the row from the table itself.
    pub fn needs_fetch(&self) -> bool {
        self.op != Op::Delete && self.row.is_none()
    }

    fn to_json(&self) -> String {
        // Serializing plain strings, integers and already-valid raw JSON cannot fail.
        serde_json::to_string(self).expect("a Payload always serializes")
    }
}

#[cfg(test)]
mod tests;
