//! `loadgen hold`: one of several load-generator processes of the multi-replica benchmark. It
//! holds streams spread over several broadcaster replicas (stream `g` of the process starts on
//! replica `g mod n`), each asking for its whole thread (`Last-Event-ID: 0`), and stamps every
//! event with CLOCK_MONOTONIC, the clock the writer in another process stamps its commits with.
//!
//! With `--failover`, a stream that ends reconnects as EventSource does: after the 2 s `retry:`
//! the broadcaster sends, to another replica, with the last id it saw. Each process is one of
//! several because each has its own open-files limit.
//!
//! It talks on stdin/stdout, one JSON object per line: `{"ready": ...}` once every stream has
//! joined; then `status` prints the counters and `report` stops, checks every stream against the
//! table (each seq of its thread exactly once, in order) and prints the findings.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fleet::{thread_id, Target};
use crate::sse_client::{self, Item};

/// The reconnection delay EventSource takes from the broadcaster's `retry:` frame.
const RETRY: Duration = Duration::from_millis(2000);

/// Streams opening at once.
const OPENING: usize = 256;

#[derive(clap::Args)]
pub struct Args {
    /// The replicas, as loopback addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<SocketAddr>,
    /// The number of this process's first thread (see `fleet::thread_id`).
    #[arg(long)]
    first_thread: u64,
    /// Threads of this process.
    #[arg(long)]
    threads: u64,
    /// Streams per thread, spread over the replicas.
    #[arg(long, default_value_t = 10)]
    per_thread: u64,
    /// Reconnect ended streams to another replica, as EventSource would.
    #[arg(long)]
    failover: bool,
    /// Keep every event's arrival time, for the latency figures of the report.
    #[arg(long)]
    record: bool,
}

/// Counters the streams update, for `status` and the report.
#[derive(Default)]
struct Counts {
    joined: AtomicU64,
    failed: AtomicU64,
    /// Streams joined right now.
    live: AtomicU64,
    disconnects: AtomicU64,
    rejoins: AtomicU64,
    failed_reconnects: AtomicU64,
    /// CLOCK_MONOTONIC ns of the first disconnect, and of the last rejoin.
    first_disconnect_ns: AtomicU64,
    last_rejoin_ns: AtomicU64,
}

/// What one stream received.
struct Received {
    thread: u64,
    seqs: Vec<i64>,
    /// (seq, CLOCK_MONOTONIC ns), with `--record`.
    stamps: Vec<(i64, u64)>,
    /// CLOCK_MONOTONIC ns of its last rejoin after a disconnect, if it had to.
    rejoined: Option<u64>,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct passed and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub async fn run(target: Arc<Target>, db: &str, args: Args) -> Result<Value> {
    let counts = Arc::new(Counts {
        first_disconnect_ns: AtomicU64::new(u64::MAX),
        ..Counts::default()
    });
    let stop = CancellationToken::new();
    let opening = Arc::new(Semaphore::new(OPENING));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let targets: Arc<[SocketAddr]> = args.targets.clone().into();
    let mut tasks = Vec::new();
    let mut g = 0u64;
    for t in 0..args.threads {
        let number = args.first_thread + t;
        let thread = thread_id(number);
        let token: Arc<str> = target.token(thread).into();
        for _ in 0..args.per_thread {
            tasks.push(tokio::spawn(hold_stream(Stream {
                targets: targets.clone(),
                index: g,
                number,
                thread,
                token: token.clone(),
                counts: counts.clone(),
                stop: stop.clone(),
                opening: opening.clone(),
                first_error: first_error.clone(),
                failover: args.failover,
                record: args.record,
            })));
            g += 1;
        }
    }
    let total = tasks.len() as u64;
    let mut waited = 0u32;
    loop {
        let (joined, failed) = (
            counts.joined.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        if joined + failed >= total {
            break;
        }
        waited += 1;
        if waited.is_multiple_of(250) {
            eprintln!("  hold: {joined} of {total} streams joined, {failed} failed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{}",
        json!({
            "ready": counts.joined.load(Ordering::Relaxed),
            "failed": counts.failed.load(Ordering::Relaxed),
            "first_error": *first_error.lock().unwrap(),
        })
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "status" => println!("{}", status(&counts)),
            "report" => break,
            other => eprintln!("hold: unknown command {other:?}"),
        }
    }
    stop.cancel();
    let mut received = Vec::with_capacity(tasks.len());
    for task in tasks {
        received.push(task.await?);
    }
    let check = check_exactly_once(db, &received).await?;
    let stamps: Vec<Value> = received
        .iter()
        .flat_map(|r| {
            r.stamps
                .iter()
                .map(move |(seq, at)| json!([r.thread, seq, at]))
        })
        .collect();
    let rejoined: Vec<u64> = received.iter().filter_map(|r| r.rejoined).collect();
    Ok(json!({
        "streams": total,
        "rejoined_ns": rejoined,
        "status": status(&counts),
        "exactly_once": check,
        "stamps": stamps,
    }))
}

fn status(counts: &Counts) -> Value {
    let first = counts.first_disconnect_ns.load(Ordering::Relaxed);
    json!({
        "joined": counts.joined.load(Ordering::Relaxed),
        "failed": counts.failed.load(Ordering::Relaxed),
        "live": counts.live.load(Ordering::Relaxed),
        "disconnects": counts.disconnects.load(Ordering::Relaxed),
        "rejoins": counts.rejoins.load(Ordering::Relaxed),
        "failed_reconnects": counts.failed_reconnects.load(Ordering::Relaxed),
        "first_disconnect_ns": (first != u64::MAX).then_some(first),
        "last_rejoin_ns": counts.last_rejoin_ns.load(Ordering::Relaxed),
    })
}

struct Stream {
    targets: Arc<[SocketAddr]>,
    index: u64,
    number: u64,
    thread: Uuid,
    token: Arc<str>,
    counts: Arc<Counts>,
    stop: CancellationToken,
    opening: Arc<Semaphore>,
    first_error: Arc<Mutex<Option<String>>>,
    failover: bool,
    record: bool,
}

async fn hold_stream(s: Stream) -> Received {
    let n = s.targets.len() as u64;
    let mut replica = s.index % n;
    let mut received = Received {
        thread: s.number,
        seqs: Vec::new(),
        stamps: Vec::new(),
        rejoined: None,
    };
    let mut buf = vec![0u8; 1024];
    let mut items = Vec::new();
    let mut last_seq = 0i64;
    let mut ever_joined = false;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (s.index % 8) as u8));
    // A stream moving off a replica goes to one of the others, alternating by its index, so that
    // the survivors share the load.
    let next = |replica: u64| (replica + 1 + s.index % (n - 1).max(1)) % n;
    'connect: loop {
        let permit = tokio::select! {
            _ = s.stop.cancelled() => break,
            permit = s.opening.acquire() => permit.expect("never closed"),
        };
        let addr = s.targets[replica as usize];
        let opened = tokio::select! {
            _ = s.stop.cancelled() => break,
            conn = sse_client::open(addr, Some(source), s.thread, &s.token, Some(last_seq), &mut buf) => conn,
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(error) => {
                drop(permit);
                if !ever_joined && !s.failover {
                    s.counts.failed.fetch_add(1, Ordering::Relaxed);
                    s.first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| error.to_string());
                    break;
                }
                s.counts.failed_reconnects.fetch_add(1, Ordering::Relaxed);
                replica = next(replica);
                tokio::select! {
                    _ = s.stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY) => continue 'connect,
                }
            }
        };
        let mut permit = Some(permit);
        let mut joined = false;
        loop {
            items.clear();
            let open = tokio::select! {
                _ = s.stop.cancelled() => break 'connect,
                open = conn.read(&mut buf, &mut items) => open,
            };
            let at = now_ns();
            for item in &items {
                match *item {
                    Item::Retry(_) if !joined => {
                        joined = true;
                        permit = None;
                        s.counts.live.fetch_add(1, Ordering::Relaxed);
                        if ever_joined {
                            received.rejoined = Some(at);
                            s.counts.rejoins.fetch_add(1, Ordering::Relaxed);
                            s.counts.last_rejoin_ns.fetch_max(at, Ordering::Relaxed);
                        } else {
                            ever_joined = true;
                            s.counts.joined.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Item::Event { seq, .. } => {
                        received.seqs.push(seq);
                        last_seq = last_seq.max(seq);
                        if s.record {
                            received.stamps.push((seq, at));
                        }
                    }
                    _ => {}
                }
            }
            if !matches!(open, Ok(true)) {
                break;
            }
        }
        drop(permit);
        if joined {
            s.counts.live.fetch_sub(1, Ordering::Relaxed);
        }
        s.counts.disconnects.fetch_add(1, Ordering::Relaxed);
        s.counts
            .first_disconnect_ns
            .fetch_min(now_ns(), Ordering::Relaxed);
        if !s.failover {
            break;
        }
        replica = next(replica);
        tokio::select! {
            _ = s.stop.cancelled() => break,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    received
}

/// Every stream against the table: its thread's seqs 1..=last, each once, in order (the writers
/// only insert, so every seq is one reply).
async fn check_exactly_once(db: &str, received: &[Received]) -> Result<Value> {
    let client = crate::writer::connect(db).await?;
    let threads: Vec<Uuid> = {
        let mut numbers: Vec<u64> = received.iter().map(|r| r.thread).collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers.into_iter().map(thread_id).collect()
    };
    let rows = client
        .query(
            "SELECT feedback_id, max(thread_seq) FROM feedback_replies
              WHERE feedback_id = ANY($1) GROUP BY feedback_id",
            &[&threads],
        )
        .await
        .context("read the last seq of every thread")?;
    let last: HashMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let (mut lost, mut doubled, mut out_of_order, mut exact) = (0u64, 0u64, 0u64, 0u64);
    for r in received {
        let expected = last.get(&thread_id(r.thread)).copied().unwrap_or(0);
        let mut seen = vec![0u32; expected as usize + 1];
        let mut previous = 0;
        for &seq in &r.seqs {
            if seq < 1 || seq > expected {
                doubled += 1;
                continue;
            }
            seen[seq as usize] += 1;
            if seq <= previous {
                out_of_order += 1;
            }
            previous = seq;
        }
        let missing = seen[1..].iter().filter(|n| **n == 0).count() as u64;
        let extra: u64 = seen[1..]
            .iter()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum();
        lost += missing;
        doubled += extra;
        if missing == 0 && extra == 0 {
            exact += 1;
        }
    }
    Ok(json!({
        "streams": received.len(),
        "exact": exact,
        "lost": lost,
        "doubled": doubled,
        "out_of_order": out_of_order,
    }))
}
