//! Reads of the extension's SQL API (`threadcast.changes`, `latest`, `current_seq`) through the
//! small fetch pool: catch-up for resuming clients, gap repair, and rows a notification left out.

use deadpool_postgres::Pool;

use crate::source::Source;
use crate::sse::Event;

/// Rows asked for per call; callers page on by the last seq they got.
pub const PAGE_ROWS: i32 = 1000;

/// One change of a thread as the table tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The row as it is now (`row_to_json`).
    Reply { row: String },
    /// A delete, with the deleted row's key.
    Delete { id: String },
}

impl Change {
    /// The SSE event that tells a client of this change.
    pub fn event(&self) -> Event {
        match &self.kind {
            ChangeKind::Reply { row } => Event::reply(self.seq, row),
            ChangeKind::Delete { id } => Event::delete(self.seq, id),
        }
    }
}

/// A read that failed: no connection, or a query error.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("query failed")]
    Query(#[from] tokio_postgres::Error),
}

const CHANGES_SQL: &str = "SELECT seq, kind, id, \"row\"::text FROM threadcast.changes(\
     $1::oid::regclass, $2::text, $3::int8, $4::int8, $5::int4)";
const LATEST_SQL: &str =
    "SELECT seq, kind, id, \"row\"::text FROM threadcast.latest($1::oid::regclass, $2::text, $3::int4)";
const CURRENT_SEQ_SQL: &str = "SELECT threadcast.current_seq($1::oid::regclass, $2::text)";

/// One page (at most [`PAGE_ROWS`]) of the changes with `after < seq <= until`, in seq order.
pub async fn changes(
    pool: &Pool,
    source: &Source,
    thread: &str,
    after: i64,
    until: Option<i64>,
) -> Result<Vec<Change>, FetchError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(CHANGES_SQL).await?;
    let rows = client
        .query(
            &statement,
            &[&source.oid, &thread, &after, &until, &PAGE_ROWS],
        )
        .await?;
    Ok(rows.iter().filter_map(change).collect())
}

/// The last `n` replies of the thread, oldest first.
pub async fn latest(
    pool: &Pool,
    source: &Source,
    thread: &str,
    n: i32,
) -> Result<Vec<Change>, FetchError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(LATEST_SQL).await?;
    let rows = client
        .query(&statement, &[&source.oid, &thread, &n])
        .await?;
    Ok(rows.iter().filter_map(change).collect())
}

/// The last seq handed out in the thread (0 before its first change).
pub async fn current_seq(pool: &Pool, source: &Source, thread: &str) -> Result<i64, FetchError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(CURRENT_SEQ_SQL).await?;
    let row = client
        .query_one(&statement, &[&source.oid, &thread])
        .await?;
    Ok(row.get(0))
}

fn change(row: &tokio_postgres::Row) -> Option<Change> {
    let seq: i64 = row.get(0);
    let kind: &str = row.get(1);
    let kind = match kind {
        "delete" => ChangeKind::Delete { id: row.get(2) },
        _ => ChangeKind::Reply {
            row: row.get::<_, Option<String>>(3)?,
        },
    };
    Some(Change { seq, kind })
}
