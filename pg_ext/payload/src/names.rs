//! The contract's names: what the extension writes into `threadcast.sources` and the results of
//! its read functions, and what the broadcaster calls itself. One definition, used on both sides.

use std::str::FromStr;

/// The `application_name` of the broadcaster's LISTEN connection, by which `threadcast.doctor()`
/// and operators find it in `pg_stat_activity`.
pub const BROADCASTER_APPLICATION_NAME: &str = "threadcast-broadcaster";

/// What a source's notifications carry (`threadcast.sources.payload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadMode {
    /// The whole row when it fits.
    Full,
    /// Keys only; the consumer reads rows from the table.
    Keys,
}

impl PayloadMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            PayloadMode::Full => "full",
            PayloadMode::Keys => "keys",
        }
    }
}

impl FromStr for PayloadMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "full" => Ok(PayloadMode::Full),
            "keys" => Ok(PayloadMode::Keys),
            _ => Err(()),
        }
    }
}

/// The `kind` column of `threadcast.changes()` and `threadcast.latest()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The row as it is now.
    Reply,
    /// A deleted row; `id` names it.
    Delete,
    /// The table was truncated: every earlier change of the thread is gone.
    Reset,
}

impl ChangeKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Reply => "reply",
            ChangeKind::Delete => "delete",
            ChangeKind::Reset => "reset",
        }
    }
}

impl FromStr for ChangeKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "reply" => Ok(ChangeKind::Reply),
            "delete" => Ok(ChangeKind::Delete),
            "reset" => Ok(ChangeKind::Reset),
            _ => Err(()),
        }
    }
}
