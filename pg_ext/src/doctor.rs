//! `threadcast.doctor(tbl)`: the usual "events are not firing" hunt as one query. Each row is one
//! check, whether it passed, and what to do when it did not.

use pgrx::prelude::*;
use pgrx::spi::quote_identifier as ident;
use pgrx::PgRelation;
use threadcast_payload::names::APPLICATION_NAME as BROADCASTER_APP;

use crate::catalog::{self, NOTIFY_TRIGGER, SEQ_TRIGGER, TRUNCATE_TRIGGER};
use crate::owner::as_owner;
use crate::privileged::{self, Helpers};

/// Queue usage above which NOTIFY is in danger (it fails when the queue is full).
const QUEUE_WARN: f64 = 0.5;

type Check = (String, bool, String);

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    (name.to_owned(), ok, detail.into())
}

/// A trigger's mode, told as it is: `tgenabled` decides whether it fires for the writes of a
/// session, together with that session's `session_replication_role`.
fn trigger_check(relid: pg_sys::Oid, name: &str, table: &str, replica_session: bool) -> Check {
    let label = format!("trigger {name}");
    let enable = format!("ALTER TABLE {table} ENABLE TRIGGER {name};");
    match catalog::trigger_state(relid, name).as_deref() {
        None => check(
            &label,
            false,
            format!("missing: run SELECT threadcast.enable('{table}');"),
        ),
        Some("D") => check(&label, false, format!("disabled: run {enable}")),
        Some("R") => check(
            &label,
            false,
            format!("fires only when changes are applied by logical replication (ENABLE REPLICA TRIGGER), so ordinary writes are neither numbered nor announced: run {enable}"),
        ),
        Some("A") => check(&label, true, "enabled always, also for changes applied by logical replication"),
        Some(_) if replica_session => check(
            &label,
            false,
            "enabled for ordinary writes, but this session runs with session_replication_role = replica, where it does not fire: writes made so are neither numbered nor announced",
        ),
        Some(_) => check(
            &label,
            true,
            "enabled for ordinary writes (not for changes applied by logical replication, which runs with session_replication_role = replica)",
        ),
    }
}

/// Threads whose highest number (in the table or its tombstones) is above their counter: the
/// next write there would take a number again and be refused by the unique index.
fn counters_behind(relid: pg_sys::Oid, table: &str, thread_column: &str, seq_column: &str) -> i64 {
    let (thread, seq) = (ident(thread_column), ident(seq_column));
    let oid = u32::from(relid);
    scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM ( \
                 SELECT h.thread, pg_catalog.max(h.seq) AS top FROM ( \
                     SELECT r.{thread}::pg_catalog.text AS thread, r.{seq} AS seq FROM {table} r \
                      WHERE r.{seq} IS NOT NULL AND r.{thread} IS NOT NULL \
                     UNION ALL \
                     SELECT t.thread, t.seq FROM threadcast.tombstones t \
                      WHERE t.source OPERATOR(pg_catalog.=) {oid}::pg_catalog.oid::pg_catalog.regclass \
                 ) h GROUP BY h.thread) m \
              LEFT JOIN threadcast.counters c \
                ON c.source OPERATOR(pg_catalog.=) {oid}::pg_catalog.oid::pg_catalog.regclass \
               AND c.thread OPERATOR(pg_catalog.=) m.thread \
             WHERE coalesce(c.last_seq, 0) OPERATOR(pg_catalog.<) m.top"
        ),
        &[],
    )
    .unwrap_or(0)
}

fn scalar<T: pgrx::FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    catalog::first::<T>(sql, args)
}

#[pg_extern(volatile, parallel_unsafe)]
fn doctor(
    tbl: PgRelation,
) -> TableIterator<'static, (name!(check, String), name!(ok, bool), name!(detail, String))> {
    let tbl = catalog::Table::read(tbl);
    let (relid, table) = (tbl.oid, tbl.name.clone());
    let mut checks = Vec::new();

    if privileged::legacy() {
        checks.push(check(
            "extension version",
            false,
            "the SQL objects are 0.1.0's, older than the library: run ALTER EXTENSION threadcast UPDATE;",
        ));
        return TableIterator::new(checks);
    }
    checks.push(match Helpers::signing_key() {
        Some(_) => check(
            "signing key",
            true,
            "a current key signs every notification",
        ),
        None => check(
            "signing key",
            false,
            "no current key, so every write fails: run SELECT threadcast.rotate_key();",
        ),
    });

    let replica_session = scalar::<String>(
        "SELECT pg_catalog.current_setting('session_replication_role')",
        &[],
    )
    .is_some_and(|role| role == "replica");
    let source = catalog::source(relid);
    checks.push(match &source {
        Some(s) => check(
            "registered",
            true,
            format!("channel '{}', payload '{}'", s.channel, s.payload),
        ),
        None => check(
            "registered",
            false,
            format!("not in threadcast.sources: run SELECT threadcast.enable('{table}');"),
        ),
    });
    for name in [SEQ_TRIGGER, NOTIFY_TRIGGER, TRUNCATE_TRIGGER] {
        checks.push(trigger_check(relid, name, &table, replica_session));
    }

    let (thread_column, seq_column) = source
        .as_ref()
        .map(|s| (s.thread_column.clone(), s.seq_column.clone()))
        .unwrap_or_else(|| ("feedback_id".into(), "thread_seq".into()));
    checks.push(match catalog::column_type(relid, &seq_column).as_deref() {
        Some("bigint") => check("seq column", true, format!("{seq_column} bigint")),
        Some(other) => check(
            "seq column",
            false,
            format!("{seq_column} is {other}; it must be bigint"),
        ),
        None => check(
            "seq column",
            false,
            format!("{seq_column} is missing: run SELECT threadcast.enable('{table}');"),
        ),
    });
    checks.push(match catalog::seq_index(relid, &thread_column, &seq_column) {
        Some(index) => check("seq unique index", true, format!("{index} on ({thread_column}, {seq_column})")),
        None => check("seq unique index", false, format!("no unique index on ({thread_column}, {seq_column}): run SELECT threadcast.enable('{table}');")),
    });

    if source.is_some() && catalog::column_type(relid, &seq_column).is_some() {
        let behind = as_owner(tbl.owner, || {
            counters_behind(relid, &table, &thread_column, &seq_column)
        });
        checks.push(if behind == 0 {
            check("counters", true, "every thread's counter is at or above its highest number")
        } else {
            check("counters", false, format!("{behind} thread(s) hold numbers above their counter (rows written without the triggers: a promoted logical replica, a restore): run SELECT threadcast.repair('{table}');"))
        });
    }

    checks.push(if tbl.replica_identity_full {
        check("replica identity", true, "FULL")
    } else {
        check("replica identity", false, format!("not FULL; logical decoding consumers need it: ALTER TABLE {table} REPLICA IDENTITY FULL;"))
    });

    let listeners = scalar::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity \
          WHERE application_name OPERATOR(pg_catalog.=) $1 \
            AND datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
        &[BROADCASTER_APP.into()],
    )
    .unwrap_or(0);
    checks.push(if listeners > 0 {
        check("listener", true, format!("{listeners} {BROADCASTER_APP} connection(s) to this database"))
    } else {
        check("listener", false, format!("no connection with application_name '{BROADCASTER_APP}': is the broadcaster running against this database?"))
    });

    let usage =
        scalar::<f64>("SELECT pg_catalog.pg_notification_queue_usage()", &[]).unwrap_or(0.0);
    checks.push(check(
        "notification queue",
        usage < QUEUE_WARN,
        format!(
            "{:.1}% used{}",
            usage * 100.0,
            if usage < QUEUE_WARN { "" } else { "; a listener is not consuming: look for an idle-in-transaction session that ran LISTEN" }
        ),
    ));

    let has_publication = scalar::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication \
          WHERE pubname OPERATOR(pg_catalog.=) 'supabase_realtime')",
        &[],
    )
    .unwrap_or(false);
    checks.push(if !has_publication {
        check("supabase_realtime publication", true, "no supabase_realtime publication in this database")
    } else {
        let member = scalar::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr \
                 JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) pr.prpubid \
                WHERE p.pubname OPERATOR(pg_catalog.=) 'supabase_realtime' AND pr.prrelid OPERATOR(pg_catalog.=) $1) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication \
                WHERE pubname OPERATOR(pg_catalog.=) 'supabase_realtime' AND puballtables)",
            &[relid.into()],
        )
        .unwrap_or(false);
        if member {
            check("supabase_realtime publication", true, "table is a member")
        } else {
            check("supabase_realtime publication", false, format!("not a member: ALTER PUBLICATION supabase_realtime ADD TABLE {table};"))
        }
    });

    TableIterator::new(checks)
}
