//! The soak: thousands of streams over many threads for a bounded time, with writers at a steady
//! rate (inserts, and some deletes), clients that drop at random and resume with
//! `Last-Event-ID` as EventSource does, and the LISTEN connection killed now and then. At the
//! end every client must hold exactly the changes the table records for its thread: each once,
//! in seq order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use threadcast_harness::audit::audit_seqs;
use threadcast_harness::SoakArgs;

use crate::fleet::{thread_id, Target};
use crate::procfs;
use crate::sse_client::{self, Item, OpenError};
use crate::stats::Summary;
use crate::writer::{self, Writer};

/// EventSource's reconnection delay, as the broadcaster's `retry:` sets it.
const RETRY: Duration = Duration::from_millis(2000);

/// A small, fast, seedable generator (xorshift64*); the soak needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Exponentially distributed with mean `mean`.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// What one client saw over all its connections.
#[derive(Default)]
struct ClientLog {
    thread: u32,
    /// Every seq received, in arrival order (duplicates and misordered ones included: the
    /// audit at the end counts them).
    received: Vec<i64>,
    foreign: u64,
    connects: u64,
    refused: u64,
    cut_off: u64,
    /// (seq, when it arrived, when the connection that carried it had joined).
    receipts: Vec<(i64, Instant, Instant)>,
}

/// State the soak's parts share.
struct Shared {
    target: Arc<Target>,
    threads: Vec<Uuid>,
    /// Set at the end of the load: no more random disconnects.
    quiet: AtomicBool,
    stop: CancellationToken,
    /// Each client's last seq, for the final catch-up.
    last_seq: Vec<AtomicI64>,
    connected: AtomicU64,
    delivered: AtomicU64,
    /// (thread index, seq) -> when its COMMIT returned.
    commits: Mutex<HashMap<(u32, i64), Instant>>,
    /// When the LISTEN connection was killed.
    kills: Mutex<Vec<Instant>>,
    /// Writes that failed (the database went away); the writer reconnects and carries on.
    write_errors: AtomicU64,
}

/// Changes committed this long before or after a LISTEN kill count as committed around it: they
/// reach their streams once the broadcaster has reconnected and read them from the table.
const AROUND_A_KILL: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(3));

pub async fn run(target: Arc<Target>, db: &str, pid: u32, args: SoakArgs) -> Result<Value> {
    procfs::raise_open_files(args.streams as u64 * 2 + 1000);
    let threads: Vec<Uuid> = (0..args.threads as u64)
        .map(|i| thread_id(2_000_000 + i))
        .collect();
    writer::create_threads(db, &threads).await?;
    let shared = Arc::new(Shared {
        target,
        threads,
        quiet: AtomicBool::new(false),
        stop: CancellationToken::new(),
        last_seq: (0..args.streams).map(|_| AtomicI64::new(0)).collect(),
        connected: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        commits: Mutex::new(HashMap::new()),
        kills: Mutex::new(Vec::new()),
        write_errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let load_for = Duration::from_secs_f64(args.minutes * 60.0);

    // Clients, opening over the first few seconds rather than in one storm.
    let mut clients = Vec::new();
    for c in 0..args.streams {
        let shared = shared.clone();
        let args = args.clone();
        let delay = Duration::from_millis(c as u64 % 5000);
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            client(shared, c, args).await
        }));
    }

    // Writers and the LISTEN killer on their own thread.
    let load_stop = CancellationToken::new();
    let load = {
        let (shared, args, url, stop) = (
            shared.clone(),
            args.clone(),
            db.to_owned(),
            load_stop.clone(),
        );
        writer::on_own_thread(move || async move {
            let writes = writes(shared.clone(), &url, &args, stop.clone());
            let kills = kills(&shared, &url, args.kill_every_secs, stop);
            let (writes, kills) = tokio::join!(writes, kills);
            Ok((writes?, kills?))
        })
    };

    // RSS and connections over time, until the load ends.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.sample_every_secs));
    while started.elapsed() < load_for {
        tick.tick().await;
        let rss = procfs::rss_bytes(pid)?;
        let connected = shared.connected.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        samples.push(json!({
            "t_s": started.elapsed().as_secs(),
            "rss_bytes": rss,
            "connected": connected,
            "delivered": delivered,
        }));
        if samples.len() % 12 == 1 {
            eprintln!(
                "soak {:>4} s: {connected} connected, {delivered} events delivered, broadcaster RSS {} KiB",
                started.elapsed().as_secs(),
                rss / 1024
            );
        }
    }
    load_stop.cancel();
    let ((inserts, deletes), kills) = load.await??;
    shared.quiet.store(true, Ordering::Relaxed);
    eprintln!("soak: load over ({inserts} inserts, {deletes} deletes, {kills} LISTEN kills); every client catches up");

    // What the table says each thread's clients must hold.
    let expected = table_state(db, &shared.threads).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind = (0..args.streams)
            .filter(|&c| {
                let t = (c % args.threads) as usize;
                shared.last_seq[c as usize].load(Ordering::Relaxed) < expected[t].max
            })
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("soak: {behind} clients still behind after 120 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.stop.cancel();
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await.context("a client task failed")?);
    }
    let final_rss = procfs::rss_bytes(pid)?;
    Ok(check(
        &args, &shared, &expected, logs, samples, final_rss, inserts, deletes, kills,
    ))
}

/// The changes one thread's clients must hold: every seq the table still records (replies and
/// tombstones); seqs below `max` that it no longer records belonged to deleted replies, which a
/// client may or may not have seen before the delete.
struct Expected {
    seqs: HashSet<i64>,
    max: i64,
}

async fn table_state(db: &str, threads: &[Uuid]) -> Result<Vec<Expected>> {
    let client = writer::connect(db).await?;
    let mut by_thread: HashMap<String, Expected> = HashMap::new();
    let rows = client
        .query(
            "SELECT feedback_id::text, thread_seq FROM feedback_replies WHERE feedback_id = ANY($1) \
             UNION ALL SELECT thread, seq FROM threadcast.tombstones \
             WHERE source = 'public.feedback_replies'::regclass AND thread = ANY($2)",
            &[
                &threads,
                &threads.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            ],
        )
        .await
        .context("read the table")?;
    for row in rows {
        let e = by_thread.entry(row.get(0)).or_insert_with(|| Expected {
            seqs: HashSet::new(),
            max: 0,
        });
        let seq: i64 = row.get(1);
        e.seqs.insert(seq);
        e.max = e.max.max(seq);
    }
    Ok(threads
        .iter()
        .map(|t| {
            by_thread.remove(&t.to_string()).unwrap_or(Expected {
                seqs: HashSet::new(),
                max: 0,
            })
        })
        .collect())
}

/// One client: connects (from seq 0, so it holds the whole thread), reads, drops its connection
/// after a random while, waits as EventSource would and resumes with `Last-Event-ID`.
async fn client(shared: Arc<Shared>, c: u32, args: SoakArgs) -> ClientLog {
    let t = c % args.threads;
    let thread = shared.threads[t as usize];
    let token = shared.target.token(thread);
    let mut rng = Rng::new(c as u64 + 1);
    let mut log = ClientLog {
        thread: t,
        ..ClientLog::default()
    };
    let mut buf = vec![0u8; 8192];
    let mut items = Vec::new();
    let mut last = 0i64;
    while !shared.stop.is_cancelled() {
        let open = sse_client::open(
            shared.target.addr,
            Some(shared.target.source()),
            thread,
            &token,
            Some(last),
            &mut buf,
        );
        let mut conn = tokio::select! {
            _ = shared.stop.cancelled() => break,
            conn = open => match conn {
                Ok(conn) => conn,
                Err(OpenError::Status(_) | OpenError::Io(_)) => {
                    log.refused += 1;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        log.connects += 1;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let drop_at = tokio::time::Instant::now()
            + Duration::from_secs_f64(rng.exp(args.disconnect_mean_secs));
        let mut joined_at = None;
        loop {
            items.clear();
            let read = tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = tokio::time::sleep_until(drop_at), if !shared.quiet.load(Ordering::Relaxed) => break,
                read = conn.read(&mut buf, &mut items) => read,
            };
            let at = Instant::now();
            for item in &items {
                match *item {
                    Item::Retry(_) => joined_at = Some(at),
                    Item::Event {
                        seq, own_thread, ..
                    } => {
                        if !own_thread {
                            log.foreign += 1;
                        }
                        log.received.push(seq);
                        if seq <= last {
                            continue;
                        }
                        last = seq;
                        log.receipts.push((seq, at, joined_at.unwrap_or(at)));
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The soak's clients resume from an id of their own (never live).
                    Item::Comment | Item::Joined(_) => {}
                }
            }
            shared.last_seq[c as usize].store(last, Ordering::Relaxed);
            match read {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    log.cut_off += 1;
                    break;
                }
            }
        }
        drop(conn);
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        if shared.stop.is_cancelled() {
            break;
        }
        // EventSource waits `retry` before it reconnects; spread it so clients do not move in step.
        let wait = RETRY.mul_f64(rng.unit());
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    log
}

/// Commits changes at `rate` per second into random threads until `stop`; returns (inserts,
/// deletes).
async fn writes(
    shared: Arc<Shared>,
    url: &str,
    args: &SoakArgs,
    stop: CancellationToken,
) -> Result<(u64, u64)> {
    const WRITERS: usize = 4;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(Writer::connect(url).await?);
    }
    let started = tokio::time::Instant::now();
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let work = writers.into_iter().enumerate().map(|(w, mut writer)| {
        let (shared, stop, counts) = (shared.clone(), stop.clone(), counts.clone());
        let (rate, delete_share, threads) = (args.write_rate, args.delete_share, args.threads);
        async move {
            let mut rng = Rng::new(1_000_003 * (w as u64 + 1));
            let mut k = w as u64;
            loop {
                let due = started + Duration::from_secs_f64(k as f64 / rate);
                tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok(()),
                    _ = tokio::time::sleep_until(due) => {}
                }
                let t = (rng.next() % threads as u64) as u32;
                let thread = shared.threads[t as usize];
                k += WRITERS as u64;
                let wrote = if rng.unit() < delete_share {
                    writer.delete_oldest(thread).await.map(|_| {
                        counts.1.fetch_add(1, Ordering::Relaxed);
                    })
                } else {
                    writer.insert(thread).await.map(|(seq, at)| {
                        shared.commits.lock().unwrap().insert((t, seq), at);
                        counts.0.fetch_add(1, Ordering::Relaxed);
                    })
                };
                // A database that goes away (a restart, a crash) is a fault to ride through,
                // not the end of the soak: whether the change committed, the final check reads
                // from the table.
                if let Err(error) = wrote {
                    if shared.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("soak: a write failed ({error:#}); writers reconnect");
                    }
                    writer = loop {
                        tokio::select! {
                            _ = stop.cancelled() => return anyhow::Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        if let Ok(writer) = Writer::connect(url).await {
                            break writer;
                        }
                    };
                }
            }
        }
    });
    futures::future::try_join_all(work).await?;
    Ok((
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
    ))
}

/// Terminates the broadcaster's LISTEN backend every `every` seconds until `stop`; returns how
/// many backends were terminated.
async fn kills(shared: &Shared, url: &str, every: u64, stop: CancellationToken) -> Result<u64> {
    let mut client = writer::connect(url).await?;
    let mut killed = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(killed),
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&threadcast_payload::APPLICATION_NAME],
            )
            .await;
        match row {
            Ok(row) => {
                shared.kills.lock().unwrap().push(Instant::now());
                killed += row.get::<_, i64>(0) as u64;
            }
            // The database went away; try again next time round.
            Err(_) => {
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(again) = writer::connect(url).await {
                    client = again;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    args: &SoakArgs,
    shared: &Shared,
    expected: &[Expected],
    logs: Vec<ClientLog>,
    samples: Vec<Value>,
    final_rss: u64,
    inserts: u64,
    deletes: u64,
    kills: u64,
) -> Value {
    let commits = shared.commits.lock().unwrap();
    let kill_times = shared.kills.lock().unwrap();
    let around_a_kill = |at: Instant| {
        kill_times
            .iter()
            .any(|&k| at + AROUND_A_KILL.0 >= k && at <= k + AROUND_A_KILL.1)
    };
    let mut calm = Vec::new();
    let (mut delivered, mut lost, mut duplicated, mut out_of_order, mut unexpected) =
        (0, 0, 0, 0, 0);
    let (mut foreign, mut connects, mut refused, mut cut_off) = (0, 0, 0, 0);
    let mut clients_with_loss = 0;
    let mut latencies = Vec::new();
    for log in &logs {
        let want = &expected[log.thread as usize];
        let audit = audit_seqs(&log.received, want.seqs.iter().copied());
        if !audit.lost.is_empty() {
            clients_with_loss += 1;
            if clients_with_loss <= 5 {
                eprintln!(
                    "soak: a client of thread {} lacks seqs {:?}",
                    log.thread, audit.lost
                );
            }
        }
        lost += audit.lost.len() as u64;
        // Outside 1..=max, a seq was never handed out for this thread.
        unexpected += log
            .received
            .iter()
            .filter(|&&s| s < 1 || s > want.max)
            .count() as u64;
        delivered +=
            (log.received.len() - audit.duplicated.len() - audit.out_of_order.len()) as u64;
        duplicated += audit.duplicated.len() as u64;
        out_of_order += audit.out_of_order.len() as u64;
        foreign += log.foreign;
        connects += log.connects;
        refused += log.refused;
        cut_off += log.cut_off;
        for &(seq, at, joined) in &log.receipts {
            // Only events committed while this connection was up were delivered live; the rest
            // came from the table on resume, and their age says nothing about latency.
            if let Some(&committed) = commits.get(&(log.thread, seq)) {
                if committed >= joined {
                    let latency = at.saturating_duration_since(committed);
                    latencies.push(latency);
                    if !around_a_kill(committed) {
                        calm.push(latency);
                    }
                }
            }
        }
    }
    let latency = Summary::of(latencies);
    let latency_away_from_kills = Summary::of(calm);

    // Memory once connections are steady: from the end of the first minute on.
    let rss: Vec<(u64, u64)> = samples
        .iter()
        .map(|s| {
            (
                s["t_s"].as_u64().unwrap_or(0),
                s["rss_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let steady: Vec<&(u64, u64)> = rss.iter().filter(|(t, _)| *t >= 60).collect();
    let window = (steady.len() / 5).max(1);
    let mean = |xs: &[&(u64, u64)]| {
        xs.iter().map(|(_, r)| *r as f64).sum::<f64>() / xs.len().max(1) as f64
    };
    let (first, last) = if steady.len() >= 2 * window {
        (
            mean(&steady[..window]),
            mean(&steady[steady.len() - window..]),
        )
    } else {
        (0.0, 0.0)
    };
    json!({
        "soak": {
            "minutes": args.minutes,
            "streams": args.streams,
            "threads": args.threads,
            "write_rate": args.write_rate,
            "inserts": inserts,
            "deletes": deletes,
            "listen_kills": kills,
            "database_errors": shared.write_errors.load(Ordering::Relaxed),
            "connects": connects,
            "refused": refused,
            "cut_off_by_server": cut_off,
            "delivered": delivered,
            "lost": lost,
            "clients_with_loss": clients_with_loss,
            "duplicated": duplicated,
            "out_of_order": out_of_order,
            "unexpected": unexpected,
            "foreign": foreign,
            "latency": latency,
            "latency_away_from_kills": latency_away_from_kills,
            "rss": {
                "samples": samples,
                "final_bytes": final_rss,
                "steady_first_fifth_mean_bytes": first,
                "steady_last_fifth_mean_bytes": last,
                "steady_growth_bytes": last - first,
            },
        }
    })
}
