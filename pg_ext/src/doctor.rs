//! `threadcast.doctor(tbl)`: the usual "events are not firing" hunt as one query. Each row is one
//! check, whether it passed, and what to do when it did not.

use pgrx::prelude::*;
use pgrx::PgRelation;

use crate::catalog::{self, NOTIFY_TRIGGER, SEQ_TRIGGER};

/// The `application_name` the broadcaster sets on its LISTEN connection.
const BROADCASTER_APP: &str = threadcast_payload::APPLICATION_NAME;

/// Queue usage above which NOTIFY is in danger (it fails when the queue is full).
const QUEUE_WARN: f64 = 0.5;

type Check = (String, bool, String);

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    (name.to_owned(), ok, detail.into())
}

fn trigger_check(relid: pg_sys::Oid, name: &str, table: &str) -> Check {
    let label = format!("trigger {name}");
    match catalog::trigger_state(relid, name).as_deref() {
        None => check(
            &label,
            false,
            format!("missing: run SELECT threadcast.enable('{table}');"),
        ),
        Some("D") => check(
            &label,
            false,
            format!("disabled: run ALTER TABLE {table} ENABLE TRIGGER {name};"),
        ),
        Some(_) => check(&label, true, "present and enabled"),
    }
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
    checks.push(trigger_check(relid, SEQ_TRIGGER, &table));
    checks.push(trigger_check(relid, NOTIFY_TRIGGER, &table));

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

    checks.push(if tbl.replica_identity_full {
        check("replica identity", true, "FULL")
    } else {
        check("replica identity", false, format!("not FULL; logical decoding consumers need it: ALTER TABLE {table} REPLICA IDENTITY FULL;"))
    });

    let listeners = scalar::<i64>(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1 AND datname = pg_catalog.current_database()",
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

    let has_publication =
        scalar::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime')", &[])
            .unwrap_or(false);
    checks.push(if !has_publication {
        check("supabase_realtime publication", true, "no supabase_realtime publication in this database")
    } else {
        let member = scalar::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
              WHERE p.pubname = 'supabase_realtime' AND pr.prrelid = $1) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime' AND puballtables)",
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
