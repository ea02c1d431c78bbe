//! The database boundary: [`Store`], everything the broadcaster asks of the served table, with a
//! PostgreSQL implementation ([`PgStore`]) and an in-memory one ([`MemStore`]) that lets the
//! whole HTTP API and the delivery core run in a test without a database.

mod mem;
mod pg;

use std::error::Error;
use std::sync::Arc;

use futures::future::BoxFuture;
use threadcast_payload::{ChangeKind, KeyRing};
use uuid::Uuid;

use crate::auth::Role;
use crate::sse::Event;

pub use mem::MemStore;
pub use pg::PgStore;

/// Rows asked for per [`Store::changes`] call; callers page on by the last seq they got.
pub const PAGE_ROWS: i32 = 1000;

/// Threads with the last seq each handed out ([`Store::current_seqs`]).
pub type Counters = Vec<(Arc<str>, i64)>;
/// Bytes of row data one page holds at most (a page has at least one row, whatever its size):
/// what a catch-up, a repair or a history read keeps in memory at a time, per stream or thread.
pub const PAGE_BYTES: usize = 64 * 1024;

/// How much one read of changes may bring: rows, and bytes of row data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize {
    pub rows: i32,
    pub bytes: usize,
}

impl Default for PageSize {
    fn default() -> Self {
        PageSize {
            rows: PAGE_ROWS,
            bytes: PAGE_BYTES,
        }
    }
}

impl PageSize {
    /// Cuts `changes` (in seq order) after the change that brings them to `bytes`.
    pub fn cut(self, changes: &mut Vec<Change>) {
        let keep = within_bytes(changes.iter().cloned(), self.bytes).count();
        changes.truncate(keep);
    }

    /// Whether a page this full may have been cut short, so that more may follow it.
    pub fn is_full(self, page: &[Change]) -> bool {
        page.len() >= self.rows.max(1) as usize
            || page.iter().map(Change::size).sum::<usize>() >= self.bytes
    }
}

/// A boxed error from whichever driver a store uses.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// One change of a thread as the table tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub body: ChangeBody,
}

/// What a change says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeBody {
    /// The row as it is now (`row_to_json`).
    Reply { row: String },
    /// A delete, with the deleted row's key.
    Delete { id: String },
    /// The table was truncated: every earlier change of the thread is gone.
    Reset,
}

/// `changes` up to and including the one that brings them to `bytes` of data: the first one
/// whatever its size, no more once the total has reached `bytes`.
pub fn within_bytes(
    changes: impl Iterator<Item = Change>,
    bytes: usize,
) -> impl Iterator<Item = Change> {
    let mut total = 0;
    changes.take_while(move |c| {
        let fits = total < bytes.max(1);
        total += c.size();
        fits
    })
}

impl Change {
    /// The bytes of data it carries (the row's JSON, a deleted row's key), for page bounds.
    pub fn size(&self) -> usize {
        match &self.body {
            ChangeBody::Reply { row } => row.len(),
            ChangeBody::Delete { id } => id.len(),
            ChangeBody::Reset => 0,
        }
    }

    /// Its kind, as `threadcast.changes` and the SSE event name spell it.
    pub fn kind(&self) -> ChangeKind {
        match self.body {
            ChangeBody::Reply { .. } => ChangeKind::Reply,
            ChangeBody::Delete { .. } => ChangeKind::Delete,
            ChangeBody::Reset => ChangeKind::Reset,
        }
    }

    /// The SSE event that tells a client of this change.
    pub fn event(&self) -> Event {
        match &self.body {
            ChangeBody::Reply { row } => Event::reply(self.seq, row),
            ChangeBody::Delete { id } => Event::delete(self.seq, id),
            ChangeBody::Reset => Event::reset(self.seq),
        }
    }
}

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had (the database is down or restarting).
    #[error("the database is unavailable")]
    Unavailable(#[source] BoxError),
    /// A statement failed.
    #[error("a query failed")]
    Query(#[source] BoxError),
}

/// A reply to store, validated (`POST /api/widget/replies`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReply {
    /// The client's `client_id`, which becomes the row's id: a repeat is recognised by it.
    pub id: Uuid,
    pub thread: Uuid,
    pub role: Role,
    pub author_name: String,
    pub content: String,
}

/// A stored reply, as JSON (`row_to_json`: the same shape the stream sends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Inserted now.
    Created(String),
    /// Stored by an earlier request with the same id.
    Existing(String),
}

/// Why a reply was not stored.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The reply's thread does not exist.
    #[error("the token's thread does not exist")]
    NoThread,
    /// The id is already another reply's.
    #[error("{0}")]
    Conflict(&'static str),
    /// The table's constraints refused the reply.
    #[error("the reply does not fit the table's constraints")]
    Rejected,
    /// The database is unreachable; the client may retry.
    #[error("the database is unavailable")]
    Unavailable,
    /// Anything else: a bug, a missing privilege. Logged, never shown.
    #[error("storing the reply failed")]
    Internal(#[source] BoxError),
}

/// The thread the demo page shows first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoThread {
    pub id: String,
    pub title: Option<String>,
}

/// The demo project and its threads (the demo's dashboard page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoProject {
    pub id: String,
    pub threads: Vec<DemoThread>,
}

/// Everything the broadcaster asks of the served table. Futures are boxed: they are awaited by
/// long-lived tasks and streams, which would otherwise keep room for a query's state all along.
pub trait Store: Send + Sync + 'static {
    /// The last seq handed out in `thread` (0 before its first change).
    fn current_seq<'a>(&'a self, thread: &'a str) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// The counters of `threads` (the anti-entropy sweep of batched delivery): (thread, last seq
    /// handed out), for the threads that have one. One read per thread unless a store does
    /// better.
    fn current_seqs<'a>(
        &'a self,
        threads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Counters, StoreError>> {
        Box::pin(async move {
            let mut counters = Vec::with_capacity(threads.len());
            for thread in threads {
                counters.push((thread.clone(), self.current_seq(thread).await?));
            }
            Ok(counters)
        })
    }

    /// At most `limit` changes with `after < seq <= until` (no upper bound when None), in seq
    /// order: replies in their current state, deletes as tombstones.
    fn changes<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        limit: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>>;

    /// One page of [`Store::changes`]: at most `page.rows` changes, and none after the one that
    /// brings the page to `page.bytes` of data (a page has at least one change). Delivery reads
    /// through this, so that what it holds is bounded whatever the rows. The default reads a page
    /// of rows and cuts it; a store that can stop reading earlier (PostgreSQL) does.
    fn changes_page<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        page: PageSize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            let mut changes = self.changes(thread, after, until, page.rows).await?;
            page.cut(&mut changes);
            Ok(changes)
        })
    }

    /// The last `n` replies of the thread, oldest first.
    fn latest<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>>;

    /// The newest of the last `n` replies that hold at most `max_bytes` of data together (at least
    /// one), oldest first. The default reads `n` and drops the oldest.
    fn latest_within<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            let mut rows = self.latest(thread, n).await?;
            rows.reverse();
            PageSize {
                rows: n,
                bytes: max_bytes,
            }
            .cut(&mut rows);
            rows.reverse();
            Ok(rows)
        })
    }

    /// Inserts `reply` with its id; a repeat of the same reply answers the stored row.
    fn insert_reply<'a>(
        &'a self,
        reply: &'a NewReply,
    ) -> BoxFuture<'a, Result<Stored, InsertError>>;

    /// The first feedback thread, for the demo page.
    fn demo_thread(&self) -> BoxFuture<'_, Result<Option<DemoThread>, StoreError>>;

    /// The project with the most threads, and its threads (oldest first, at most `limit`), for
    /// the demo's dashboard page. None where threads have no projects.
    fn demo_project(&self, limit: i64) -> BoxFuture<'_, Result<Option<DemoProject>, StoreError>> {
        let _ = limit;
        Box::pin(async { Ok(None) })
    }

    /// The keys that sign notifications (`threadcast.keys`, readable by a role that
    /// `threadcast.grant_listen()` named).
    fn keys(&self) -> BoxFuture<'_, Result<KeyRing, StoreError>>;
}
