//! The open rate of fresh streams and a restart under load (`cargo xtask bench stream`'s
//! `restart`): thousands of streams open, the broadcaster is restarted by `xtask` (told by a
//! `READY` line on stdout), and every stream comes back as EventSource does, with
//! `Last-Event-ID`, while replies are written during the downtime. Measured: how long until every
//! stream is live again and has exactly what its thread committed.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use threadcast_harness::audit::audit_seqs;

use crate::fleet::{thread_id, Target};
use crate::sse_client::{self, Item};
use crate::writer::{self, Writer};

/// Streams opening at once while the fleet first opens (the open rate is measured with this
/// many connections in flight); after the restart each stream comes back on its own, as
/// browsers do.
const OPENING: usize = 128;

/// How long the streams get to come back before the run gives up.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

/// One stream that reconnects like EventSource: after the last `retry:` the server sent, with
/// the last id it saw as `Last-Event-ID`.
struct Client {
    thread: usize,
    last: AtomicI64,
    connects: AtomicU64,
    /// Every seq received, in order, duplicates included (the audit counts them).
    received: Mutex<Vec<i64>>,
    /// When its connection after the restart said it had joined.
    rejoined: Mutex<Option<Instant>>,
}

struct Shared {
    target: Arc<Target>,
    threads: Vec<Uuid>,
    stop: CancellationToken,
    opening: Semaphore,
    /// Set once every stream has first joined: later opens are the restart's.
    opened: AtomicBool,
    /// When the first stream saw its connection end (the restart began).
    first_end: Mutex<Option<Instant>>,
}

/// Opens `streams` streams over `streams / per_thread` threads, prints `READY`, waits for the
/// restart that `xtask` performs, writes a reply into `writes_while_down` threads meanwhile, and
/// measures the recovery.
pub async fn restart(
    target: Arc<Target>,
    db: &str,
    streams: usize,
    per_thread: usize,
    writes_while_down: usize,
) -> Result<Value> {
    let per_thread = per_thread.max(1);
    let thread_count = streams.div_ceil(per_thread);
    let threads: Vec<Uuid> = (0..thread_count as u64)
        .map(|i| thread_id(3_000_000 + i))
        .collect();
    writer::create_threads(db, &threads).await?;
    // One reply in every thread, so that every stream has an id to resume from.
    let client = writer::connect(db).await?;
    client
        .execute(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) \
             SELECT t, 'agency', 'loadgen', 'before the restart' FROM unnest($1::uuid[]) t",
            &[&threads],
        )
        .await
        .context("write the first replies")?;

    let shared = Arc::new(Shared {
        target,
        threads,
        stop: CancellationToken::new(),
        opening: Semaphore::new(OPENING),
        opened: AtomicBool::new(false),
        first_end: Mutex::new(None),
    });
    let clients: Vec<Arc<Client>> = (0..streams)
        .map(|i| {
            Arc::new(Client {
                thread: i / per_thread,
                last: AtomicI64::new(0),
                connects: AtomicU64::new(0),
                received: Mutex::new(Vec::new()),
                rejoined: Mutex::new(None),
            })
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(follow(shared.clone(), c.clone())))
        .collect();
    wait_until(
        "every stream to open and catch up",
        Duration::from_secs(300),
        || clients.iter().all(|c| c.last.load(Ordering::Relaxed) >= 1),
    )
    .await?;
    let open_seconds = started.elapsed().as_secs_f64();
    shared.opened.store(true, Ordering::SeqCst);
    eprintln!(
        "restart: {streams} streams open over {thread_count} threads in {open_seconds:.1} s ({:.0} streams/s); waiting for the restart",
        streams as f64 / open_seconds
    );
    println!("READY");

    // The restart: the first stream to see its connection end starts the clock.
    wait_until(
        "the broadcaster to be restarted",
        Duration::from_secs(120),
        || shared.first_end.lock().unwrap().is_some(),
    )
    .await?;
    let down_at = shared.first_end.lock().unwrap().expect("set");
    let writer = Writer::connect(db).await?;
    // What each thread's streams had before the restart (the threads may carry replies of an
    // earlier run), then the replies written while the broadcaster is down.
    let mut expected = vec![1i64; thread_count];
    for c in &clients {
        expected[c.thread] = expected[c.thread].max(c.last.load(Ordering::Relaxed));
    }
    for (t, thread) in shared.threads.iter().enumerate().take(writes_while_down) {
        let (seq, _) = writer.insert(*thread).await?;
        expected[t] = seq;
    }
    let all_back = wait_until("every stream to be back", RECOVERY_LIMIT, || {
        clients.iter().all(|c| c.rejoined.lock().unwrap().is_some())
    })
    .await
    .is_ok();
    let rejoined_seconds = clients
        .iter()
        .filter_map(|c| *c.rejoined.lock().unwrap())
        .max()
        .map(|at| at.saturating_duration_since(down_at).as_secs_f64());
    let caught_up = wait_until("every stream to have resumed", RECOVERY_LIMIT, || {
        clients
            .iter()
            .all(|c| c.last.load(Ordering::Relaxed) >= expected[c.thread])
    })
    .await
    .is_ok();
    let recovered_seconds = down_at.elapsed().as_secs_f64();
    shared.stop.cancel();
    for task in tasks {
        let _ = task.await;
    }

    let mut doubled = 0;
    let mut misordered = 0;
    let mut lost = 0;
    let mut behind = 0;
    for c in &clients {
        // Every stream opened from seq 0, so it is owed every change of its thread.
        let audit = audit_seqs(&c.received.lock().unwrap(), 1..=expected[c.thread]);
        doubled += audit.duplicated.len();
        misordered += audit.out_of_order.len();
        lost += audit.lost.len();
        if c.last.load(Ordering::Relaxed) < expected[c.thread] {
            behind += 1;
        }
    }
    let connects: Vec<u64> = clients
        .iter()
        .map(|c| c.connects.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "  back in {rejoined_seconds:?} s, resumed in {recovered_seconds:.2} s; doubled {doubled}, out of order {misordered}, lost {lost}, behind {behind}"
    );
    Ok(json!({
        "restart": {
            "streams": streams,
            "threads": thread_count,
            "open_seconds": open_seconds,
            "open_rate": streams as f64 / open_seconds,
            "writes_while_down": writes_while_down.min(thread_count),
            "all_back": all_back && caught_up,
            "rejoined_seconds": rejoined_seconds,
            "recovered_seconds": recovered_seconds,
            "doubled": doubled,
            "out_of_order": misordered,
            "lost": lost,
            "behind": behind,
            "max_connects": connects.iter().max(),
        }
    }))
}

/// Waits until `done` holds, checking every 20 ms; Err naming `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut report = Instant::now();
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("gave up after {limit:?} waiting for {what}");
        }
        if report.elapsed() > Duration::from_secs(10) {
            eprintln!("  still waiting for {what}");
            report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Follows one stream until stopped, reconnecting as EventSource does.
async fn follow(shared: Arc<Shared>, client: Arc<Client>) {
    let thread = shared.threads[client.thread];
    let token = shared.target.token(thread);
    let mut buf = vec![0u8; 2048];
    let mut items = Vec::new();
    let mut retry = Duration::from_millis(2000);
    while !shared.stop.is_cancelled() {
        let permit = if shared.opened.load(Ordering::Relaxed) {
            None
        } else {
            Some(shared.opening.acquire().await)
        };
        let last = client.last.load(Ordering::Relaxed);
        let opened_at = Instant::now();
        let open = sse_client::open(
            shared.target.addr,
            Some(shared.target.source()),
            thread,
            &token,
            Some(last),
            &mut buf,
        );
        let conn = tokio::select! {
            _ = shared.stop.cancelled() => return,
            conn = open => conn,
        };
        drop(permit);
        if let Ok(mut conn) = conn {
            client.connects.fetch_add(1, Ordering::Relaxed);
            // A connection opened after the restart began is back once it has joined.
            let after_restart = shared
                .first_end
                .lock()
                .unwrap()
                .is_some_and(|at| opened_at >= at);
            let mut joined = false;
            loop {
                items.clear();
                let read = tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    read = conn.read(&mut buf, &mut items) => read,
                };
                for item in &items {
                    match *item {
                        Item::Retry(ms) => {
                            if !joined && after_restart {
                                client
                                    .rejoined
                                    .lock()
                                    .unwrap()
                                    .get_or_insert(Instant::now());
                            }
                            joined = true;
                            retry = Duration::from_millis(ms);
                        }
                        Item::Event { seq, .. } => {
                            client.received.lock().unwrap().push(seq);
                            client.last.fetch_max(seq, Ordering::Relaxed);
                        }
                        Item::Comment | Item::Joined(_) => {}
                    }
                }
                if !matches!(read, Ok(true)) {
                    break;
                }
            }
            shared
                .first_end
                .lock()
                .unwrap()
                .get_or_insert(Instant::now());
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
