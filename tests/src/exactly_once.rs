//! The check every fault test ends with: a subscriber received exactly the committed changes of
//! its thread, each once, in seq order, as the table tells them (`threadcast.changes`). The
//! comparison itself is the harness's ([`threadcast_harness::audit::check`]); this reads the table.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

pub use threadcast_harness::audit::{check, Committed, TableChange};
use threadcast_payload::ChangeKind;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::db::{self, TestDb};
use crate::sse::SseEvent;
use crate::subscriber::Subscriber;

/// The source table of [`TestDb`].
pub const REPLIES: &str = "public.feedback_replies";

/// Every committed change of `thread` in `table` with seq > `after`.
pub async fn committed_changes(
    client: &Client,
    table: &str,
    thread: &str,
    after: i64,
) -> Committed {
    let id_column: String = client
        .query_one(
            "SELECT id_column::text FROM threadcast.sources WHERE source = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("{table} is a threadcast source: {e}"))
        .get(0);
    let rows = client
        .query(
            "SELECT seq, kind, id, \"row\"::text
               FROM threadcast.changes($1::text::regclass, $2, $3, NULL, 2147483647)",
            &[&table, &thread, &after],
        )
        .await
        .unwrap_or_else(|e| panic!("read the changes of thread {thread} in {table}: {e}"));
    let changes = rows
        .iter()
        .map(|row| {
            let seq: i64 = row.get(0);
            let kind: &str = row.get(1);
            let id: String = row.get(2);
            let change = match ChangeKind::parse(kind) {
                Some(ChangeKind::Delete) => TableChange::Delete { id },
                Some(ChangeKind::Reset) => TableChange::Reset,
                _ => TableChange::Reply {
                    id,
                    row: serde_json::from_str(row.get::<_, &str>(3))
                        .expect("threadcast.changes returns JSON rows"),
                },
            };
            (seq, change)
        })
        .collect();
    Committed { id_column, changes }
}

/// Panics, naming `who` and every discrepancy, unless `events` are exactly the committed changes
/// of `thread` in the test database's replies table since its start.
pub async fn assert_exactly_once(who: &str, events: &[SseEvent], db: &TestDb, thread: Uuid) {
    // A connection of its own: the test's may have died with a restarted server.
    let client = db::connect(&db.admin_url).await;
    let table = committed_changes(&client, REPLIES, &thread.to_string(), 0).await;
    if let Err(report) = check(events, &table) {
        panic!("{who} did not receive exactly the committed changes of thread {thread}:\n{report}");
    }
}

/// Ends a fault test: writes one last reply to each subscriber's thread and waits until every
/// subscriber has it (anything doubled or late would have come before it), stops them, and checks
/// each against the table after its floor ([`Subscriber::floor`]: everything for a widget-like
/// subscriber, everything after its join point for a live one), as a plain EventSource with no
/// deduplication of its own would see it. Returns how many streams each one opened.
pub async fn assert_every_subscriber_got_exactly_once(
    db: &TestDb,
    subscribers: Vec<Subscriber>,
) -> Vec<u64> {
    // A connection of its own: the test's may have died with a restarted server.
    let client = db::connect(&db.admin_url).await;
    let mut last = HashMap::new();
    for subscriber in &subscribers {
        if let Entry::Vacant(seq) = last.entry(subscriber.thread) {
            db::insert_reply(&client, subscriber.thread, "the last reply").await;
            seq.insert(db.current_seq(subscriber.thread).await);
        }
    }
    for subscriber in &subscribers {
        subscriber.wait_for_seq(last[&subscriber.thread]).await;
    }
    let mut connects = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        connects.push(subscriber.connects());
        let (name, thread) = (subscriber.name.clone(), subscriber.thread);
        let floor = subscriber
            .floor()
            .unwrap_or_else(|| panic!("{name} never joined its thread"));
        let events = subscriber.stop().await;
        let table = committed_changes(&client, REPLIES, &thread.to_string(), floor).await;
        if let Err(report) = check(&events, &table) {
            panic!(
                "{name} did not receive exactly the committed changes of thread {thread} after \
                 seq {floor}:\n{report}"
            );
        }
    }
    connects
}

/// [`assert_exactly_once`] for any source table and thread key, for a subscriber that started
/// after seq `after`.
pub async fn assert_exactly_once_in(
    who: &str,
    events: &[SseEvent],
    client: &Client,
    table: &str,
    thread: &str,
    after: i64,
) {
    let committed = committed_changes(client, table, thread, after).await;
    if let Err(report) = check(events, &committed) {
        panic!("{who} did not receive exactly the committed changes of thread {thread} in {table} after {after}:\n{report}");
    }
}
