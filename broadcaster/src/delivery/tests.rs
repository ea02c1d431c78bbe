//! Delivery on the in-memory store: the hand-over, repairs, forged numbers, slow subscribers,
//! and a property test that drives random interleavings of writes, subscribes, outages, lost
//! notifications and reconnects, then checks every client against the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use threadcast_payload::{Omitted, Op as PayloadOp, Payload, FORMAT_VERSION};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::*;
use crate::store::MemStore;

const CHANNEL: &str = "threadcast";

struct Rig {
    store: Arc<MemStore>,
    delivery: Delivery,
    shutdown: CancellationToken,
}

/// Delivery on a fresh store, with the signing keys read as the listener reads them when it
/// LISTENs.
async fn rig(keys_only: bool, subscriber_buffer: usize, page_rows: i32) -> Rig {
    let source = MemStore::source(keys_only);
    let store = Arc::new(MemStore::new(source.clone()));
    let shutdown = CancellationToken::new();
    let delivery = Delivery::new(
        store.clone(),
        &source,
        Settings {
            subscriber_buffer,
            max_backoff: Duration::from_millis(400),
            page_rows,
        },
        Metrics::new(),
        shutdown.clone(),
        TaskTracker::new(),
    );
    delivery
        .refresh_keys()
        .await
        .expect("the keys are readable");
    Rig {
        store,
        delivery,
        shutdown,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The seq, event name and data of a rendered event.
fn parts(event: &crate::sse::Event) -> (i64, String, serde_json::Value) {
    let frame = String::from_utf8(event.frame().to_vec()).unwrap();
    let field = |name: &str| {
        frame
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {frame:?}"))
            .to_owned()
    };
    (
        field("id: ").parse().unwrap(),
        field("event: "),
        serde_json::from_str(&field("data: ")).unwrap(),
    )
}

/// The next event of `feed`, skipping `Joined`; panics if the feed ends or stalls.
async fn next_event(feed: &mut Feed) -> crate::sse::Event {
    loop {
        let step = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("an event within 10 s")
            .expect("the feed goes on");
        if let Step::Event(event) = step {
            return event;
        }
    }
}

#[tokio::test]
async fn a_feed_joins_before_it_reads_the_table_so_nothing_committed_in_between_is_lost() {
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    for i in 1..=3 {
        rig.store.insert(thread, &format!("old {i}"));
    }
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::After(1));
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    // Committed after the join: announced live, and also in the table the catch-up reads.
    let (_, payload) = rig.store.insert(thread, "new");
    rig.delivery.notify(CHANNEL, &payload).await;

    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(next_event(&mut feed).await.seq);
    }
    assert_eq!(seqs, [2, 3, 4], "catch-up then live, 4 once");
}

#[tokio::test]
async fn a_client_resuming_ahead_of_its_thread_task_is_not_sent_what_it_has_again() {
    // Found by the property test below: the thread's task is behind the client's Last-Event-ID
    // (notifications were lost and it has not resynced yet), and forwards 1..=3 once it does.
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let mut first = rig.delivery.feed(&key, Start::Live);
    assert!(matches!(first.next().await, Some(Step::Joined)));
    for i in 1..=3 {
        rig.store.insert(thread, &format!("lost {i}"));
    }
    let mut resumed = rig.delivery.feed(&key, Start::After(3));
    assert!(matches!(resumed.next().await, Some(Step::Joined)));
    // Its catch-up finds nothing after 3; then it waits for live events.
    let waiting = tokio::time::timeout(Duration::from_millis(50), resumed.next()).await;
    assert!(waiting.is_err(), "nothing to send yet: {waiting:?}");

    rig.delivery.resync_all();
    let (_, payload) = rig.store.insert(thread, "after the resync");
    rig.delivery.notify(CHANNEL, &payload).await;

    assert_eq!(
        next_event(&mut resumed).await.seq,
        4,
        "1..=3 are not sent again"
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut first).await.seq);
    }
    assert_eq!(got, [1, 2, 3, 4], "the live client gets the repair");
}

/// Inserts `n` replies into `thread` and announces each to `delivery`.
async fn announced(rig: &Rig, delivery: &Delivery, thread: Uuid, n: usize) {
    for i in 0..n {
        let (_, payload) = rig.store.insert(thread, &format!("reply {i}"));
        delivery.notify(CHANNEL, &payload).await;
    }
}

/// The seqs of the next `n` events of `feed`.
async fn next_seqs(feed: &mut Feed, n: usize) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(n);
    for _ in 0..n {
        seqs.push(next_event(feed).await.seq);
    }
    seqs
}

#[tokio::test]
async fn a_client_that_read_up_to_20_resuming_on_a_thread_task_stuck_at_18_gets_nothing_twice() {
    // Issue 10's first hole, as reported: during a LISTEN outage the thread task's last seq is
    // stuck at 18; a client that read up to 20 reconnects with Last-Event-ID: 20 and joins at 18;
    // its catch-up finds nothing after 20; when the listener comes back the resync forwards 19
    // and 20, which the stream must not send again.
    let rig = rig(false, 64, 1000).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let mut watcher = rig.delivery.feed(&key, Start::Live);
    assert!(matches!(watcher.next().await, Some(Step::Joined)));
    announced(&rig, &rig.delivery, thread, 18).await;
    assert_eq!(next_seqs(&mut watcher, 18).await.last(), Some(&18));
    // The listener is down: 19 and 20 commit, and their notifications are lost.
    rig.store.insert(thread, "19, lost");
    rig.store.insert(thread, "20, lost");

    let mut resumed = rig.delivery.feed(&key, Start::After(20));
    assert!(matches!(resumed.next().await, Some(Step::Joined)));
    assert_eq!(
        resumed.joined_at(),
        Some(18),
        "it joined a task stuck at 18"
    );
    let waiting = tokio::time::timeout(Duration::from_millis(50), resumed.next()).await;
    assert!(waiting.is_err(), "its catch-up finds nothing: {waiting:?}");
    rig.delivery.resync_all();
    announced(&rig, &rig.delivery, thread, 1).await;

    assert_eq!(
        next_seqs(&mut resumed, 1).await,
        [21],
        "19 and 20 are not sent again"
    );
    assert_eq!(next_seqs(&mut watcher, 3).await, [19, 20, 21]);
}

#[tokio::test]
async fn a_client_moving_to_a_replica_whose_listener_is_behind_gets_nothing_twice() {
    // The same hole behind a load balancer: two broadcasters serve one table, and their
    // listeners stand at different positions. The client read 1..=5 from the first and
    // reconnects, with Last-Event-ID: 5, to the second, which has only seen up to 3.
    let rig = rig(false, 64, 1000).await;
    let behind = Delivery::new(
        rig.store.clone(),
        &MemStore::source(false),
        Settings::default(),
        Metrics::new(),
        rig.shutdown.clone(),
        TaskTracker::new(),
    );
    behind.refresh_keys().await.unwrap();
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let mut on_behind = behind.feed(&key, Start::Live);
    assert!(matches!(on_behind.next().await, Some(Step::Joined)));
    let mut on_ahead = rig.delivery.feed(&key, Start::Live);
    assert!(matches!(on_ahead.next().await, Some(Step::Joined)));
    for i in 1..=5 {
        let (_, payload) = rig.store.insert(thread, &format!("reply {i}"));
        rig.delivery.notify(CHANNEL, &payload).await;
        if i <= 3 {
            behind.notify(CHANNEL, &payload).await;
        }
    }
    assert_eq!(next_seqs(&mut on_ahead, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(next_seqs(&mut on_behind, 3).await, [1, 2, 3]);

    let mut moved = behind.feed(&key, Start::After(5));
    assert!(matches!(moved.next().await, Some(Step::Joined)));
    assert_eq!(moved.joined_at(), Some(3));
    let waiting = tokio::time::timeout(Duration::from_millis(50), moved.next()).await;
    assert!(waiting.is_err(), "its catch-up finds nothing: {waiting:?}");
    // The second replica's listener catches up (it reconnects, or the notifications arrive).
    behind.resync_all();
    let (_, payload) = rig.store.insert(thread, "reply 6");
    behind.notify(CHANNEL, &payload).await;
    assert_eq!(
        next_seqs(&mut moved, 1).await,
        [6],
        "4 and 5 are not sent again"
    );
}

#[tokio::test]
async fn history_then_live_loses_nothing_committed_between_the_join_and_the_history_read() {
    // Issue 10's second hole: the stream joins at 10, replies 11 and 12 commit before the
    // history is read, and `?history=1` reads [12]. The stream must still send 11, and each of
    // 11 and 12 once.
    let rig = rig(false, 64, 1000).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    announced(&rig, &rig.delivery, thread, 10).await;
    for n in [1, 3] {
        let mut feed = rig.delivery.feed(&key, Start::History(n));
        assert!(matches!(feed.next().await, Some(Step::Joined)));
        let joined = feed.joined_at().expect("joined");
        // Committed after the join, before the feed reads its history.
        announced(&rig, &rig.delivery, thread, 2).await;
        let mut got = Vec::new();
        while got.last() != Some(&(joined + 2)) {
            got.push(next_event(&mut feed).await.seq);
        }
        let live = [joined + 1, joined + 2];
        assert!(
            got.ends_with(&live) && got.windows(2).all(|w| w[0] < w[1]),
            "history={n}, joined at {joined}: {got:?} must end with {live:?}, each once, in order"
        );
        assert!(
            got.len() <= n as usize + 2 && got.iter().all(|s| *s > joined - n as i64),
            "history={n}: at most the last {n} replies before the join, then the live ones: {got:?}"
        );
    }
}

#[tokio::test]
async fn a_hole_and_a_left_out_row_are_read_from_the_table() {
    let rig = rig(true, 16, 2).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    // Three notifications lost (a LISTEN outage), then a keys-only one for the fourth.
    for i in 1..=3 {
        rig.store.insert(thread, &format!("missed {i}"));
    }
    let (_, payload) = rig.store.insert(thread, "announced");
    rig.delivery.notify(CHANNEL, &payload).await;

    let mut got = Vec::new();
    for _ in 0..4 {
        let (seq, _, data) = parts(&next_event(&mut feed).await);
        got.push((seq, data["content"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "read in pages of two: {got:?}"
    );
    assert_eq!(got[3].1, "announced", "the row comes from the table");
}

#[tokio::test]
async fn a_forged_number_far_ahead_does_not_silence_the_thread() {
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    // Signed with the store's own key: even a notification that verifies is trusted for no
    // number past the thread's counter.
    let forged = Payload {
        v: FORMAT_VERSION,
        op: PayloadOp::Insert,
        table: "public.feedback_replies".into(),
        src: Some(MemStore::source(false).oid),
        thread: thread.to_string().into(),
        seq: 1_000_000,
        id: "x".into(),
        row: None,
        omitted: Some(Omitted::TooLarge),
        kid: None,
        sig: None,
    }
    .sign(&MemStore::KEY)
    .unwrap();
    rig.delivery.notify(CHANNEL, &forged).await;
    let (_, payload) = rig.store.insert(thread, "real");
    rig.delivery.notify(CHANNEL, &payload).await;

    let (seq, _, data) = parts(&next_event(&mut feed).await);
    assert_eq!((seq, data["content"].as_str()), (1, Some("real")));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_cut_off_after_what_it_had_queued() {
    let rig = rig(false, 2, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut slow = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(slow.next().await, Some(Step::Joined)));
    for i in 1..=5 {
        let (_, payload) = rig.store.insert(thread, &format!("r{i}"));
        rig.delivery.notify(CHANNEL, &payload).await;
    }
    let mut got = Vec::new();
    while let Some(step) = tokio::time::timeout(Duration::from_secs(10), slow.next())
        .await
        .expect("the feed ends rather than hangs")
    {
        if let Step::Event(event) = step {
            got.push(event.seq);
        }
    }
    assert_eq!(got, [1, 2], "what fitted its buffer, then the end");
}

#[tokio::test]
async fn the_last_subscriber_leaving_retires_the_thread_task() {
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t").to_string();
    let mut feed = rig.delivery.feed(&thread, Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    assert_eq!(rig.delivery.thread_count(), 1);
    drop(feed);
    for _ in 0..100 {
        if rig.delivery.thread_count() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the thread task did not retire");
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    /// A write (0: insert, 1: update, 2: delete of an existing reply picked by `pick`); its
    /// notification is lost while the listener is down.
    Write { kind: u8, pick: usize },
    /// A new client resuming after a seq (a fraction of the current counter, in percent).
    Connect { from_percent: u8 },
    /// A client's connection drops; it reconnects with the last id it has.
    Drop { pick: usize },
    /// The listener goes down (notifications are lost) or comes back (and resyncs).
    Listener { up: bool },
    /// The database goes down (reads fail) or comes back.
    Database { up: bool },
    /// Let the tasks run for a while.
    Wait { ms: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, any::<usize>()).prop_map(|(kind, pick)| Op::Write { kind, pick }),
        2 => (0u8..=100).prop_map(|from_percent| Op::Connect { from_percent }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => any::<bool>().prop_map(|up| Op::Listener { up }),
        1 => any::<bool>().prop_map(|up| Op::Database { up }),
        2 => (1u8..50).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// A client that reconnects like EventSource: each time its feed ends (or is dropped), a new
/// one resumes after the last seq it received.
struct Client {
    from: i64,
    events: Arc<Mutex<Vec<crate::sse::Event>>>,
    kick: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn client(delivery: &Delivery, thread: &str, from: i64) -> Client {
    let events = Arc::new(Mutex::new(Vec::new()));
    let kick = Arc::new(tokio::sync::Notify::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (delivery, thread) = (delivery.clone(), thread.to_owned());
        let (events, kick, stop) = (events.clone(), kick.clone(), stop.clone());
        async move {
            let mut last = from;
            while !stop.is_cancelled() {
                let mut feed = delivery.feed(&thread, Start::After(last));
                loop {
                    let step = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = kick.notified() => break,
                        step = feed.next() => step,
                    };
                    match step {
                        Some(Step::Event(event)) => {
                            last = event.seq;
                            events.lock().unwrap().push(event);
                        }
                        Some(Step::Joined) => {}
                        None => break,
                    }
                }
                drop(feed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    Client {
        from,
        events,
        kick,
        stop,
        task,
    }
}

/// Every difference between what a client received and the table's changes after its start.
fn check(client: &Client, table: &BTreeMap<i64, crate::store::Change>) -> Result<(), String> {
    let events = client.events.lock().unwrap();
    let mut problems = Vec::new();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    if seqs.windows(2).any(|w| w[0] >= w[1]) {
        problems.push(format!("not strictly increasing: {seqs:?}"));
    }
    // The last seq at which the table knows each row id, to recognise superseded replies.
    let mut latest = HashMap::new();
    for (seq, change) in table {
        let id = match &change.body {
            crate::store::ChangeBody::Reply { row } => {
                serde_json::from_str::<serde_json::Value>(row).unwrap()["id"].clone()
            }
            crate::store::ChangeBody::Delete { id } => serde_json::json!(id),
            crate::store::ChangeBody::Reset => continue,
        };
        latest.insert(id.as_str().unwrap().to_owned(), *seq);
    }
    for (seq, _) in table.range(client.from + 1..) {
        if !seqs.contains(seq) {
            problems.push(format!("seq {seq} never arrived"));
        }
    }
    for event in events.iter() {
        let (seq, name, data) = parts(event);
        match table.get(&seq) {
            Some(change) if change.event().frame() == event.frame() => {}
            Some(change) => {
                problems.push(format!("seq {seq} is {:?}, got {name} {data}", change.body))
            }
            None if name == "reply"
                && latest
                    .get(data["id"].as_str().unwrap())
                    .is_some_and(|l| *l > seq) => {}
            None => problems.push(format!("seq {seq} ({name}) never committed")),
        }
        if seq <= client.from {
            problems.push(format!(
                "seq {seq} is before the client's start {}",
                client.from
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

async fn run_interleaving(ops: Vec<Op>, page_rows: i32, buffer: usize) -> Result<(), String> {
    let rig = rig(false, buffer, page_rows).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let mut replies: Vec<Uuid> = Vec::new();
    let mut clients = vec![client(&rig.delivery, &key, 0)];
    let mut listening = true;
    let delivery = rig.delivery.clone();
    let deliver = |listening: bool, payload: Option<String>| {
        let delivery = delivery.clone();
        async move {
            if let (true, Some(payload)) = (listening, payload) {
                delivery.notify(CHANNEL, &payload).await;
            }
        }
    };
    for op in ops {
        match op {
            Op::Write { kind: 0, .. } | Op::Write { .. } if replies.is_empty() => {
                let (id, payload) = rig.store.insert(thread, "a reply");
                replies.push(id);
                deliver(listening, Some(payload)).await;
            }
            Op::Write { kind: 0, .. } => {
                let (id, payload) = rig.store.insert(thread, "a reply");
                replies.push(id);
                deliver(listening, Some(payload)).await;
            }
            Op::Write { kind: 1, pick } => {
                let id = replies[pick % replies.len()];
                deliver(listening, rig.store.update(id, &format!("edited {pick}"))).await;
            }
            Op::Write { pick, .. } => {
                let id = replies.remove(pick % replies.len());
                deliver(listening, rig.store.delete(id)).await;
            }
            Op::Connect { from_percent } => {
                let current = rig.store.current_seq(&key).await.unwrap_or(0);
                let from = current * i64::from(from_percent) / 100;
                clients.push(client(&rig.delivery, &key, from));
            }
            Op::Drop { pick } => clients[pick % clients.len()].kick.notify_one(),
            Op::Listener { up: false } => listening = false,
            Op::Listener { up: true } => {
                // As the listener does after LISTEN: read the keys (a failure ends the session
                // and it tries again later), then have every live thread read the table.
                if !listening && rig.delivery.refresh_keys().await.is_ok() {
                    rig.delivery.resync_all();
                    listening = true;
                }
            }
            Op::Database { up } => rig.store.set_down(!up),
            Op::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms.into())).await,
        }
        tokio::task::yield_now().await;
    }
    // Everything comes back; one last reply, announced, must reach every client.
    rig.store.set_down(false);
    if !listening {
        rig.delivery
            .refresh_keys()
            .await
            .expect("the keys are readable");
        rig.delivery.resync_all();
    }
    let (_, payload) = rig.store.insert(thread, "the last reply");
    rig.delivery.notify(CHANNEL, &payload).await;
    let last = rig.store.current_seq(&key).await.unwrap();
    for (n, client) in clients.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while client.events.lock().unwrap().last().map_or(0, |e| e.seq) < last {
            if tokio::time::Instant::now() > deadline {
                let got: Vec<i64> = client
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                return Err(format!("client {n} never got seq {last}; it got {got:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let table: BTreeMap<i64, crate::store::Change> = rig
        .store
        .changes(&key, 0, None, i32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    for (n, mut client) in clients.into_iter().enumerate() {
        client.stop.cancel();
        let _ = (&mut client.task).await;
        check(&client, &table).map_err(|e| format!("client {n} (from {}):\n{e}", client.from))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the interleaving of writes, subscribes, drops, lost notifications and database
    /// outages, every client ends up with exactly the thread's committed changes after where it
    /// started: each once, in seq order, none that never committed.
    #[test]
    fn every_client_gets_exactly_the_committed_changes_whatever_the_interleaving(
        ops in proptest::collection::vec(op(), 1..60),
        page_rows in 1i32..5,
        buffer in 1usize..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let result = runtime.block_on(run_interleaving(ops, page_rows, buffer));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
