//! The two row triggers that `threadcast.enable()` attaches, in Rust.
//!
//! - `threadcast.assign_seq()`, BEFORE INSERT OR UPDATE: bumps the thread's counter row and
//!   writes the new number into the seq column. The counter's row lock, held until commit, orders
//!   the writers of one thread.
//! - `threadcast.notify()`, AFTER INSERT OR UPDATE OR DELETE: queues one NOTIFY with the payload
//!   of `threadcast_payload`. A delete takes a number of its own and leaves a tombstone.
//!
//! Both are SECURITY DEFINER (see `sql/finish.sql`), so a writer of the table needs no rights on
//! threadcast's own tables. Every query below is schema-qualified for that reason.

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{direct_function_call, direct_function_call_as_datum, PgRelation};
use serde_json::value::RawValue;
use threadcast_payload::{Omitted, Op, Payload, FORMAT_VERSION};

use crate::report::{internal, raise};
use crate::text::{Column, RawRow};

// The common case, a thread that has a counter, is a plain UPDATE: cheaper than the speculative
// insertion of INSERT ... ON CONFLICT, which only the first change of a thread needs.
const BUMP_SQL: &str =
    "UPDATE threadcast.counters AS c SET last_seq = c.last_seq OPERATOR(pg_catalog.+) 1 \
     WHERE c.source OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass \
       AND c.thread OPERATOR(pg_catalog.=) $2 \
     RETURNING c.last_seq";

const FIRST_SQL: &str = "INSERT INTO threadcast.counters AS c (source, thread, last_seq) \
     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, 1) \
     ON CONFLICT (source, thread) DO UPDATE SET last_seq = c.last_seq OPERATOR(pg_catalog.+) 1 \
     RETURNING c.last_seq";

const TOMBSTONE_SQL: &str = "INSERT INTO threadcast.tombstones (source, thread, seq, id) \
     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4) RETURNING seq";

thread_local! {
    // Plans kept for the life of the backend: planning per row would cost more than the insert.
    static BUMP: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static FIRST: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TOMBSTONE: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

// A NOTIFY is only delivered at commit, and a #[pg_test] never commits: the tests read what the
// trigger queued from here instead.
#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    pub static SENT: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// Takes the (channel, payload) pairs queued since the last call.
#[cfg(any(test, feature = "pg_test"))]
pub fn take_sent() -> Vec<(String, String)> {
    SENT.with(|sent| std::mem::take(&mut *sent.borrow_mut()))
}

/// Runs a kept plan, preparing it on first use in this backend.
fn run_kept<T: pgrx::FromDatum + IntoDatum>(
    slot: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
    sql: &str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    Spi::connect_mut(|client| {
        slot.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(client.prepare_mut(sql, types)?.keep());
            }
            let plan = cell.as_ref().expect("plan was just prepared");
            let table = client.update(plan, Some(1), args)?;
            if table.is_empty() {
                return Ok(None);
            }
            table.first().get_one::<T>()
        })
    })
    .unwrap_or_else(|e: pgrx::spi::Error| internal("a counter query failed", e))
}

/// Hands out the next number of `thread` in `source`, locking its counter row until commit.
fn next_seq(source: pg_sys::Oid, thread: &str) -> i64 {
    let types = [
        PgOid::BuiltIn(PgBuiltInOids::OIDOID),
        PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
    ];
    run_kept::<i64>(&BUMP, BUMP_SQL, &types, &[source.into(), thread.into()]).unwrap_or_else(|| {
        // The thread's first change; ON CONFLICT settles a race with another first writer.
        run_kept::<i64>(&FIRST, FIRST_SQL, &types, &[source.into(), thread.into()])
            .expect("an upsert with RETURNING returns one row")
    })
}

fn record_tombstone(source: pg_sys::Oid, thread: &str, seq: i64, id: &str) {
    run_kept::<i64>(
        &TOMBSTONE,
        TOMBSTONE_SQL,
        &[
            PgOid::BuiltIn(PgBuiltInOids::OIDOID),
            PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            PgOid::BuiltIn(PgBuiltInOids::INT8OID),
            PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
        ],
        &[source.into(), thread.into(), seq.into(), id.into()],
    );
}

/// The arguments `enable()` stored on the trigger, or an ERROR naming the trigger.
fn args<const N: usize>(trigger: &PgTrigger) -> [String; N] {
    let name = trigger.name().unwrap_or("?").to_owned();
    let args = trigger.extra_args().unwrap_or_default();
    args.try_into().unwrap_or_else(|_| {
        error!("threadcast: trigger {name} has the wrong arguments; run threadcast.enable() again")
    })
}

fn column(desc: pg_sys::TupleDesc, table: &str, name: &str) -> Column {
    Column::find(desc, name).unwrap_or_else(|| {
        error!("threadcast: column \"{name}\" of {table} is gone; run threadcast.enable() again")
    })
}

/// Reads the thread key, refusing NULL: a reply must belong to a thread.
fn thread_key(col: &Column, row: RawRow, table: &str, name: &str) -> String {
    col.text(row).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            format!("threadcast: thread column \"{name}\" of {table} must not be NULL"),
            "Every row of a threadcast source belongs to a thread.",
        )
    })
}

/// What both triggers read first: the table fired on, its name for messages and payloads, and
/// the descriptor of its rows.
struct Fired<'a> {
    data: &'a pg_sys::TriggerData,
    rel: PgRelation,
    table: String,
    desc: pg_sys::TupleDesc,
}

impl<'a> Fired<'a> {
    fn of(trigger: &'a PgTrigger<'a>) -> Fired<'a> {
        let data = trigger.trigger_data();
        let rel = trigger
            .relation()
            .unwrap_or_else(|e| error!("threadcast: {e}"));
        let table = pgrx::spi::quote_qualified_identifier(rel.namespace(), rel.name());
        // SAFETY: a row-level trigger always has a relation with a descriptor.
        let desc = unsafe { (*data.tg_relation).rd_att };
        Fired {
            data,
            rel,
            table,
            desc,
        }
    }
}

/// `threadcast.assign_seq(thread_column, seq_column)`: BEFORE INSERT OR UPDATE, FOR EACH ROW.
#[pg_trigger]
fn assign_seq<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    let [thread_column, seq_column] = args::<2>(trigger);
    let Fired {
        data,
        rel,
        table,
        desc,
    } = Fired::of(trigger);
    let thread_col = column(desc, &table, &thread_column);
    let seq_col = column(desc, &table, &seq_column);

    let mut new = trigger
        .new()
        .unwrap_or_else(|| {
            error!("threadcast.assign_seq() must be a row trigger on INSERT or UPDATE")
        })
        .into_owned();
    let new_tuple = if matches!(trigger.op(), Ok(PgTriggerOperation::Update)) {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    let thread = thread_key(
        &thread_col,
        RawRow {
            tuple: new_tuple,
            desc,
        },
        &table,
        &thread_column,
    );
    let seq = next_seq(rel.oid(), &thread);
    new.set_by_index(seq_col.attno(), seq).unwrap_or_else(|e| {
        error!("threadcast: cannot store the sequence number in \"{seq_column}\" of {table}: {e}")
    });
    Ok(Some(new))
}

/// What the AFTER trigger needs to describe one change.
struct Change<'a> {
    op: Op,
    table: &'a str,
    thread: &'a str,
    seq: i64,
    id: &'a str,
    row: Option<&'a RawValue>,
    omitted: Option<Omitted>,
}

fn send(channel: &str, change: Change) {
    let payload = Payload {
        v: FORMAT_VERSION,
        op: change.op,
        table: change.table.into(),
        thread: change.thread.into(),
        seq: change.seq,
        id: change.id.into(),
        row: change.row,
        omitted: change.omitted,
    }
    .encode()
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "threadcast: cannot announce a change of {}: {e}",
                change.table
            ),
            "The thread key and the primary key must fit in one NOTIFY payload.",
        )
    });
    #[cfg(any(test, feature = "pg_test"))]
    SENT.with(|sent| {
        sent.borrow_mut()
            .push((channel.to_owned(), payload.clone()))
    });
    // pg_notify queues the notification in this transaction; PostgreSQL delivers it at commit.
    // SAFETY: pg_notify takes two text datums, which these are.
    unsafe {
        direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), payload.as_str().into_datum()],
        );
    }
}

/// The row as `row_to_json` renders it: compact, with PostgreSQL's own JSON escaping.
fn row_json(row: RawRow) -> String {
    // SAFETY: the tuple and descriptor are the trigger's own; the copy lives in this call's context.
    let datum = unsafe { pg_sys::heap_copy_tuple_as_datum(row.tuple, row.desc) };
    // SAFETY: row_to_json takes one composite datum, which this is.
    unsafe { direct_function_call::<String>(pg_sys::row_to_json, &[Some(datum)]) }
        .expect("row_to_json never returns NULL for a row")
}

/// `threadcast.notify(thread_column, seq_column, id_column, channel, payload_mode)`:
/// AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW.
#[pg_trigger]
fn notify<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    let [thread_column, seq_column, id_column, channel, mode] = args::<5>(trigger);
    let Fired {
        data,
        rel,
        table,
        desc,
    } = Fired::of(trigger);
    let thread_col = column(desc, &table, &thread_column);
    let id_col = column(desc, &table, &id_column);
    let keys_only = mode == threadcast_payload::PayloadMode::Keys.as_str();

    let op = trigger.op().unwrap_or_else(|e| error!("threadcast: {e}"));
    let old = RawRow {
        tuple: data.tg_trigtuple,
        desc,
    };
    match op {
        PgTriggerOperation::Delete => {
            let thread = thread_key(&thread_col, old, &table, &thread_column);
            announce_delete(
                &rel,
                &table,
                &channel,
                &thread,
                &id_text(&id_col, old, &table),
            );
        }
        PgTriggerOperation::Insert | PgTriggerOperation::Update => {
            let is_update = matches!(op, PgTriggerOperation::Update);
            let new = RawRow {
                tuple: if is_update {
                    data.tg_newtuple
                } else {
                    data.tg_trigtuple
                },
                desc,
            };
            let thread = thread_key(&thread_col, new, &table, &thread_column);
            let id = id_text(&id_col, new, &table);
            if is_update {
                // A reply moved to another thread is gone from its old one: say so there.
                let old_thread = thread_key(&thread_col, old, &table, &thread_column);
                if old_thread != thread {
                    announce_delete(
                        &rel,
                        &table,
                        &channel,
                        &old_thread,
                        &id_text(&id_col, old, &table),
                    );
                }
            }
            let seq_col = column(desc, &table, &seq_column);
            // SAFETY: the seq column is bigint (enable() checks) and was set by assign_seq.
            let seq = seq_col
                .datum(new)
                .and_then(|d| unsafe { i64::from_datum(d, false) })
                .unwrap_or_else(|| error!("threadcast: \"{seq_column}\" of {table} is NULL; is the threadcast_seq trigger disabled?"));
            let json = if keys_only { None } else { Some(row_json(new)) };
            let row = json.as_deref().map(|j| {
                serde_json::from_str::<&RawValue>(j).expect("row_to_json produces valid JSON")
            });
            send(
                &channel,
                Change {
                    op: if is_update { Op::Update } else { Op::Insert },
                    table: &table,
                    thread: &thread,
                    seq,
                    id: &id,
                    row,
                    omitted: keys_only.then_some(Omitted::KeysOnly),
                },
            );
        }
        PgTriggerOperation::Truncate => {
            error!("threadcast.notify() must be a row trigger on INSERT, UPDATE or DELETE")
        }
    }
    Ok(None)
}

fn id_text(col: &Column, row: RawRow, table: &str) -> String {
    col.text(row)
        .unwrap_or_else(|| error!("threadcast: the primary key of {table} is NULL"))
}

/// A delete takes the next number of its thread, so that it has a place in the stream and a
/// resuming client can learn of it from `threadcast.tombstones`.
fn announce_delete(rel: &PgRelation, table: &str, channel: &str, thread: &str, id: &str) {
    let seq = next_seq(rel.oid(), thread);
    record_tombstone(rel.oid(), thread, seq, id);
    send(
        channel,
        Change {
            op: Op::Delete,
            table,
            thread,
            seq,
            id,
            row: None,
            omitted: None,
        },
    );
}
