//! [`PgStore`]: the [`Store`] of a table in PostgreSQL, through the extension's SQL read API
//! (`threadcast.changes`, `latest`, `current_seq`) over a small pool. The broadcaster never builds
//! SQL from what it reads: the source's names are quoted by PostgreSQL at start, and the table is
//! passed as its oid (`$1::oid::regclass`), which no `search_path` can bend.
//!
//! A reply is a plain INSERT with `client_id` as its id; a primary-key violation means a repeat,
//! answered with the stored row, or a conflict if that row is another reply. Never
//! `INSERT ... ON CONFLICT DO NOTHING`: the extension's BEFORE trigger numbers a row before the
//! conflict is found, so a skipped row would leave a hole in the thread's sequence, where a failed
//! INSERT rolls its number back with it.

use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use futures::FutureExt;
use threadcast_payload::{ChangeKind, Key, KeyRing};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{
    Change, ChangeBody, DemoProject, DemoThread, InsertError, NewReply, PageSize, Store,
    StoreError, Stored,
};
use crate::error::chain;
use crate::source::Source;

const CHANGES_SQL: &str = "SELECT seq, kind, id, \"row\"::text FROM threadcast.changes(\
     $1::oid::regclass, $2::text, $3::int8, $4::int8, $5::int4)";
const LATEST_SQL: &str =
    "SELECT seq, kind, id, \"row\"::text FROM threadcast.latest($1::oid::regclass, $2::text, $3::int4)";
const CURRENT_SEQ_SQL: &str = "SELECT threadcast.current_seq($1::oid::regclass, $2::text)";
const CURRENT_SEQS_SQL: &str = "SELECT c.thread, c.last_seq FROM threadcast.counters c \
     WHERE c.source = $1::oid::regclass AND c.thread = ANY($2::text[])";
/// `CHANGES_SQL` stopping after the change that brings the page to `$6` bytes of data, so that
/// no more than that (and one change) crosses the wire and sits in memory.
const CHANGES_PAGE_SQL: &str = "SELECT seq, kind, id, row_text FROM (\
       SELECT seq, kind, id, row_text, \
              pg_catalog.sum(size) OVER (ORDER BY seq) - size AS before \
         FROM (SELECT seq, kind, id, \"row\"::text AS row_text, \
                      COALESCE(pg_catalog.octet_length(\"row\"::text), pg_catalog.octet_length(id), 0) AS size \
                 FROM threadcast.changes($1::oid::regclass, $2::text, $3::int8, $4::int8, $5::int4)) c\
     ) p WHERE before < $6::int8 ORDER BY seq";
/// `LATEST_SQL` keeping the newest replies that hold `$4` bytes of data (and one more).
const LATEST_WITHIN_SQL: &str = "SELECT seq, kind, id, row_text FROM (\
       SELECT seq, kind, id, row_text, \
              pg_catalog.sum(size) OVER (ORDER BY seq DESC) - size AS after \
         FROM (SELECT seq, kind, id, \"row\"::text AS row_text, \
                      COALESCE(pg_catalog.octet_length(\"row\"::text), 0) AS size \
                 FROM threadcast.latest($1::oid::regclass, $2::text, $3::int4)) c\
     ) p WHERE after < $4::int8 ORDER BY seq";

/// The served table in PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// The table's oid (it never changes: a renamed table is the same source).
    oid: u32,
    /// The statements that name the table and its columns, remade when the registration changes
    /// (a rename, another thread or key column). Held only to clone a statement's text.
    statements: RwLock<Arc<Statements>>,
}

/// The SQL that names the served table, quoted by PostgreSQL when the registration was read.
struct Statements {
    insert: String,
    select: String,
    demo_fallback: String,
}

impl Statements {
    fn of(source: &Source) -> Statements {
        let (table, id, thread) = (&source.name, &source.id_column, &source.thread_column);
        Statements {
            // `$2::uuid` stores into a uuid or a text thread column alike.
            insert: format!(
                "INSERT INTO {table} AS t ({id}, {thread}, author_type, author_name, content) \
                 VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text) \
                 RETURNING pg_catalog.row_to_json(t)::text"
            ),
            select: format!(
                "SELECT pg_catalog.row_to_json(t)::text, t.{thread}::text, t.author_type::text, \
                        t.author_name::text, t.content::text \
                   FROM {table} t WHERE t.{id} = $1::uuid"
            ),
            demo_fallback: format!(
                "SELECT {thread}::text, NULL::text FROM {table} ORDER BY {thread} LIMIT 1"
            ),
        }
    }
}

impl PgStore {
    /// The store of `source` over `pool`.
    pub fn new(pool: Pool, source: Source) -> Self {
        PgStore {
            pool,
            oid: source.oid,
            statements: RwLock::new(Arc::new(Statements::of(&source))),
        }
    }

    /// Follows a changed registration of the same table (renamed, or other columns).
    pub fn set_source(&self, source: &Source) {
        *self.statements.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Statements::of(source));
    }

    fn statements(&self) -> Arc<Statements> {
        self.statements
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(query_error)?;
        client.query(&statement, params).await.map_err(query_error)
    }

    async fn insert(&self, reply: &NewReply) -> Result<Stored, InsertError> {
        let client = self.pool.get().await.map_err(|e| {
            tracing::warn!(error = %chain(&e), "no database connection for a reply");
            InsertError::Unavailable
        })?;
        let statement = client
            .prepare_cached(&self.statements().insert)
            .await
            .map_err(insert_error)?;
        let inserted = client
            .query_one(
                &statement,
                &[
                    &reply.id,
                    &reply.thread,
                    &reply.role.as_str(),
                    &reply.author_name,
                    &reply.content,
                ],
            )
            .await;
        let error = match inserted {
            Ok(row) => return Ok(Stored::Created(row.get(0))),
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => error,
            Err(error) => return Err(insert_error(error)),
        };
        // Another request stored this id first (perhaps this very request, retried after its
        // answer was lost); its INSERT has committed, or ours would still be waiting on the key.
        let statement = client
            .prepare_cached(&self.statements().select)
            .await
            .map_err(insert_error)?;
        let Some(row) = client
            .query_opt(&statement, &[&reply.id])
            .await
            .map_err(insert_error)?
        else {
            // Not the primary key, then: a unique index of the table's own.
            return Err(insert_error(error));
        };
        let existing_thread: Option<String> = row.get(1);
        if existing_thread
            .as_deref()
            .and_then(|t| Uuid::try_parse(t).ok())
            != Some(reply.thread)
        {
            return Err(InsertError::Conflict(
                "client_id is already the id of a reply in another thread",
            ));
        }
        let same = row.get::<_, Option<&str>>(2) == Some(reply.role.as_str())
            && row.get::<_, Option<&str>>(3) == Some(reply.author_name.as_str())
            && row.get::<_, Option<&str>>(4) == Some(reply.content.as_str());
        if !same {
            return Err(InsertError::Conflict(
                "client_id is already the id of a different reply",
            ));
        }
        Ok(Stored::Existing(row.get(0)))
    }

    async fn read_keys(&self) -> Result<KeyRing, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT kid, secret FROM threadcast.keys", &[])
            .await
            .map_err(query_error)?;
        // A malformed row (which the table's CHECK forbids) verifies nothing; skip it.
        Ok(KeyRing::new(rows.iter().filter_map(|row| {
            let kid: i32 = row.get(0);
            Key::from_row(u32::try_from(kid).ok()?, row.get(1))
        })))
    }

    async fn first_thread(&self) -> Result<Option<DemoThread>, StoreError> {
        let client = self.client().await?;
        let titled = client
            .query_opt(
                "SELECT id::text, title FROM public.feedback ORDER BY created_at, id LIMIT 1",
                &[],
            )
            .await;
        let row = match titled {
            Ok(row) => row,
            // `public.feedback` is the schema `sql/schema.sql` makes; without it (or without
            // the right to read it), the first thread of the served table, untitled.
            Err(e)
                if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                    || e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                client
                    .query_opt(&self.statements().demo_fallback, &[])
                    .await
                    .map_err(query_error)?
            }
            Err(e) => return Err(query_error(e)),
        };
        Ok(row.map(|row| DemoThread {
            id: row.get(0),
            title: row.get(1),
        }))
    }
}

impl Store for PgStore {
    fn current_seq<'a>(&'a self, thread: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        async move {
            let rows = self.query(CURRENT_SEQ_SQL, &[&self.oid, &thread]).await?;
            Ok(rows.first().map_or(0, |row| row.get(0)))
        }
        .boxed()
    }

    fn current_seqs<'a>(
        &'a self,
        threads: &'a [std::sync::Arc<str>],
    ) -> BoxFuture<'a, Result<super::Counters, StoreError>> {
        async move {
            let keys: Vec<&str> = threads.iter().map(|t| &**t).collect();
            let rows = self.query(CURRENT_SEQS_SQL, &[&self.oid, &keys]).await?;
            let by_key: std::collections::HashMap<&str, &std::sync::Arc<str>> =
                threads.iter().map(|t| (&**t, t)).collect();
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let thread = *by_key.get(row.get::<_, &str>(0))?;
                    Some((thread.clone(), row.get(1)))
                })
                .collect())
        }
        .boxed()
    }

    fn changes<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        limit: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        async move {
            let rows = self
                .query(CHANGES_SQL, &[&self.oid, &thread, &after, &until, &limit])
                .await?;
            Ok(rows.iter().filter_map(change).collect())
        }
        .boxed()
    }

    fn changes_page<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        page: PageSize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        async move {
            let bytes = i64::try_from(page.bytes).unwrap_or(i64::MAX);
            let rows = self
                .query(
                    CHANGES_PAGE_SQL,
                    &[&self.oid, &thread, &after, &until, &page.rows, &bytes],
                )
                .await?;
            Ok(rows.iter().filter_map(change).collect())
        }
        .boxed()
    }

    fn latest<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        async move {
            let rows = self.query(LATEST_SQL, &[&self.oid, &thread, &n]).await?;
            Ok(rows.iter().filter_map(change).collect())
        }
        .boxed()
    }

    fn latest_within<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        async move {
            let bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
            let rows = self
                .query(LATEST_WITHIN_SQL, &[&self.oid, &thread, &n, &bytes])
                .await?;
            Ok(rows.iter().filter_map(change).collect())
        }
        .boxed()
    }

    fn insert_reply<'a>(
        &'a self,
        reply: &'a NewReply,
    ) -> BoxFuture<'a, Result<Stored, InsertError>> {
        self.insert(reply).boxed()
    }

    fn demo_thread(&self) -> BoxFuture<'_, Result<Option<DemoThread>, StoreError>> {
        self.first_thread().boxed()
    }

    fn keys(&self) -> BoxFuture<'_, Result<KeyRing, StoreError>> {
        self.read_keys().boxed()
    }

    fn demo_project(&self, limit: i64) -> BoxFuture<'_, Result<Option<DemoProject>, StoreError>> {
        async move {
            let client = self.client().await?;
            // `public.feedback` as sql/schema.sql makes it; demo mode reads its titles.
            let rows = client
                .query(
                    "WITH top AS (SELECT project_id FROM public.feedback WHERE project_id IS NOT NULL
                                   GROUP BY project_id ORDER BY count(*) DESC, project_id LIMIT 1)
                     SELECT f.project_id::text, f.id::text, f.title FROM public.feedback f
                       JOIN top USING (project_id) ORDER BY f.created_at, f.id LIMIT $1",
                    &[&limit],
                )
                .await
                .map_err(query_error)?;
            Ok(rows.first().map(|first| DemoProject {
                id: first.get(0),
                threads: rows
                    .iter()
                    .map(|r| DemoThread {
                        id: r.get(1),
                        title: r.get(2),
                    })
                    .collect(),
            }))
        }
        .boxed()
    }
}

fn change(row: &tokio_postgres::Row) -> Option<Change> {
    let seq: i64 = row.get(0);
    let body = match ChangeKind::parse(row.get(1)) {
        Some(ChangeKind::Delete) => ChangeBody::Delete { id: row.get(2) },
        Some(ChangeKind::Reset) => ChangeBody::Reset,
        // A kind this build does not know is read as the row it carries, as before kinds
        // were named: a reply in its current state.
        Some(ChangeKind::Reply) | None => ChangeBody::Reply {
            row: row.get::<_, Option<String>>(3)?,
        },
    };
    Some(Change { seq, body })
}

fn query_error(error: tokio_postgres::Error) -> StoreError {
    if error.is_closed() || error.as_db_error().is_none() {
        StoreError::Unavailable(error.into())
    } else {
        StoreError::Query(error.into())
    }
}

/// Maps a failed statement of a reply: what the client's data caused is a refusal, a lost
/// connection is unavailability, anything else is ours (logged by the caller).
fn insert_error(error: tokio_postgres::Error) -> InsertError {
    let Some(db) = error.as_db_error() else {
        tracing::warn!(error = %chain(&error), "a reply's statement failed");
        return InsertError::Unavailable;
    };
    let code = db.code();
    if code == &SqlState::FOREIGN_KEY_VIOLATION {
        return InsertError::NoThread;
    }
    if code == &SqlState::CHECK_VIOLATION
        || code == &SqlState::NOT_NULL_VIOLATION
        || code.code().starts_with("22")
    {
        tracing::info!(error = %db, "the table refused a reply");
        return InsertError::Rejected;
    }
    if code == &SqlState::INSUFFICIENT_PRIVILEGE {
        tracing::error!(error = %db, "the broadcaster's role may not write the source table: GRANT INSERT, SELECT on it");
    }
    if code.code().starts_with("57") || code.code().starts_with("08") {
        tracing::warn!(error = %db, "the database went away while storing a reply");
        return InsertError::Unavailable;
    }
    InsertError::Internal(error.into())
}
