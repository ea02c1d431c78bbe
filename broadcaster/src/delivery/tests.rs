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
use crate::store::{MemStore, PAGE_BYTES};

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
            ..Settings::default()
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
async fn resuming_streams_of_a_thread_that_did_not_change_read_nothing_but_one_baseline() {
    // A reconnect storm after a restart: every stream of a thread comes back with the thread's
    // last seq. The thread's task reads its baseline once; the streams read nothing.
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    for i in 0..5 {
        rig.store.insert(thread, &format!("reply {i}"));
    }
    let mut feeds = Vec::new();
    for _ in 0..100 {
        let mut feed = rig.delivery.feed(&key, Start::After(5));
        assert!(matches!(feed.next().await, Some(Step::Joined)));
        feeds.push(feed);
    }
    assert_eq!(
        rig.store.reads().counts(),
        (1, 0, 0),
        "(current_seq, changes, latest): one baseline, no catch-up"
    );
    // One that is behind reads what it missed, and no further than the join point.
    let mut behind = rig.delivery.feed(&key, Start::After(3));
    assert_eq!(next_seqs(&mut behind, 2).await, [4, 5]);
    assert_eq!(rig.store.reads().counts(), (1, 1, 0));
    announced(&rig, &rig.delivery, thread, 1).await;
    for feed in feeds.iter_mut().chain([&mut behind]) {
        assert_eq!(next_seqs(feed, 1).await, [6]);
    }
    assert_eq!(
        rig.store.reads().counts(),
        (1, 1, 0),
        "live events read nothing"
    );
}

#[tokio::test]
async fn a_burst_on_a_hot_keys_only_thread_is_read_in_a_few_table_reads_not_one_per_notice() {
    // Issue 10: every notice that was not the next one cost a `current_seq` query and a
    // `changes` query, one after the other, and on a keys-only source that is every notice; the
    // inbox grew meanwhile. Coalesced, a burst is read in a few pages.
    let rig = rig(true, 2000, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    announced(&rig, &rig.delivery, thread, 1000).await;

    assert_eq!(
        next_seqs(&mut feed, 1000).await,
        (1..=1000).collect::<Vec<i64>>()
    );
    let (current_seq, changes, _) = rig.store.reads().counts();
    assert!(
        current_seq <= 3 && changes <= 10,
        "1,000 keys-only notices took {current_seq} counter reads and {changes} change reads"
    );
}

#[tokio::test]
async fn a_hundred_thousand_replayed_notifications_read_nothing_and_the_next_reply_still_arrives() {
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    let mut genuine = Vec::new();
    for i in 1..=10 {
        let (_, payload) = rig.store.insert(thread, &format!("reply {i}"));
        rig.delivery.notify(CHANNEL, &payload).await;
        genuine.push(payload);
    }
    assert_eq!(next_seqs(&mut feed, 10).await.last(), Some(&10));
    let reads = rig.store.reads().counts();

    // Anyone may LISTEN, keep genuine notifications and send them again.
    for _ in 0..10_000 {
        for payload in &genuine {
            rig.delivery.notify(CHANNEL, payload).await;
        }
    }
    announced(&rig, &rig.delivery, thread, 1).await;

    assert_eq!(next_seqs(&mut feed, 1).await, [11]);
    assert_eq!(rig.store.reads().counts(), reads, "replays read nothing");
    assert!(
        rig.delivery
            .ctx
            .metrics
            .render()
            .contains("threadcast_notifications_stale_total 100000"),
        "each replay is counted as stale"
    );
}

#[tokio::test]
async fn notices_past_the_counter_read_it_at_most_once_per_repair_interval() {
    // Signed notices (a leaked key, or a bug) that claim numbers the thread has not handed out:
    // each used to cost a counter read. Coalesced and rate-limited, a thousand cost a few, and
    // the thread is not silenced.
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    for seq in 1_000_000..1_001_000 {
        rig.delivery
            .notify(CHANNEL, &forged_insert(thread, seq))
            .await;
    }
    let (_, payload) = rig.store.insert(thread, "real");
    rig.delivery.notify(CHANNEL, &payload).await;

    let (seq, _, data) = parts(&next_event(&mut feed).await);
    assert_eq!((seq, data["content"].as_str()), (1, Some("real")));
    let (current_seq, _, _) = rig.store.reads().counts();
    assert!(
        current_seq <= 3,
        "1,000 claims past the counter cost {current_seq} counter reads"
    );
}

#[tokio::test]
async fn a_notification_refused_before_a_new_key_was_read_is_read_from_the_table() {
    // After `rotate_key()`, the first notifications signed with the new key name a key delivery
    // has not read yet. It reads the keys again, but at most once a second (forged key ids must
    // not become a query storm): what it refused meanwhile is genuine, and must not be lost for a
    // thread that changes no more.
    let rig = rig(false, 16, 1000).await;
    let (quiet, busy) = (
        rig.store.create_thread("quiet"),
        rig.store.create_thread("busy"),
    );
    let mut on_quiet = rig.delivery.feed(&quiet.to_string(), Start::Live);
    assert!(matches!(on_quiet.next().await, Some(Step::Joined)));
    let mut on_busy = rig.delivery.feed(&busy.to_string(), Start::Live);
    assert!(matches!(on_busy.next().await, Some(Step::Joined)));
    // A forged key id takes this second's read of the keys.
    let forged = Payload::decode(&forged_insert(quiet, 1))
        .map(|p| Payload { kid: Some(99), ..p })
        .unwrap()
        .sign(&threadcast_payload::Key {
            id: 99,
            secret: [9; threadcast_payload::KEY_BYTES],
        })
        .unwrap();
    rig.delivery.notify(CHANNEL, &forged).await;

    rig.store.rotate_key();
    let (_, refused) = rig.store.insert(quiet, "signed with the new key, refused");
    rig.delivery.notify(CHANNEL, &refused).await;
    // The next read of the keys is allowed a second after the last: a rate, not a condition to
    // await.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, admitted) = rig.store.insert(busy, "signed with the new key, admitted");
    rig.delivery.notify(CHANNEL, &admitted).await;

    assert_eq!(next_event(&mut on_busy).await.seq, 1);
    let (seq, _, data) = parts(&next_event(&mut on_quiet).await);
    assert_eq!(
        (seq, data["content"].as_str()),
        (1, Some("signed with the new key, refused"))
    );
}

#[tokio::test]
async fn catch_up_repairs_and_history_hold_a_page_of_bytes_however_large_the_rows() {
    // Issue 10: a resuming stream read up to 1,000 whole rows at once, and held them until its
    // client read them. A page now stops at `page_bytes` of data (and one row past it).
    const ROW: usize = 10 * 1024;
    let rig = rig(true, 200, 1000).await;
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let big = "x".repeat(ROW);
    for _ in 0..60 {
        rig.store.insert(thread, &big);
    }
    let bound = (PAGE_BYTES + ROW + 512) as u64;

    let mut resumed = rig.delivery.feed(&key, Start::After(0));
    assert_eq!(
        next_seqs(&mut resumed, 60).await,
        (1..=60).collect::<Vec<i64>>()
    );
    let mut history = rig.delivery.feed(&key, Start::History(500));
    let got = next_seqs(&mut history, 1).await;
    assert!(
        got[0] > 50,
        "the newest replies that fit a page: from {}",
        got[0]
    );
    // A keys-only repair of the same rows, read after the listener lost them.
    let mut live = rig.delivery.feed(&key, Start::Live);
    assert!(matches!(live.next().await, Some(Step::Joined)));
    for _ in 0..30 {
        rig.store.insert(thread, &big);
    }
    announced(&rig, &rig.delivery, thread, 1).await;
    assert_eq!(next_seqs(&mut live, 31).await.last(), Some(&91));

    let largest = rig
        .store
        .reads()
        .largest_page
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        largest <= bound,
        "the largest page held {largest} bytes; a page holds {PAGE_BYTES} bytes and one row"
    );
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

/// A row-less insert notice for `seq` of `thread`, signed with the store's key as if it were
/// genuine.
fn forged_insert(thread: Uuid, seq: i64) -> String {
    Payload {
        v: FORMAT_VERSION,
        op: PayloadOp::Insert,
        table: "public.feedback_replies".into(),
        src: Some(MemStore::source(false).oid),
        thread: thread.to_string().into(),
        seq,
        id: "x".into(),
        row: None,
        omitted: Some(Omitted::TooLarge),
        kid: None,
        sig: None,
    }
    .sign(&MemStore::KEY)
    .unwrap()
}

#[tokio::test]
async fn a_forged_number_far_ahead_does_not_silence_the_thread() {
    let rig = rig(false, 16, 1000).await;
    let thread = rig.store.create_thread("t");
    let mut feed = rig.delivery.feed(&thread.to_string(), Start::Live);
    assert!(matches!(feed.next().await, Some(Step::Joined)));
    // Signed with the store's own key: even a notification that verifies is trusted for no
    // number past the thread's counter.
    let forged = forged_insert(thread, 1_000_000);
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
    /// notification reaches the replicas whose listener is up.
    Write { kind: u8, pick: usize },
    /// A new client, starting as a stream may start.
    Connect { start: ClientStart },
    /// A client's connection drops; it reconnects, to the next replica, as EventSource does.
    Drop { pick: usize },
    /// A replica's listener goes down (notifications are lost) or comes back (reads the keys,
    /// then resyncs).
    Listener { replica: usize, up: bool },
    /// The database goes down (reads fail) or comes back.
    Database { up: bool },
    /// Let the tasks run for a while.
    Wait { ms: u8 },
}

/// How a client's first request starts its stream.
#[derive(Clone, Copy, Debug)]
enum ClientStart {
    /// Live only (an EventSource without `lastEventId`).
    Live,
    /// The last `n` replies, then live.
    History(i32),
    /// Every change after a seq: a fraction of the current counter, in percent.
    After(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let start = prop_oneof![
        Just(ClientStart::Live),
        (0i32..4).prop_map(ClientStart::History),
        (0u8..=100).prop_map(ClientStart::After),
    ];
    prop_oneof![
        6 => (0u8..3, any::<usize>()).prop_map(|(kind, pick)| Op::Write { kind, pick }),
        2 => start.prop_map(|start| Op::Connect { start }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => (0usize..REPLICAS, any::<bool>()).prop_map(|(replica, up)| Op::Listener { replica, up }),
        1 => any::<bool>().prop_map(|up| Op::Database { up }),
        2 => (1u8..50).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// Broadcasters serving the one table behind a load balancer, each with its own listener.
const REPLICAS: usize = 2;

/// What a client has received, and what it is owed.
#[derive(Default)]
struct Received {
    events: Vec<crate::sse::Event>,
    /// Every change after this seq is owed: the start's `lastEventId`, or the join point of
    /// the last connection that started without an id (a live or history start).
    floor: Option<i64>,
}

/// A client that behaves like a plain EventSource, without any deduplication of its own: each
/// time its feed ends (or is dropped), it reconnects to the next replica with the last id it has
/// (Last-Event-ID), or, holding none yet, with its first request again. A live start holds the
/// join point from the start: the stream announces it (`id:` with the first frame).
struct Client {
    start: Start,
    received: Arc<Mutex<Received>>,
    kick: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn client(replicas: &[Delivery], first: usize, thread: &str, start: Start) -> Client {
    let received = Arc::new(Mutex::new(Received::default()));
    let kick = Arc::new(tokio::sync::Notify::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (replicas, thread) = (replicas.to_vec(), thread.to_owned());
        let (received, kick, stop) = (received.clone(), kick.clone(), stop.clone());
        async move {
            let mut last_id = match start {
                Start::After(n) => Some(n),
                _ => None,
            };
            if let Some(n) = last_id {
                received.lock().unwrap().floor = Some(n);
            }
            let mut replica = first;
            while !stop.is_cancelled() {
                let connect = last_id.map_or(start, Start::After);
                let mut feed = replicas[replica % replicas.len()].feed(&thread, connect);
                replica += 1;
                loop {
                    let step = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = kick.notified() => break,
                        step = feed.next() => step,
                    };
                    match step {
                        Some(Step::Event(event)) => {
                            last_id = Some(event.seq);
                            received.lock().unwrap().events.push(event);
                        }
                        Some(Step::Joined) if last_id.is_none() => {
                            let joined = feed.joined_at().expect("joined");
                            received.lock().unwrap().floor = Some(joined);
                            if connect == Start::Live {
                                last_id = Some(joined);
                            }
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
        start,
        received,
        kick,
        stop,
        task,
    }
}

/// Every difference between what a client received and the table's changes after its floor:
/// each seq once, in order, none missing, none that never committed; below the floor only what a
/// history start sent.
fn check(client: &Client, table: &BTreeMap<i64, crate::store::Change>) -> Result<(), String> {
    let received = client.received.lock().unwrap();
    let events = &received.events;
    let Some(floor) = received.floor else {
        return Err("it never joined its thread".into());
    };
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
    for (seq, _) in table.range(floor + 1..) {
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
        // A history start sends replies up to its join point; one that resumes after such a
        // reply (with its id) is then owed every change after it, deletes included.
        let history = matches!(client.start, Start::History(_));
        if seq <= floor && !history {
            problems.push(format!(
                "seq {seq} is at or before the client's floor {floor}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

async fn run_interleaving(
    ops: Vec<Op>,
    page_rows: i32,
    buffer: usize,
    keys_only: bool,
) -> Result<(), String> {
    let rig = rig(keys_only, buffer, page_rows).await;
    let mut replicas = vec![rig.delivery.clone()];
    for _ in 1..REPLICAS {
        let replica = Delivery::new(
            rig.store.clone(),
            &MemStore::source(keys_only),
            Settings {
                subscriber_buffer: buffer,
                max_backoff: Duration::from_millis(400),
                page_rows,
                ..Settings::default()
            },
            Metrics::new(),
            rig.shutdown.clone(),
            TaskTracker::new(),
        );
        replica.refresh_keys().await.expect("the keys are readable");
        replicas.push(replica);
    }
    let thread = rig.store.create_thread("t");
    let key = thread.to_string();
    let mut replies: Vec<Uuid> = Vec::new();
    let mut clients = vec![client(&replicas, 0, &key, Start::After(0))];
    let mut listening = [true; REPLICAS];
    let deliver = |listening: [bool; REPLICAS], payload: Option<String>| {
        let replicas = replicas.clone();
        async move {
            let Some(payload) = payload else { return };
            for (replica, up) in replicas.iter().zip(listening) {
                if up {
                    replica.notify(CHANNEL, &payload).await;
                }
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
            Op::Connect { start } => {
                let start = match start {
                    ClientStart::Live => Start::Live,
                    ClientStart::History(n) => Start::History(n),
                    ClientStart::After(percent) => {
                        let current = rig.store.current_seq(&key).await.unwrap_or(0);
                        Start::After(current * i64::from(percent) / 100)
                    }
                };
                clients.push(client(&replicas, clients.len(), &key, start));
            }
            Op::Drop { pick } => clients[pick % clients.len()].kick.notify_one(),
            Op::Listener { replica, up: false } => listening[replica] = false,
            Op::Listener { replica, up: true } => {
                // As the listener does after LISTEN: read the keys (a failure ends the session
                // and it tries again later), then have every live thread read the table.
                if !listening[replica] && replicas[replica].refresh_keys().await.is_ok() {
                    replicas[replica].resync_all();
                    listening[replica] = true;
                }
            }
            Op::Database { up } => rig.store.set_down(!up),
            Op::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms.into())).await,
        }
        tokio::task::yield_now().await;
    }
    // Everything comes back; one last reply, announced, must reach every client.
    rig.store.set_down(false);
    for (replica, up) in replicas.iter().zip(&mut listening) {
        if !*up {
            replica.refresh_keys().await.expect("the keys are readable");
            replica.resync_all();
            *up = true;
        }
    }
    let (_, payload) = rig.store.insert(thread, "the last reply");
    deliver(listening, Some(payload)).await;
    let last = rig.store.current_seq(&key).await.unwrap();
    for (n, client) in clients.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        // Caught up once it holds `last`: as an event, or as its join point (a live stream that
        // joined after `last` committed is not owed it).
        let position = || {
            let received = client.received.lock().unwrap();
            let last_event = received.events.last().map(|e| e.seq);
            received
                .floor
                .map(|floor| floor.max(last_event.unwrap_or(0)))
        };
        while position().is_none_or(|p| p < last) {
            if tokio::time::Instant::now() > deadline {
                let got: Vec<i64> = client
                    .received
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                return Err(format!(
                    "client {n} ({:?}) never got seq {last}; it got {got:?}, position {:?}",
                    client.start,
                    position()
                ));
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
        check(&client, &table).map_err(|e| format!("client {n} ({:?}):\n{e}", client.start))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the interleaving of writes, subscribes (live, history, resuming), catch-up,
    /// drops and reconnects across two replicas, lost notifications, listener and database
    /// outages, every client (a plain EventSource, deduplicating nothing) ends up with exactly the
    /// thread's committed changes after where it started: each once, in seq order, none
    /// missing, none that never committed.
    #[test]
    fn every_client_gets_exactly_the_committed_changes_whatever_the_interleaving(
        ops in proptest::collection::vec(op(), 1..60),
        page_rows in 1i32..5,
        buffer in 1usize..8,
        keys_only in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let result = runtime.block_on(run_interleaving(ops, page_rows, buffer, keys_only));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
