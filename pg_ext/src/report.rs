//! Errors and warnings for DBAs: a PostgreSQL ERROR with an SQLSTATE, a message and a hint that
//! says what to run, never a panic.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR; the transaction aborts and nothing it did is kept.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "threadcast")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Raises an ERROR for a failure inside threadcast itself, with what it was doing.
#[track_caller]
pub fn internal(what: &str, e: impl std::fmt::Display) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("threadcast: {what}: {e}"),
        "threadcast",
    )
    .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Sends a WARNING with a hint; the statement goes on.
#[track_caller]
pub fn warn(message: impl Into<String>, hint: impl Into<String>) {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        message.into(),
        "threadcast",
    )
    .set_hint(hint)
    .report(PgLogLevel::WARNING);
}
