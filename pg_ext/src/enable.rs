//! `threadcast.enable()` and `threadcast.disable()`: attach and detach the triggers, the seq
//! column's unique index and the registration in `threadcast.sources`.
//!
//! Both check that their caller owns the table, then work on it as its owner (`owner.rs`), so
//! that a superuser enabling another role's table never runs that role's triggers or defaults
//! with superuser rights. `threadcast.sources` and `threadcast.counters` are written only
//! through the privileged helpers (`privileged.rs`), with values passed as parameters.

use pgrx::fn_call::Arg;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as ident, quote_literal as literal};
use pgrx::PgRelation;
use threadcast_payload::names::PayloadMode;

use crate::catalog::{
    self, Table, NOTIFY_TRIGGER, SEQ_TRIGGER, THREAD_TYPES, TRIGGERS, TRUNCATE_TRIGGER,
};
use crate::owner::as_owner;
use crate::privileged;
use crate::report::{internal, raise, warn};

/// Longest channel name LISTEN accepts (NAMEDATALEN - 1).
const MAX_CHANNEL_BYTES: usize = 63;

pub(crate) fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| internal("a catalog query failed", e));
}

fn bad_value(message: String, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        hint,
    )
}

/// Refuses anything but a plain table the caller owns, and a library newer than the SQL objects.
pub(crate) fn check_table(rel: &Table) {
    let table = &rel.name;
    if rel.is_partitioned {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "threadcast: {table} is a partitioned table, which threadcast does not support yet"
            ),
            "Enable threadcast on a plain table.",
        );
    }
    if !rel.is_table {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("threadcast: {table} is not a table"),
            "threadcast numbers and announces the rows of a plain table.",
        );
    }
    if !catalog::owns(rel.oid) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "threadcast: must be owner of table {table} to enable or disable threadcast on it"
            ),
            "Run it as the table's owner, or as a member of the owning role.",
        );
    }
    check_up_to_date();
}

/// Refuses to work under 0.1.0's SQL objects, which this library no longer writes.
pub(crate) fn check_up_to_date() {
    if privileged::legacy() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "threadcast: the extension's SQL objects are older than its library",
            "Run ALTER EXTENSION threadcast UPDATE; as a superuser.",
        );
    }
}

/// Attaches threadcast to a table. Idempotent; a call with other arguments reconfigures.
#[pg_extern(volatile, parallel_unsafe)]
fn enable(
    tbl: PgRelation,
    thread_column: default!(&str, "'feedback_id'"),
    channel: default!(&str, "'threadcast'"),
    seq_column: default!(&str, "'thread_seq'"),
    payload: default!(&str, "'full'"),
    replica_identity_full: default!(bool, false),
) {
    let tbl = Table::read(tbl);
    check_table(&tbl);
    let Ok(mode) = payload.parse::<PayloadMode>() else {
        bad_value(
            format!(
                "threadcast: payload must be 'full' or 'keys', not {}",
                literal(payload)
            ),
            "'keys' sends only keys over NOTIFY; the broadcaster reads rows from the table.",
        );
    };
    if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
        bad_value(
            format!("threadcast: channel must be 1 to {MAX_CHANNEL_BYTES} bytes long"),
            "A channel is a LISTEN name, such as 'threadcast'.",
        );
    }
    let columns = as_owner(tbl.owner, || {
        attach(&tbl, thread_column, seq_column, channel, mode)
    });
    privileged::call::<()>(
        "register_source",
        &[
            &Arg::Value(tbl.oid),
            &Arg::Value(thread_column),
            &Arg::Value(seq_column),
            &Arg::Value(columns.id_column.as_str()),
            &Arg::Value(channel),
            &Arg::Value(mode.as_str()),
            &Arg::Value(columns.created_index),
        ],
    );
    as_owner(tbl.owner, || {
        check_replica_identity(&tbl, replica_identity_full)
    });
}

/// What `attach` learned and did.
struct Attached {
    id_column: String,
    created_index: bool,
}

/// The work on the table itself, as its owner: columns, numbers, index, triggers.
fn attach(
    tbl: &Table,
    thread_column: &str,
    seq_column: &str,
    channel: &str,
    mode: PayloadMode,
) -> Attached {
    let (relid, table) = (tbl.oid, tbl.name.as_str());
    let thread_type = catalog::column_type(relid, thread_column).unwrap_or_else(|| {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("threadcast: column {} of {table} does not exist", literal(thread_column)),
            "Pass the column that says which thread a row belongs to: thread_column => 'feedback_id'."
        )
    });
    if !THREAD_TYPES.contains(&thread_type.as_str()) {
        raise(PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("threadcast: thread column {} of {table} has type {thread_type}, which threadcast does not support", literal(thread_column)),
            format!("Supported thread column types: {}.", THREAD_TYPES.join(", "))
        );
    }

    let pk = catalog::primary_key(relid);
    let id_column = match pk.as_slice() {
        [one] => one.clone(),
        [] => {
            raise(PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("threadcast: table {table} has no primary key"),
                format!("Every change names its row by primary key. Add one: ALTER TABLE {table} ADD PRIMARY KEY (id);")
            )
        }
        _ => {
            raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("threadcast: the primary key of {table} has {} columns; threadcast needs a single-column primary key", pk.len()),
                "Add a single-column key, for example a uuid id column, and make it the primary key."
            )
        }
    };
    if seq_column == thread_column || seq_column == id_column {
        bad_value(
            format!(
                "threadcast: seq_column {} must be a column of its own",
                literal(seq_column)
            ),
            "Leave it at its default, 'thread_seq', and enable() adds it.",
        );
    }

    if let Some(existing) = catalog::source(relid) {
        if existing.thread_column != thread_column || existing.seq_column != seq_column {
            raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "threadcast: {table} is already enabled with thread column {} and seq column {}",
                    literal(&existing.thread_column),
                    literal(&existing.seq_column)
                ),
                "Existing sequence numbers belong to that thread column. To change it, run threadcast.disable() and enable it again with a new seq_column."
            );
        }
    }

    match catalog::column_type(relid, seq_column) {
        None => {
            run(&format!(
                "ALTER TABLE {table} ADD COLUMN {} pg_catalog.int8",
                ident(seq_column)
            ));
            notice!(
                "threadcast: added column {} bigint to {table} for per-thread sequence numbers",
                ident(seq_column)
            );
        }
        Some(t) if t == "bigint" => {}
        Some(t) => {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "threadcast: seq column {} of {table} has type {t}; it must be bigint",
                    literal(seq_column)
                ),
                "Pass another seq_column, and enable() adds it as bigint.",
            );
        }
    }

    // Old triggers off first, so that numbering the existing rows does not fire them.
    drop_triggers(relid, table);
    number_existing_rows(relid, table, thread_column, seq_column);

    let created_index = match catalog::seq_index(relid, thread_column, seq_column) {
        Some(_) => false,
        None => {
            run(&format!(
                "CREATE UNIQUE INDEX ON {table} ({}, {})",
                ident(thread_column),
                ident(seq_column)
            ));
            true
        }
    };

    run(&format!(
        "CREATE TRIGGER {SEQ_TRIGGER} BEFORE INSERT OR UPDATE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION threadcast.assign_seq({}, {}, {})",
        literal(thread_column),
        literal(seq_column),
        literal(&id_column),
    ));
    run(&format!(
        "CREATE TRIGGER {NOTIFY_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION threadcast.notify({}, {}, {}, {}, {})",
        literal(thread_column),
        literal(seq_column),
        literal(&id_column),
        literal(channel),
        literal(mode.as_str())
    ));
    run(&format!(
        "CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION threadcast.truncated({})",
        literal(channel),
    ));
    Attached {
        id_column,
        created_index,
    }
}

/// Gives rows without a number one, per thread after the highest number already handed out, and
/// brings the counters up to date: enabling a table that already holds replies keeps them
/// resumable.
fn number_existing_rows(relid: pg_sys::Oid, table: &str, thread_column: &str, seq_column: &str) {
    let (thread, seq) = (ident(thread_column), ident(seq_column));
    let oid = u32::from(relid);
    let numbered = Spi::connect_mut(|client| {
        let done = client.update(
            &format!(
                "WITH todo AS ( \
                     SELECT r.ctid AS tid, r.{thread}::pg_catalog.text AS thread, \
                            pg_catalog.row_number() OVER (PARTITION BY r.{thread} ORDER BY r.ctid) AS n \
                       FROM {table} r WHERE r.{seq} IS NULL AND r.{thread} IS NOT NULL), \
                 base AS ( \
                     SELECT t.thread, greatest( \
                         coalesce((SELECT c.last_seq FROM threadcast.counters c \
                                    WHERE c.source OPERATOR(pg_catalog.=) {oid}::pg_catalog.oid::pg_catalog.regclass \
                                      AND c.thread OPERATOR(pg_catalog.=) t.thread), 0), \
                         coalesce((SELECT pg_catalog.max(r.{seq}) FROM {table} r \
                                    WHERE r.{thread}::pg_catalog.text OPERATOR(pg_catalog.=) t.thread), 0)) AS b \
                       FROM (SELECT DISTINCT thread FROM todo) t) \
                 UPDATE {table} r SET {seq} = base.b OPERATOR(pg_catalog.+) todo.n \
                   FROM todo JOIN base USING (thread) WHERE r.ctid OPERATOR(pg_catalog.=) todo.tid"
            ),
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::Error>(done.len())
    })
    .unwrap_or_else(|e| internal(&format!("cannot number the existing rows of {table}"), e));
    if numbered > 0 {
        notice!("threadcast: numbered {numbered} existing rows of {table}");
    }
    crate::repair::advance_counters(relid, table, thread_column, seq_column);
}

fn check_replica_identity(rel: &Table, set_full: bool) {
    if rel.replica_identity_full {
        return;
    }
    let table = &rel.name;
    let fix = format!("ALTER TABLE {table} REPLICA IDENTITY FULL;");
    if set_full {
        run(&fix);
        notice!("threadcast: set REPLICA IDENTITY FULL on {table}");
    } else {
        warn(
            format!("threadcast: {table} does not have REPLICA IDENTITY FULL"),
            format!("threadcast's own triggers do not need it, but consumers that use logical decoding (Supabase Realtime, Debezium, logical replicas) do, to see old rows of updates and deletes. Run: {fix} or call enable() with replica_identity_full => true.")
        );
    }
}

fn drop_triggers(relid: pg_sys::Oid, table: &str) {
    for name in TRIGGERS {
        if catalog::trigger_state(relid, name).is_some() {
            run(&format!("DROP TRIGGER {name} ON {table}"));
        }
    }
}

/// Detaches threadcast from a table. Idempotent. The seq column, its numbers, the counters and
/// the tombstones stay, so that enabling again never hands out a number twice.
#[pg_extern(volatile, parallel_unsafe)]
fn disable(tbl: PgRelation) {
    let tbl = Table::read(tbl);
    check_table(&tbl);
    let (relid, table) = (tbl.oid, tbl.name.as_str());
    as_owner(tbl.owner, || {
        drop_triggers(relid, table);
        let Some(source) = catalog::source(relid) else {
            return;
        };
        if source.owns_index {
            // Found in the catalog as an index of this very table on (thread, seq).
            if let Some(index) =
                catalog::seq_index(relid, &source.thread_column, &source.seq_column)
            {
                run(&format!("DROP INDEX {index}"));
            }
        }
    });
    privileged::call::<()>("unregister_source", &[&Arg::Value(relid)]);
}
