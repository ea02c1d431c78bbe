//! The triggers that `threadcast.enable()` attaches, in Rust.
//!
//! - `threadcast.assign_seq()`, BEFORE INSERT OR UPDATE, per row: takes the thread's next number
//!   and writes it into the seq column. An update that moves a row to another thread, or changes
//!   its primary key, first takes the number of the delete it implies in the old thread, so that
//!   every notification of one statement leaves in seq order.
//! - `threadcast.notify()`, AFTER INSERT OR UPDATE OR DELETE, per row: queues one signed NOTIFY
//!   (and, for a delete, takes its number and leaves a tombstone).
//! - `threadcast.truncated()`, AFTER TRUNCATE, per statement: every thread of the table takes a
//!   number for a reset, and each is announced.
//!
//! All three run as the role that changed the table (SECURITY INVOKER): rows are rendered, and
//! type output functions and casts called, with that role's rights. Only numbering, tombstones
//! and the signing key go through the privileged helpers (`privileged.rs`).

use std::cell::RefCell;

use pgrx::fn_call::Arg;
use pgrx::prelude::*;
use pgrx::{direct_function_call, direct_function_call_as_datum, PgRelation};
use serde_json::value::RawValue;
use threadcast_payload::{Omitted, Op, Payload, FORMAT_VERSION};

use crate::privileged::{self, Helpers};
use crate::report::raise;
use crate::text::{Column, RawRow};

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

/// Numbering and tombstones: through the privileged helpers, or, while the database still has
/// 0.1.0's SQL objects (whose trigger functions are the definer themselves), directly.
fn next_seq(src: pg_sys::Oid, thread: &str) -> i64 {
    if privileged::legacy() {
        privileged::bump(src, thread)
    } else {
        Helpers::next_seq(src, thread)
    }
}

fn record_tombstone(src: pg_sys::Oid, thread: &str, seq: i64, id: &str) {
    if privileged::legacy() {
        privileged::tombstone(src, thread, seq, id)
    } else {
        Helpers::record_tombstone(src, thread, seq, id)
    }
}

/// The arguments `enable()` stored on the trigger, or an ERROR naming the trigger.
fn args(trigger: &PgTrigger, counts: &[usize]) -> Vec<String> {
    let name = trigger.name().unwrap_or("?").to_owned();
    let args = trigger.extra_args().unwrap_or_default();
    if !counts.contains(&args.len()) {
        error!("threadcast: trigger {name} has the wrong arguments; run threadcast.enable() again")
    }
    args
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

fn id_text(col: &Column, row: RawRow, table: &str) -> String {
    col.text(row)
        .unwrap_or_else(|| error!("threadcast: the primary key of {table} is NULL"))
}

/// What every trigger reads first: the table fired on, its name for messages and payloads, and
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
        // SAFETY: a trigger always has a relation with a descriptor.
        let desc = unsafe { (*data.tg_relation).rd_att };
        Fired {
            data,
            rel,
            table,
            desc,
        }
    }

    fn old(&self) -> RawRow {
        RawRow {
            tuple: self.data.tg_trigtuple,
            desc: self.desc,
        }
    }

    /// The new row of an insert or update.
    fn new_row(&self, is_update: bool) -> RawRow {
        RawRow {
            tuple: if is_update {
                self.data.tg_newtuple
            } else {
                self.data.tg_trigtuple
            },
            desc: self.desc,
        }
    }
}

/// A delete that an update implies (its row left the thread, or changed its primary key), with
/// the number the BEFORE trigger took for it. The AFTER trigger of the same row announces it:
/// only then is the update certain to have happened.
struct ImpliedDelete {
    lxid: u32,
    src: pg_sys::Oid,
    /// The row's new thread and number: what the AFTER trigger finds it by.
    thread: String,
    seq: i64,
    old_thread: String,
    delete_seq: i64,
}

thread_local! {
    static IMPLIED: RefCell<Vec<ImpliedDelete>> = const { RefCell::new(Vec::new()) };
}

fn local_xid() -> u32 {
    // SAFETY: MyProc is set for every backend that runs a trigger.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Records (or, with `None`, clears) the implied delete of the row now numbered `seq` in `thread`.
fn stash_implied(src: pg_sys::Oid, thread: &str, seq: i64, old: Option<(String, i64)>) {
    let lxid = local_xid();
    IMPLIED.with(|implied| {
        let mut implied = implied.borrow_mut();
        // Entries of earlier transactions, whose AFTER trigger never ran, and an entry for the
        // same number (a rolled-back savepoint handed it out again) are stale.
        implied.retain(|d| d.lxid == lxid && !(d.src == src && d.thread == thread && d.seq == seq));
        if let Some((old_thread, delete_seq)) = old {
            implied.push(ImpliedDelete {
                lxid,
                src,
                thread: thread.to_owned(),
                seq,
                old_thread,
                delete_seq,
            });
        }
    });
}

fn take_implied(src: pg_sys::Oid, thread: &str, seq: i64) -> Option<(String, i64)> {
    let lxid = local_xid();
    IMPLIED.with(|implied| {
        let mut implied = implied.borrow_mut();
        let at = implied
            .iter()
            .position(|d| d.lxid == lxid && d.src == src && d.thread == thread && d.seq == seq)?;
        let d = implied.swap_remove(at);
        Some((d.old_thread, d.delete_seq))
    })
}

/// `threadcast.assign_seq(thread_column, seq_column[, id_column])`: BEFORE INSERT OR UPDATE,
/// FOR EACH ROW. (0.1.0 attached it with two arguments; without the id column a change of
/// primary key is not noticed.)
#[pg_trigger]
fn assign_seq<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    let args = args(trigger, &[2, 3]);
    let (thread_column, seq_column) = (&args[0], &args[1]);
    let fired = Fired::of(trigger);
    let table = fired.table.as_str();
    let src = fired.rel.oid();
    let thread_col = column(fired.desc, table, thread_column);
    let seq_col = column(fired.desc, table, seq_column);

    let mut new = trigger
        .new()
        .unwrap_or_else(|| {
            error!("threadcast.assign_seq() must be a row trigger on INSERT or UPDATE")
        })
        .into_owned();
    let is_update = matches!(trigger.op(), Ok(PgTriggerOperation::Update));
    let thread = thread_key(&thread_col, fired.new_row(is_update), table, thread_column);

    // The delete an update implies takes its number first: it happened first.
    let implied = is_update
        .then(|| {
            let old_thread = thread_key(&thread_col, fired.old(), table, thread_column);
            let key_changed = args.get(2).is_some_and(|id_column| {
                let id_col = column(fired.desc, table, id_column);
                id_text(&id_col, fired.old(), table) != id_text(&id_col, fired.new_row(true), table)
            });
            (old_thread != thread || key_changed).then(|| {
                let delete_seq = next_seq(src, &old_thread);
                (old_thread, delete_seq)
            })
        })
        .flatten();

    let seq = next_seq(src, &thread);
    if is_update {
        stash_implied(src, &thread, seq, implied);
    }
    new.set_by_index(seq_col.attno(), seq).unwrap_or_else(|e| {
        error!("threadcast: cannot store the sequence number in \"{seq_column}\" of {table}: {e}")
    });
    Ok(Some(new))
}

/// Signs and queues notifications for one source on its channel.
struct Announcer<'a> {
    channel: &'a str,
    table: &'a str,
    src: pg_sys::Oid,
    legacy: bool,
}

/// One change, as the AFTER trigger describes it.
struct Change<'a> {
    op: Op,
    thread: &'a str,
    seq: i64,
    id: &'a str,
    row: Option<&'a RawValue>,
    omitted: Option<Omitted>,
}

impl Announcer<'_> {
    fn new<'a>(channel: &'a str, table: &'a str, src: pg_sys::Oid) -> Announcer<'a> {
        Announcer {
            channel,
            table,
            src,
            legacy: privileged::legacy(),
        }
    }

    fn send(&self, change: Change) {
        let payload = Payload {
            v: FORMAT_VERSION,
            op: change.op,
            table: self.table.into(),
            src: Some(u32::from(self.src)),
            thread: change.thread.into(),
            seq: change.seq,
            id: change.id.into(),
            row: change.row,
            omitted: change.omitted,
            kid: None,
            sig: None,
        };
        let encoded = if self.legacy {
            payload.encode_legacy()
        } else {
            payload.sign(&crate::keys::signing_key())
        };
        let text = encoded.unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "threadcast: cannot announce a change of {}: {e}",
                    self.table
                ),
                "The thread key and the primary key must fit in one NOTIFY payload.",
            )
        });
        #[cfg(any(test, feature = "pg_test"))]
        SENT.with(|sent| {
            sent.borrow_mut()
                .push((self.channel.to_owned(), text.clone()))
        });
        // pg_notify queues the notification in this transaction; PostgreSQL delivers it at commit.
        // SAFETY: pg_notify takes two text datums, which these are.
        unsafe {
            direct_function_call_as_datum(
                pg_sys::pg_notify,
                &[self.channel.into_datum(), text.as_str().into_datum()],
            );
        }
    }

    /// A delete: its tombstone, then its notification.
    fn delete(&self, thread: &str, seq: i64, id: &str) {
        record_tombstone(self.src, thread, seq, id);
        self.send(Change {
            op: Op::Delete,
            thread,
            seq,
            id,
            row: None,
            omitted: None,
        });
    }
}

/// The row as `row_to_json` renders it (compact, PostgreSQL's own JSON escaping), rendered as the
/// role that changed the table: a cast to json of a type of that role's runs with its rights.
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
    let args = args(trigger, &[5]);
    let [thread_column, seq_column, id_column, channel, mode] = [0, 1, 2, 3, 4].map(|i| &args[i]);
    let fired = Fired::of(trigger);
    let table = fired.table.as_str();
    let src = fired.rel.oid();
    let thread_col = column(fired.desc, table, thread_column);
    let id_col = column(fired.desc, table, id_column);
    let keys_only = mode == threadcast_payload::names::PayloadMode::Keys.as_str();
    let announcer = Announcer::new(channel, table, src);

    let op = trigger.op().unwrap_or_else(|e| error!("threadcast: {e}"));
    match op {
        PgTriggerOperation::Delete => {
            let thread = thread_key(&thread_col, fired.old(), table, thread_column);
            let seq = next_seq(src, &thread);
            announcer.delete(&thread, seq, &id_text(&id_col, fired.old(), table));
        }
        PgTriggerOperation::Insert | PgTriggerOperation::Update => {
            let is_update = matches!(op, PgTriggerOperation::Update);
            let new = fired.new_row(is_update);
            let thread = thread_key(&thread_col, new, table, thread_column);
            let id = id_text(&id_col, new, table);
            let seq_col = column(fired.desc, table, seq_column);
            // SAFETY: the seq column is bigint (enable() checks) and was set by assign_seq.
            let seq = seq_col
                .datum(new)
                .and_then(|d| unsafe { i64::from_datum(d, false) })
                .unwrap_or_else(|| error!("threadcast: \"{seq_column}\" of {table} is NULL; is the threadcast_seq trigger disabled?"));
            if is_update {
                let old_id = id_text(&id_col, fired.old(), table);
                match take_implied(src, &thread, seq) {
                    Some((old_thread, delete_seq)) => {
                        announcer.delete(&old_thread, delete_seq, &old_id)
                    }
                    None => {
                        // A row moved by a BEFORE trigger of 0.1.0's making: number its delete now.
                        let old_thread = thread_key(&thread_col, fired.old(), table, thread_column);
                        if old_thread != thread {
                            let delete_seq = next_seq(src, &old_thread);
                            announcer.delete(&old_thread, delete_seq, &old_id);
                        }
                    }
                }
            }
            let json = (!keys_only).then(|| row_json(new));
            let row = json.as_deref().map(|j| {
                serde_json::from_str::<&RawValue>(j).expect("row_to_json produces valid JSON")
            });
            announcer.send(Change {
                op: if is_update { Op::Update } else { Op::Insert },
                thread: &thread,
                seq,
                id: &id,
                row,
                omitted: keys_only.then_some(Omitted::KeysOnly),
            });
        }
        PgTriggerOperation::Truncate => {
            error!("threadcast.notify() must be a row trigger on INSERT, UPDATE or DELETE")
        }
    }
    Ok(None)
}

/// `threadcast.truncated(channel)`: AFTER TRUNCATE, FOR EACH STATEMENT. Every thread of the table
/// takes its next number for a reset (numbers are never reused, so a client resuming from before
/// the truncation learns of it), and each reset is announced.
#[pg_trigger]
fn truncated<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    let args = args(trigger, &[1]);
    let fired = Fired::of(trigger);
    crate::enable::check_up_to_date();
    let src = fired.rel.oid();
    let reset: String = privileged::call("reset_threads", &[&Arg::Value(src)])
        .expect("reset_threads returns a JSON array");
    let threads: Vec<(String, i64)> = serde_json::from_str(&reset)
        .unwrap_or_else(|e| crate::report::internal("reset_threads returned malformed JSON", e));
    let announcer = Announcer::new(&args[0], &fired.table, src);
    for (thread, seq) in &threads {
        announcer.send(Change {
            op: Op::Reset,
            thread,
            seq: *seq,
            id: "",
            row: None,
            omitted: None,
        });
    }
    Ok(None)
}
