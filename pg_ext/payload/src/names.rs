//! The names both halves must spell alike: the broadcaster's `application_name`, the payload and
//! delivery modes of `threadcast.enable`, and the kinds of change (`threadcast.changes`'s `kind`
//! column and the SSE event names). A typo in one of them is a compile error, not a silent mismatch.

use std::fmt;
use std::str::FromStr;

/// The `application_name` of the broadcaster's LISTEN connection. `threadcast.doctor` looks for
/// it in `pg_stat_activity`; operators and tests find the connection by it.
pub const APPLICATION_NAME: &str = "threadcast-broadcaster";

/// What a source's notifications carry (`threadcast.enable(..., payload => ...)`, kept in
/// `threadcast.sources.payload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadMode {
    /// The row travels in the notification when it fits.
    Full,
    /// Only keys travel; the consumer reads every row from the table.
    Keys,
}

impl PayloadMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [PayloadMode; 2] = [PayloadMode::Full, PayloadMode::Keys];

    /// The SQL spelling: `full` or `keys`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PayloadMode::Full => "full",
            PayloadMode::Keys => "keys",
        }
    }
}

impl fmt::Display for PayloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload mode that is neither `full` nor `keys`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload must be 'full' or 'keys', not {0:?}")]
pub struct UnknownPayloadMode(pub String);

impl FromStr for PayloadMode {
    type Err = UnknownPayloadMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PayloadMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| UnknownPayloadMode(text.to_owned()))
    }
}

/// How a source's notifications leave the database (`threadcast.enable(..., delivery => ...)`,
/// kept in `threadcast.sources.delivery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// The writer's transaction NOTIFYs at its commit: simple, but every notifying commit takes
    /// PostgreSQL's cluster-wide notification lock.
    Transaction,
    /// The writer's commit hands its signed changes to a ring in shared memory; a background
    /// worker sends them in batches, so that writers never take the notification lock.
    Batched,
}

impl DeliveryMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [DeliveryMode; 2] = [DeliveryMode::Transaction, DeliveryMode::Batched];

    /// The SQL spelling: `transaction` or `batched`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Transaction => "transaction",
            DeliveryMode::Batched => "batched",
        }
    }

    /// The mode named `text`, if any.
    pub fn parse(text: &str) -> Option<DeliveryMode> {
        DeliveryMode::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

impl fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
/// The SSE event a stream that starts live sends first, with the seq it joined its thread at as
/// its `id:` (and `{}` as data): EventSource keeps that id, so a stream that drops before its
/// first change resumes with `Last-Event-ID` from its join point. Listeners of the change kinds
/// never see it.
pub const JOINED_EVENT: &str = "joined";

/// The kind of a change as a resuming reader sees it: `threadcast.changes(...)` returns it in its
/// `kind` column, and the broadcaster sends it as the SSE `event:` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A row in its current state (an insert or an update).
    Reply,
    /// A deleted row, by its key.
    Delete,
    /// The table was truncated: every earlier change of the thread is gone.
    Reset,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 3] = [ChangeKind::Reply, ChangeKind::Delete, ChangeKind::Reset];

    /// The SQL and SSE spelling: `reply`, `delete` or `reset`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Reply => "reply",
            ChangeKind::Delete => "delete",
            ChangeKind::Reset => "reset",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_itself() {
        for mode in PayloadMode::ALL {
            assert_eq!(mode.as_str().parse(), Ok(mode));
        }
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(kind.as_str()), Some(kind));
        }
        for mode in DeliveryMode::ALL {
            assert_eq!(DeliveryMode::parse(mode.as_str()), Some(mode));
        }
        assert!("Keys".parse::<PayloadMode>().is_err(), "names are exact");
        assert_eq!(ChangeKind::parse("update"), None);
    }
}
