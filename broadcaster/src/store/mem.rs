//! [`MemStore`]: a [`Store`] in memory that behaves like a table with the extension: every insert,
//! update and delete takes its thread's next seq, an update moves its row to the new seq, a delete
//! leaves a tombstone, and each change yields the notification the extension would send
//! (`Payload::encode`, keys-only and too-large rows included). Tests build the whole broadcaster
//! on it, deliver or drop the notifications as they please, and take it "down" to fail reads.
//!
//! It is for tests and has no limits of its own; it is part of the library so that the
//! integration tests, not only the unit tests, can use it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::value::RawValue;
use threadcast_payload::{Key, KeyRing, Omitted, Op, Payload, FORMAT_VERSION, KEY_BYTES};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    within_bytes, Change, ChangeBody, DemoThread, InsertError, NewReply, PageSize, Store,
    StoreError, Stored,
};
use crate::source::Source;

/// A reply table and its threads, in memory.
pub struct MemStore {
    source: Source,
    state: Mutex<State>,
    /// Where each change's notification goes, when someone listens.
    notify: Option<mpsc::UnboundedSender<String>>,
    reads: Reads,
    /// The keys of `threadcast.keys`; the last one signs.
    keys: Mutex<Vec<Key>>,
}

/// How many reads of each kind a [`MemStore`] has answered (or refused while down): what tests
/// count to check that delivery reads the table only when it must.
#[derive(Debug, Default)]
pub struct Reads {
    pub current_seq: AtomicU64,
    pub changes: AtomicU64,
    pub latest: AtomicU64,
    /// The most bytes of data one read of changes or replies returned.
    pub largest_page: AtomicU64,
}

impl Reads {
    fn page(&self, changes: &[Change]) {
        let bytes = changes.iter().map(Change::size).sum::<usize>() as u64;
        self.largest_page.fetch_max(bytes, Ordering::Relaxed);
    }

    /// (current_seq, changes, latest) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.current_seq.load(Ordering::Relaxed),
            self.changes.load(Ordering::Relaxed),
            self.latest.load(Ordering::Relaxed),
        )
    }
}

#[derive(Default)]
struct State {
    /// The `feedback` table: threads that exist, in creation order, with their titles.
    feedback: Vec<(Uuid, String)>,
    known: HashSet<Uuid>,
    threads: HashMap<String, Log>,
    /// Each live row's thread and current seq, by id.
    rows: HashMap<Uuid, (String, i64)>,
    /// While true every read fails as if the database were down.
    down: bool,
    clock: u64,
}

#[derive(Default)]
struct Log {
    counter: i64,
    /// Current rows by their seq, and tombstones: what `threadcast.changes` lists.
    changes: BTreeMap<i64, Entry>,
}

#[derive(Clone)]
enum Entry {
    Row(Row),
    Tombstone(Uuid),
}

#[derive(Clone)]
struct Row {
    id: Uuid,
    author_type: String,
    author_name: String,
    content: String,
    created_at: String,
}

impl MemStore {
    /// The key this store signs its notifications with, as the extension signs with a key of
    /// `threadcast.keys`.
    pub const KEY: Key = Key {
        id: 1,
        secret: [7; KEY_BYTES],
    };

    /// A store for `source` whose notifications nobody receives (tests hand them over
    /// themselves, from what each write returns).
    pub fn new(source: Source) -> Self {
        MemStore {
            source,
            state: Mutex::new(State::default()),
            notify: None,
            reads: Reads::default(),
            keys: Mutex::new(vec![MemStore::KEY]),
        }
    }

    /// A store whose every change also sends its notification to the returned receiver, as
    /// NOTIFY would: what a reply posted over HTTP needs to reach the streams.
    pub fn with_notifications(source: Source) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut store = MemStore::new(source);
        store.notify = Some(tx);
        (store, rx)
    }

    /// A source as `threadcast.sources` would describe `public.feedback_replies`.
    pub fn source(keys_only: bool) -> Source {
        Source {
            oid: 16384,
            name: "public.feedback_replies".into(),
            channel: "threadcast".into(),
            keys_only,
            thread_column: "feedback_id".into(),
            id_column: "id".into(),
            batched: false,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole; a panic in a test does not change that.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new signing key current, as `threadcast.rotate_key()` does; older keys still
    /// verify. Returns its id.
    pub fn rotate_key(&self) -> u32 {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let id = keys.last().map_or(1, |k| k.id + 1);
        keys.push(Key {
            id,
            secret: [id as u8; KEY_BYTES],
        });
        id
    }

    fn signing_key(&self) -> Key {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.last().cloned().unwrap_or(MemStore::KEY)
    }

    /// The reads answered so far, by kind.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Makes every read fail (true) or work again (false), as a database outage would.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// A new feedback thread; returns its id.
    pub fn create_thread(&self, title: &str) -> Uuid {
        let id = Uuid::new_v4();
        let mut state = self.state();
        state.feedback.push((id, title.to_owned()));
        state.known.insert(id);
        id
    }

    /// Inserts a reply as the agency's `Ada`; returns its id and the notification.
    pub fn insert(&self, thread: Uuid, content: &str) -> (Uuid, String) {
        let id = Uuid::new_v4();
        let payload = self.store_row(
            thread,
            Row {
                id,
                author_type: "agency".into(),
                author_name: "Ada".into(),
                content: content.into(),
                created_at: String::new(),
            },
        );
        (id, payload)
    }

    /// Changes a reply's content; it moves to its thread's next seq. Returns the notification,
    /// None if there is no such reply.
    pub fn update(&self, id: Uuid, content: &str) -> Option<String> {
        let mut state = self.state();
        let (thread, seq) = state.rows.get(&id)?.clone();
        let log = state.threads.get_mut(&thread)?;
        let Some(Entry::Row(mut row)) = log.changes.remove(&seq) else {
            return None;
        };
        row.content = content.into();
        log.counter += 1;
        let seq = log.counter;
        log.changes.insert(seq, Entry::Row(row.clone()));
        state.rows.insert(id, (thread.clone(), seq));
        drop(state);
        Some(self.announce(Op::Update, &thread, seq, &row))
    }

    /// Deletes a reply; its delete takes a seq of its own. Returns the notification, None if
    /// there is no such reply.
    pub fn delete(&self, id: Uuid) -> Option<String> {
        let mut state = self.state();
        let (thread, seq) = state.rows.remove(&id)?;
        let log = state.threads.get_mut(&thread)?;
        log.changes.remove(&seq);
        log.counter += 1;
        let seq = log.counter;
        log.changes.insert(seq, Entry::Tombstone(id));
        drop(state);
        let payload = Payload {
            v: FORMAT_VERSION,
            op: Op::Delete,
            table: self.source.name.as_str().into(),
            src: Some(self.source.oid),
            thread: thread.as_str().into(),
            seq,
            id: id.to_string().into(),
            row: None,
            omitted: None,
            kid: None,
            sig: None,
        };
        self.send(
            payload
                .sign(&self.signing_key())
                .expect("a delete's payload fits"),
        )
    }

    fn store_row(&self, thread: Uuid, mut row: Row) -> String {
        let key = thread.to_string();
        let mut state = self.state();
        state.clock += 1;
        row.created_at = format!("2026-01-01T00:00:00.{:06}+00:00", state.clock);
        let log = state.threads.entry(key.clone()).or_default();
        log.counter += 1;
        let seq = log.counter;
        log.changes.insert(seq, Entry::Row(row.clone()));
        state.rows.insert(row.id, (key.clone(), seq));
        drop(state);
        self.announce(Op::Insert, &key, seq, &row)
    }

    /// The notification of an insert or update, as the extension encodes it; sent on.
    fn announce(&self, op: Op, thread: &str, seq: i64, row: &Row) -> String {
        let json = row_json(thread, seq, row);
        let raw: &RawValue = serde_json::from_str(&json).expect("rows are JSON");
        let payload = Payload {
            v: FORMAT_VERSION,
            op,
            table: self.source.name.as_str().into(),
            src: Some(self.source.oid),
            thread: thread.into(),
            seq,
            id: row.id.to_string().into(),
            row: (!self.source.keys_only).then_some(raw),
            omitted: self.source.keys_only.then_some(Omitted::KeysOnly),
            kid: None,
            sig: None,
        };
        self.send(
            payload
                .sign(&self.signing_key())
                .expect("a row-less payload fits"),
        )
        .expect("sent")
    }

    fn send(&self, payload: String) -> Option<String> {
        if let Some(tx) = &self.notify {
            let _ = tx.send(payload.clone());
        }
        Some(payload)
    }

    fn read<T>(&self, read: impl FnOnce(&State) -> T) -> Result<T, StoreError> {
        let state = self.state();
        if state.down {
            return Err(StoreError::Unavailable(
                "the in-memory database is down".into(),
            ));
        }
        Ok(read(&state))
    }
}

/// The row as `row_to_json` renders a `feedback_replies` row.
fn row_json(thread: &str, seq: i64, row: &Row) -> String {
    serde_json::json!({
        "id": row.id,
        "feedback_id": thread,
        "author_type": row.author_type,
        "author_name": row.author_name,
        "content": row.content,
        "created_at": row.created_at,
        "thread_seq": seq,
    })
    .to_string()
}

fn change(thread: &str, seq: i64, entry: &Entry) -> Change {
    let body = match entry {
        Entry::Row(row) => ChangeBody::Reply {
            row: row_json(thread, seq, row),
        },
        Entry::Tombstone(id) => ChangeBody::Delete { id: id.to_string() },
    };
    Change { seq, body }
}

impl Store for MemStore {
    fn current_seq<'a>(&'a self, thread: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.reads.current_seq.fetch_add(1, Ordering::Relaxed);
        let seq = self.read(|state| state.threads.get(thread).map_or(0, |log| log.counter));
        async move { seq }.boxed()
    }

    fn changes<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        limit: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        let page = PageSize {
            rows: limit,
            bytes: usize::MAX,
        };
        self.changes_page(thread, after, until, page)
    }

    fn changes_page<'a>(
        &'a self,
        thread: &'a str,
        after: i64,
        until: Option<i64>,
        page: PageSize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        self.reads.changes.fetch_add(1, Ordering::Relaxed);
        let changes = self.read(|state| {
            let Some(log) = state.threads.get(thread) else {
                return Vec::new();
            };
            let until = until.unwrap_or(i64::MAX);
            if until <= after {
                return Vec::new();
            }
            // As PostgreSQL does: stop reading at the bound, rather than read and cut.
            let rows = log
                .changes
                .range(after + 1..=until)
                .take(page.rows.max(0) as usize)
                .map(|(seq, entry)| change(thread, *seq, entry));
            within_bytes(rows, page.bytes).collect::<Vec<_>>()
        });
        if let Ok(changes) = &changes {
            self.reads.page(changes);
        }
        async move { changes }.boxed()
    }

    fn latest<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        self.latest_within(thread, n, usize::MAX)
    }

    fn latest_within<'a>(
        &'a self,
        thread: &'a str,
        n: i32,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        self.reads.latest.fetch_add(1, Ordering::Relaxed);
        let rows = self.read(|state| {
            let Some(log) = state.threads.get(thread) else {
                return Vec::new();
            };
            let newest_first = log
                .changes
                .iter()
                .rev()
                .filter(|(_, entry)| matches!(entry, Entry::Row(_)))
                .take(n.max(0) as usize)
                .map(|(seq, entry)| change(thread, *seq, entry));
            let mut rows: Vec<Change> = within_bytes(newest_first, max_bytes).collect();
            rows.reverse();
            rows
        });
        if let Ok(rows) = &rows {
            self.reads.page(rows);
        }
        async move { rows }.boxed()
    }

    fn insert_reply<'a>(
        &'a self,
        reply: &'a NewReply,
    ) -> BoxFuture<'a, Result<Stored, InsertError>> {
        let stored = (|| {
            let state = self.state();
            if state.down {
                return Err(InsertError::Unavailable);
            }
            if !state.known.contains(&reply.thread) {
                return Err(InsertError::NoThread);
            }
            if let Some((thread, seq)) = state.rows.get(&reply.id) {
                let Some(Entry::Row(row)) = state.threads[thread].changes.get(seq) else {
                    unreachable!("a live row is in its thread's log");
                };
                if *thread != reply.thread.to_string() {
                    return Err(InsertError::Conflict(
                        "client_id is already the id of a reply in another thread",
                    ));
                }
                if row.author_type != reply.role.as_str()
                    || row.author_name != reply.author_name
                    || row.content != reply.content
                {
                    return Err(InsertError::Conflict(
                        "client_id is already the id of a different reply",
                    ));
                }
                return Ok(Stored::Existing(row_json(thread, *seq, row)));
            }
            drop(state);
            let row = Row {
                id: reply.id,
                author_type: reply.role.as_str().into(),
                author_name: reply.author_name.clone(),
                content: reply.content.clone(),
                created_at: String::new(),
            };
            self.store_row(reply.thread, row);
            let state = self.state();
            let (thread, seq) = &state.rows[&reply.id];
            let Some(Entry::Row(row)) = state.threads[thread].changes.get(seq) else {
                unreachable!("the row was stored just now");
            };
            Ok(Stored::Created(row_json(thread, *seq, row)))
        })();
        async move { stored }.boxed()
    }

    fn keys(&self) -> BoxFuture<'_, Result<KeyRing, StoreError>> {
        let keys = self
            .read(|_| KeyRing::new(self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()));
        async move { keys }.boxed()
    }

    fn demo_thread(&self) -> BoxFuture<'_, Result<Option<DemoThread>, StoreError>> {
        let first = self.read(|state| {
            state.feedback.first().map(|(id, title)| DemoThread {
                id: id.to_string(),
                title: Some(title.clone()),
            })
        });
        async move { first }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(future: BoxFuture<'_, T>) -> T {
        futures::executor::block_on(future)
    }

    #[test]
    fn changes_list_current_rows_and_tombstones_like_threadcast_changes() {
        let store = MemStore::new(MemStore::source(false));
        let thread = store.create_thread("t");
        let key = thread.to_string();
        let (a, _) = store.insert(thread, "a");
        let (b, _) = store.insert(thread, "b");
        store.update(a, "a, edited").unwrap();
        store.delete(b).unwrap();

        let changes = block(store.changes(&key, 0, None, 100)).unwrap();
        let listed: Vec<_> = changes.iter().map(|c| (c.seq, c.kind())).collect();
        use threadcast_payload::ChangeKind::*;
        assert_eq!(
            listed,
            [(3, Reply), (4, Delete)],
            "seq 1 moved to 3, seq 2 was deleted at 4"
        );
        assert_eq!(block(store.current_seq(&key)).unwrap(), 4);
        assert_eq!(
            block(store.changes(&key, 0, Some(3), 100)).unwrap().len(),
            1
        );
        assert_eq!(
            block(store.changes(&key, 0, None, 1)).unwrap().len(),
            1,
            "paged"
        );
        assert_eq!(
            block(store.latest(&key, 5)).unwrap().len(),
            1,
            "deletes are not replies"
        );
    }

    #[test]
    fn notifications_are_the_extensions_payloads() {
        let store = MemStore::new(MemStore::source(true));
        let thread = store.create_thread("t");
        let (_, text) = store.insert(thread, "secret");
        let payload = Payload::decode(&text).unwrap();
        assert_eq!((payload.seq, payload.op), (1, Op::Insert));
        assert_eq!(
            payload.omitted,
            Some(Omitted::KeysOnly),
            "a keys-only source sends no row"
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn a_down_store_fails_every_read() {
        let store = MemStore::new(MemStore::source(false));
        store.set_down(true);
        assert!(matches!(
            block(store.current_seq("t")),
            Err(StoreError::Unavailable(_))
        ));
    }
}
