//! `threadcast.repair(tbl)`: brings the thread counters up to the numbers the table already holds.
//!
//! A counter behind its thread's highest number would hand out a number again, and the unique
//! (thread, seq) index would refuse the write. That happens when rows arrive without the
//! triggers: on a logical replica that is promoted (logical replication applies changes with
//! `session_replication_role = replica`, so the triggers stay silent and the counters are not
//! replicated), or after a restore that brought rows but not counters. `threadcast.doctor()`
//! names the condition and this function.

use pgrx::fn_call::Arg;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as ident;
use pgrx::PgRelation;

use crate::catalog::{self, Table};
use crate::enable::check_table;
use crate::owner::as_owner;
use crate::privileged;
use crate::report::{internal, raise};

/// Raises each counter of the source to the highest number its thread holds in the table or
/// among its tombstones; returns how many counters moved. Runs as the table's owner.
pub(crate) fn advance_counters(
    relid: pg_sys::Oid,
    table: &str,
    thread_column: &str,
    seq_column: &str,
) -> i64 {
    let (thread, seq) = (ident(thread_column), ident(seq_column));
    let oid = u32::from(relid);
    let (threads, seqs) = Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT h.thread, pg_catalog.max(h.seq) FROM ( \
                     SELECT r.{thread}::pg_catalog.text AS thread, r.{seq} AS seq FROM {table} r \
                      WHERE r.{seq} IS NOT NULL AND r.{thread} IS NOT NULL \
                     UNION ALL \
                     SELECT t.thread, t.seq FROM threadcast.tombstones t \
                      WHERE t.source OPERATOR(pg_catalog.=) {oid}::pg_catalog.oid::pg_catalog.regclass \
                 ) h GROUP BY h.thread"
            ),
            None,
            &[],
        )?;
        let mut threads = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            threads.push(row.get::<String>(1)?.unwrap_or_default());
            seqs.push(row.get::<i64>(2)?.unwrap_or(0));
        }
        Ok::<_, pgrx::spi::Error>((threads, seqs))
    })
    .unwrap_or_else(|e| internal(&format!("cannot read the numbers of {table}"), e));
    privileged::call::<i64>(
        "advance_counters",
        &[&Arg::Value(relid), &Arg::Value(threads), &Arg::Value(seqs)],
    )
    .unwrap_or(0)
}

/// Raises every thread counter of an enabled table to at least its highest number; returns how
/// many counters it raised. Never lowers one, so it is always safe to run.
#[pg_extern(volatile, parallel_unsafe)]
fn repair(tbl: PgRelation) -> i64 {
    let tbl = Table::read(tbl);
    check_table(&tbl);
    let source = catalog::source(tbl.oid).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("threadcast: table {} is not enabled", tbl.name),
            format!("Run SELECT threadcast.enable('{}');", tbl.name),
        )
    });
    let raised = as_owner(tbl.owner, || {
        advance_counters(
            tbl.oid,
            &tbl.name,
            &source.thread_column,
            &source.seq_column,
        )
    });
    if raised > 0 {
        notice!(
            "threadcast: raised {raised} thread counters of {}",
            tbl.name
        );
    }
    raised
}
