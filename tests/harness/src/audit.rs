//! The exactly-once audit: did a client receive exactly the changes its thread committed, each
//! once, in seq order? [`audit_seqs`] answers for the numbers alone (the load generator's soak
//! uses it); [`check`] also compares each event with the table's row (the tests use it).
//!
//! The table is the truth because it holds only what committed: a reply whose transaction rolled
//! back, or whose INSERT was cut off by a restart, is not in it, and must not have been delivered.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use threadcast_payload::ChangeKind;

use crate::sse::SseEvent;

const REPLY: &str = ChangeKind::Reply.as_str();
const DELETE: &str = ChangeKind::Delete.as_str();

/// What a client's received seqs say against the seqs it was owed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeqAudit {
    /// Seqs received again: (seq, index of the first receipt, index of the repeat).
    pub duplicated: Vec<(i64, usize, usize)>,
    /// Seqs received after a higher one: (seq, its index, the highest seq before it).
    pub out_of_order: Vec<(i64, usize, i64)>,
    /// Owed seqs never received, in order.
    pub lost: Vec<i64>,
}

impl SeqAudit {
    /// Whether nothing was doubled, misordered or lost.
    pub fn is_clean(&self) -> bool {
        self.duplicated.is_empty() && self.out_of_order.is_empty() && self.lost.is_empty()
    }
}

/// Audits `received` (seqs in arrival order) against `owed` (every seq the client must get).
pub fn audit_seqs(received: &[i64], owed: impl IntoIterator<Item = i64>) -> SeqAudit {
    let mut audit = SeqAudit::default();
    let mut seen = HashMap::<i64, usize>::with_capacity(received.len());
    let mut highest: Option<i64> = None;
    for (at, &seq) in received.iter().enumerate() {
        if let Some(first) = seen.insert(seq, at) {
            audit.duplicated.push((seq, first, at));
        } else if let Some(previous) = highest.filter(|p| seq < *p) {
            audit.out_of_order.push((seq, at, previous));
        }
        highest = Some(highest.map_or(seq, |p| p.max(seq)));
    }
    let mut lost: Vec<i64> = owed.into_iter().filter(|s| !seen.contains_key(s)).collect();
    lost.sort_unstable();
    lost.dedup();
    audit.lost = lost;
    audit
}

/// One change of a thread as `threadcast.changes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub enum TableChange {
    /// A reply in its current state.
    Reply { id: String, row: serde_json::Value },
    /// A delete (its tombstone).
    Delete { id: String },
    /// A truncation: the thread was reset.
    Reset,
}

impl TableChange {
    fn id(&self) -> &str {
        match self {
            TableChange::Reply { id, .. } | TableChange::Delete { id } => id,
            TableChange::Reset => "",
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
    let mut seqs = Vec::with_capacity(events.len());
    for (at, event) in events.iter().enumerate() {
        match event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) {
            Some(seq) => seqs.push(seq),
            None => {
                let _ = writeln!(report, "- event {at} has no numeric id: {event:?}");
            }
        }
    }
    let audit = audit_seqs(&seqs, table.keys().copied());
    for (seq, first, again) in &audit.duplicated {
        let _ = writeln!(
            report,
            "- seq {seq} was received twice (events {first} and {again})"
        );
    }
    for (seq, at, previous) in &audit.out_of_order {
        let _ = writeln!(
            report,
            "- seq {seq} (event {at}) arrived after seq {previous}"
        );
    }
    if !audit.lost.is_empty() {
        let _ = writeln!(
            report,
            "- {} committed change(s) never arrived: seqs {}",
            audit.lost.len(),
            ranges(&audit.lost)
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
        let key = if event.event == REPLY {
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
            (Some(TableChange::Reply { row, .. }), REPLY) if *row == data => {}
            (Some(TableChange::Delete { id: deleted }), DELETE) if deleted == id => {}
            (Some(TableChange::Reset), kind) if kind == ChangeKind::Reset.as_str() => {}
            (Some(expected), _) => {
                let _ = writeln!(
                    report,
                    "- seq {seq}: received `{}` {data}, the table has {expected:?}",
                    event.event
                );
            }
            (None, REPLY) if latest_of_row.get(id).is_some_and(|latest| *latest > seq) => {}
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
pub fn ranges(seqs: &[i64]) -> String {
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
            event: REPLY.into(),
            data: json!({ "id": id, "content": content }).to_string(),
        }
    }

    fn delete(seq: i64, id: &str) -> SseEvent {
        SseEvent {
            id: Some(seq.to_string()),
            event: DELETE.into(),
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
