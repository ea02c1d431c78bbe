//! Catalog look-ups shared by `enable()`, `disable()` and `doctor()`, through SPI.

use pgrx::prelude::*;

/// Trigger names `enable()` creates; `doctor()` and `disable()` look for the same.
pub const SEQ_TRIGGER: &str = "threadcast_seq";
pub const NOTIFY_TRIGGER: &str = "threadcast_notify";
pub const TRUNCATE_TRIGGER: &str = "threadcast_truncate";
pub const TRIGGERS: [&str; 3] = [SEQ_TRIGGER, NOTIFY_TRIGGER, TRUNCATE_TRIGGER];

/// Thread column types whose text form is a stable key (and casts back for look-ups).
pub const THREAD_TYPES: &[&str] = &[
    "uuid",
    "text",
    "character varying",
    "smallint",
    "integer",
    "bigint",
];

/// What threadcast needs to know of a table, read once so that the relation can be closed again:
/// PostgreSQL refuses ALTER TABLE on a relation this session still holds open.
pub struct Table {
    pub oid: pg_sys::Oid,
    /// The owning role: enable, disable, repair and doctor work on the table as this role.
    pub owner: pg_sys::Oid,
    /// Schema-qualified and quoted, ready for SQL text and messages.
    pub name: String,
    pub is_table: bool,
    pub is_partitioned: bool,
    pub replica_identity_full: bool,
}

impl Table {
    pub fn read(rel: pgrx::PgRelation) -> Table {
        // SAFETY: rd_rel of an open relation is always valid.
        let replident = unsafe { (*rel.rd_rel).relreplident } as u8;
        Table {
            oid: rel.oid(),
            // SAFETY: as above.
            owner: unsafe { (*rel.rd_rel).relowner },
            name: pgrx::spi::quote_qualified_identifier(rel.namespace(), rel.name()),
            is_table: rel.is_table(),
            is_partitioned: rel.is_partitioned_table(),
            replica_identity_full: replident == pg_sys::REPLICA_IDENTITY_FULL,
        }
        // `rel` is closed here; the AccessShareLock stays until the end of the transaction.
    }
}

/// The first column of the first row, `None` when there is no row or it is NULL.
pub fn first<T: pgrx::FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    Spi::connect(|client| {
        let table = client.select(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one::<T>()
    })
    .unwrap_or_else(|e: pgrx::spi::Error| crate::report::internal("a catalog query failed", e))
}

/// A live column: its type as `format_type` prints it.
pub fn column_type(relid: pg_sys::Oid, column: &str) -> Option<String> {
    first::<String>(
        "SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2 \
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
        &[relid.into(), column.into()],
    )
}

/// The attribute number of a live column.
pub fn attnum(relid: pg_sys::Oid, column: &str) -> Option<i16> {
    first::<i16>(
        "SELECT a.attnum FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2 \
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
        &[relid.into(), column.into()],
    )
}

/// The primary key's columns, in key order; empty when there is none.
pub fn primary_key(relid: pg_sys::Oid) -> Vec<String> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT a.attname::text FROM pg_catalog.pg_index i \
                   CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
                    AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
                  WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary ORDER BY k.ord",
                None,
                &[relid.into()],
            )?
            .map(|row| row.get::<String>(1).map(|v| v.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| crate::report::internal("a catalog query failed", e))
}

/// A unique, plain index of this table on exactly (thread column, seq column): its
/// schema-qualified, quoted name, read from the catalog (so it names that index and nothing else).
pub fn seq_index(relid: pg_sys::Oid, thread_column: &str, seq_column: &str) -> Option<String> {
    let (Some(thread), Some(seq)) = (attnum(relid, thread_column), attnum(relid, seq_column))
    else {
        return None;
    };
    first::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' \
                OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) \
           FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisunique AND i.indisvalid \
            AND i.indnkeyatts OPERATOR(pg_catalog.=) 2 \
            AND i.indkey[0] OPERATOR(pg_catalog.=) $2 AND i.indkey[1] OPERATOR(pg_catalog.=) $3 \
            AND i.indpred IS NULL AND i.indexprs IS NULL \
          ORDER BY i.indexrelid LIMIT 1",
        &[relid.into(), thread.into(), seq.into()],
    )
}

/// A trigger's `tgenabled` ('O', 'R', 'A' fire; 'D' does not), `None` when absent.
pub fn trigger_state(relid: pg_sys::Oid, name: &str) -> Option<String> {
    first::<String>(
        "SELECT t.tgenabled::text FROM pg_catalog.pg_trigger t \
          WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND t.tgname OPERATOR(pg_catalog.=) $2",
        &[relid.into(), name.into()],
    )
}

/// Whether the current role owns the table (directly or through membership).
pub fn owns(relid: pg_sys::Oid) -> bool {
    first::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c \
          WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into()],
    )
    .unwrap_or(false)
}

/// The registration of a source, as `threadcast.sources` holds it. Its names are compared with
/// the catalog's, never pasted into SQL.
pub struct Source {
    pub thread_column: String,
    pub seq_column: String,
    pub channel: String,
    pub payload: String,
    pub owns_index: bool,
}

pub fn source(relid: pg_sys::Oid) -> Option<Source> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT thread_column::text, seq_column::text, channel, payload, owns_index \
               FROM threadcast.sources \
              WHERE source OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
            Some(1),
            &[relid.into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok::<_, pgrx::spi::Error>(Some(Source {
            thread_column: row.get::<String>(1)?.unwrap_or_default(),
            seq_column: row.get::<String>(2)?.unwrap_or_default(),
            channel: row.get::<String>(3)?.unwrap_or_default(),
            payload: row.get::<String>(4)?.unwrap_or_default(),
            owns_index: row.get::<bool>(5)?.unwrap_or(false),
        }))
    })
    .unwrap_or_else(|e| crate::report::internal("a catalog query failed", e))
}
