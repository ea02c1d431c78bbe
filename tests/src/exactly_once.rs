//! The check every fault test ends with: a subscriber received exactly the committed changes of
//! its thread, each once, in seq order, as the table tells them (`threadcast.changes`).
//!
//! The table is the truth because it holds only what committed: a reply whose transaction rolled
//! back, or whose INSERT was cut off by a restart, is not in it, and must not have been delivered.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::db::{self, TestDb};
use crate::sse::SseEvent;
use crate::subscriber::Subscriber;

/// The source table of [`TestDb`].
pub const REPLIES: &str = "public.feedback_replies";

/// One change of a thread as `threadcast.changes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub enum TableChange {
    /// A reply in its current state.
    Reply { id: String, row: serde_json::Value },
    /// A delete (its tombstone).
    Delete { id: String },
}

impl TableChange {
    fn id(&self) -> &str {
        match self {
            TableChange::Reply { id, .. } | TableChange::Delete { id } => id,
        }
    }
}

/// What the table says a subscriber of one thread is owed.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The primary key column: a reply event's data names its row by it.
    pub id_column: String,
    /// Every committed change, by seq.
    pub changes: BTreeMap<i64, TableChange>,
}

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
            let change = match kind {
                "delete" => TableChange::Delete { id },
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
/// each with [`assert_exactly_once`]. Returns how many streams each one opened.
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
        let events = subscriber.stop().await;
        assert_exactly_once(&name, &events, db, thread).await;
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

/// Compares what a subscriber received with what the table holds; Err describes every
/// difference.
///
/// Received events must have strictly increasing seqs (nothing doubled, nothing out of order),
/// include every change of the table, and agree with it. One kind of event may be received that
/// the table no longer lists: a reply that a later update or delete of the same row (received
/// too) has since moved to a higher seq. Anything else the table does not know never committed.
pub fn check(events: &[SseEvent], committed: &Committed) -> Result<(), String> {
    let table = &committed.changes;
    let mut report = String::new();
    let mut seen = HashMap::<i64, usize>::new();
    let mut previous = None;
    for (at, event) in events.iter().enumerate() {
        let Some(seq) = event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) else {
            let _ = writeln!(report, "- event {at} has no numeric id: {event:?}");
            continue;
        };
        if let Some(first) = seen.insert(seq, at) {
            let _ = writeln!(
                report,
                "- seq {seq} was received twice (events {first} and {at})"
            );
        } else if previous.is_some_and(|p| seq < p) {
            let _ = writeln!(
                report,
                "- seq {seq} (event {at}) arrived after seq {}",
                previous.unwrap()
            );
        }
        previous = Some(previous.map_or(seq, |p: i64| p.max(seq)));
    }

    let lost: Vec<i64> = table
        .keys()
        .filter(|seq| !seen.contains_key(seq))
        .copied()
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(
            report,
            "- {} committed change(s) never arrived: seqs {}",
            lost.len(),
            ranges(&lost)
        );
    }

    // The highest seq at which the table knows each row, to recognise superseded replies.
    let mut latest_of_row = HashMap::<&str, i64>::new();
    for (seq, change) in table {
        latest_of_row.insert(change.id(), *seq);
    }
    for event in events {
        let Some(seq) = event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) else {
            continue;
        };
        let data: serde_json::Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(e) => {
                let _ = writeln!(
                    report,
                    "- seq {seq}: data is not JSON ({e}): {:?}",
                    event.data
                );
                continue;
            }
        };
        let key = if event.event == "reply" {
            committed.id_column.as_str()
        } else {
            "id"
        };
        // The key as text, as `threadcast.changes` gives it (a number's JSON is its text).
        let id = match &data[key] {
            serde_json::Value::String(id) => id.clone(),
            other => other.to_string(),
        };
        let id = id.as_str();
        match (table.get(&seq), event.event.as_str()) {
            (Some(TableChange::Reply { row, .. }), "reply") if *row == data => {}
            (Some(TableChange::Delete { id: deleted }), "delete") if deleted == id => {}
            (Some(expected), _) => {
                let _ = writeln!(
                    report,
                    "- seq {seq}: received `{}` {data}, the table has {expected:?}",
                    event.event
                );
            }
            (None, "reply") if latest_of_row.get(id).is_some_and(|latest| *latest > seq) => {}
            (None, _) => {
                let _ = writeln!(
                    report,
                    "- seq {seq}: received `{}` {data}, which never committed (or was not superseded)",
                    event.event
                );
            }
        }
    }

    if report.is_empty() {
        Ok(())
    } else {
        let _ = write!(
            report,
            "(received {} events, seqs {}; the table lists {} changes, seqs {})",
            events.len(),
            ranges(
                &events
                    .iter()
                    .filter_map(|e| e.id.as_deref()?.parse().ok())
                    .collect::<Vec<_>>()
            ),
            table.len(),
            ranges(&table.keys().copied().collect::<Vec<_>>())
        );
        Err(report)
    }
}

/// `1-5, 7, 9-10`: a list of seqs, short enough to read in a failure.
fn ranges(seqs: &[i64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(seq: i64, id: &str, content: &str) -> SseEvent {
        SseEvent {
            id: Some(seq.to_string()),
            event: "reply".into(),
            data: json!({ "id": id, "content": content }).to_string(),
        }
    }

    fn delete(seq: i64, id: &str) -> SseEvent {
        SseEvent {
            id: Some(seq.to_string()),
            event: "delete".into(),
            data: json!({ "id": id }).to_string(),
        }
    }

    fn table(changes: &[(i64, &str, Option<&str>)]) -> Committed {
        let changes = changes
            .iter()
            .map(|(seq, id, content)| {
                let change = match content {
                    Some(c) => TableChange::Reply {
                        id: (*id).into(),
                        row: json!({ "id": id, "content": c }),
                    },
                    None => TableChange::Delete { id: (*id).into() },
                };
                (*seq, change)
            })
            .collect();
        Committed {
            id_column: "id".into(),
            changes,
        }
    }

    #[test]
    fn exactly_the_table_passes() {
        let t = table(&[(1, "a", Some("x")), (2, "b", Some("y")), (3, "a", None)]);
        let events = [reply(1, "a", "x"), reply(2, "b", "y"), delete(3, "a")];
        // Seq 1 is still listed here; a superseded reply is covered below.
        assert_eq!(check(&events, &t), Ok(()));
    }

    #[test]
    fn a_reply_superseded_by_a_later_update_may_have_been_received() {
        let t = table(&[(2, "b", Some("y")), (3, "a", Some("x, edited"))]);
        let events = [
            reply(1, "a", "x"),
            reply(2, "b", "y"),
            reply(3, "a", "x, edited"),
        ];
        assert_eq!(check(&events, &t), Ok(()));
    }

    #[test]
    fn lost_doubled_reordered_and_phantom_events_are_each_reported() {
        let t = table(&[
            (1, "a", Some("x")),
            (2, "b", Some("y")),
            (3, "c", Some("z")),
        ]);
        let lost = check(&[reply(1, "a", "x"), reply(3, "c", "z")], &t).unwrap_err();
        assert!(lost.contains("never arrived: seqs 2"), "{lost}");
        let doubled = check(
            &[
                reply(1, "a", "x"),
                reply(2, "b", "y"),
                reply(2, "b", "y"),
                reply(3, "c", "z"),
            ],
            &t,
        )
        .unwrap_err();
        assert!(doubled.contains("seq 2 was received twice"), "{doubled}");
        let reordered = check(
            &[reply(2, "b", "y"), reply(1, "a", "x"), reply(3, "c", "z")],
            &t,
        )
        .unwrap_err();
        assert!(reordered.contains("arrived after seq 2"), "{reordered}");
        let phantom = check(
            &[
                reply(1, "a", "x"),
                reply(2, "b", "y"),
                reply(3, "c", "z"),
                reply(4, "d", "rolled back"),
            ],
            &t,
        )
        .unwrap_err();
        assert!(phantom.contains("never committed"), "{phantom}");
        let altered = check(
            &[
                reply(1, "a", "x"),
                reply(2, "b", "forged"),
                reply(3, "c", "z"),
            ],
            &t,
        )
        .unwrap_err();
        assert!(altered.contains("seq 2: received `reply`"), "{altered}");
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(ranges(&[]), "none");
    }
}
