//! A fleet of open streams: one task per stream reading frames, counting what arrives and, when
//! asked, recording when each event arrived on this process's monotonic clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use jsonwebtoken::{EncodingKey, Header};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sse_client::{self, Item};

/// Loopback source addresses connections are spread over: each has its own ~28,000 ephemeral
/// ports, so together they hold far more than 50,000 connections to one listening port.
const SOURCE_ADDRESSES: u8 = 8;

/// Streams opening at once.
const OPENING: usize = 128;

/// Where the broadcaster is and how to get in.
pub struct Target {
    pub addr: SocketAddr,
    key: EncodingKey,
    next_source: AtomicUsize,
}

impl Target {
    pub fn new(addr: SocketAddr, secret: &[u8]) -> Result<Self> {
        if !addr.ip().is_loopback() {
            bail!("the load generator only talks to loopback addresses, not {addr}");
        }
        Ok(Target {
            addr,
            key: EncodingKey::from_secret(secret),
            next_source: AtomicUsize::new(0),
        })
    }

    /// A one-day token for `thread`, signed as the application's backend would.
    pub fn token(&self, thread: Uuid) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 86_400;
        let claims = serde_json::json!({ "feedback_id": thread, "exp": exp, "role": "end_user" });
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The next source address, round robin over 127.0.0.2 ...
    pub fn source(&self) -> IpAddr {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES as usize;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n as u8))
    }
}

/// The thread key of the load generator's thread number `n`.
pub fn thread_id(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{n:012}")).expect("a valid uuid")
}

/// When an event arrived: the thread's index in the fleet, its seq, and the time.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub thread: u32,
    pub seq: i64,
    pub at: Instant,
}

/// Counters every stream of a fleet adds to.
#[derive(Default)]
pub struct Counts {
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    pub received: AtomicU64,
    /// Streams the server ended (a slow consumer is cut off this way).
    pub ended: AtomicU64,
    /// Replies that named another thread (must stay 0).
    pub foreign: AtomicU64,
}

/// Open streams and their reader tasks.
pub struct Fleet {
    pub counts: Arc<Counts>,
    stop: CancellationToken,
    readers: Vec<JoinHandle<Vec<Receipt>>>,
    pub first_error: Arc<Mutex<Option<String>>>,
    opening: Arc<Semaphore>,
    record: bool,
}

impl Fleet {
    /// An empty fleet; `record` keeps a receipt per event (else events are only counted).
    pub fn new(record: bool) -> Self {
        Fleet {
            counts: Arc::default(),
            stop: CancellationToken::new(),
            readers: Vec::new(),
            first_error: Arc::default(),
            opening: Arc::new(Semaphore::new(OPENING)),
            record,
        }
    }

    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Starts opening `per_thread` streams for each of `threads` (numbered from `first_index`);
    /// see [`Fleet::wait_open`].
    pub fn open(
        &mut self,
        target: &Arc<Target>,
        threads: &[Uuid],
        first_index: u32,
        per_thread: usize,
    ) {
        for (i, thread) in threads.iter().enumerate() {
            let token: Arc<str> = target.token(*thread).into();
            for _ in 0..per_thread {
                self.readers.push(tokio::spawn(read_stream(
                    target.clone(),
                    *thread,
                    first_index + i as u32,
                    token.clone(),
                    self.counts.clone(),
                    self.stop.clone(),
                    self.opening.clone(),
                    self.first_error.clone(),
                    self.record,
                )));
            }
        }
    }

    /// Waits until every stream started so far has joined its thread or failed to open; returns
    /// how many failed.
    pub async fn wait_open(&self, what: &str) -> u64 {
        let total = self.readers.len() as u64;
        let mut last_report = Instant::now();
        loop {
            let joined = self.counts.joined.load(Ordering::Relaxed);
            let failed = self.counts.failed.load(Ordering::Relaxed);
            if joined + failed >= total {
                return failed;
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("  {what}: {joined} of {total} streams open, {failed} failed");
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `received` reaches `expected`, for at most `limit`; returns whether it did.
    pub async fn wait_received(&self, expected: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.counts.received.load(Ordering::Relaxed) < expected {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        true
    }

    /// Closes every stream and returns the receipts.
    pub async fn close(self) -> Vec<Receipt> {
        self.stop.cancel();
        let mut all = Vec::new();
        for reader in self.readers {
            all.extend(reader.await.unwrap_or_default());
        }
        all
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_stream(
    target: Arc<Target>,
    thread: Uuid,
    index: u32,
    token: Arc<str>,
    counts: Arc<Counts>,
    stop: CancellationToken,
    opening: Arc<Semaphore>,
    first_error: Arc<Mutex<Option<String>>>,
    record: bool,
) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    let mut buf = vec![0u8; if record { 16 * 1024 } else { 1024 }];
    let mut items = Vec::new();
    // Held while opening, so that a burst of connects stays bounded; released once joined.
    let mut permit = Some(opening.acquire_owned().await);
    let conn = tokio::select! {
        _ = stop.cancelled() => return receipts,
        conn = sse_client::open(target.addr, Some(target.source()), thread, &token, None, &mut buf) => conn,
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(error) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| error.to_string());
            return receipts;
        }
    };
    let mut joined = false;
    loop {
        items.clear();
        let open = tokio::select! {
            _ = stop.cancelled() => break,
            open = conn.read(&mut buf, &mut items) => open,
        };
        let at = Instant::now();
        for item in &items {
            match *item {
                Item::Retry(_) if !joined => {
                    joined = true;
                    permit = None;
                    counts.joined.fetch_add(1, Ordering::Relaxed);
                }
                Item::Event {
                    seq, own_thread, ..
                } => {
                    if !own_thread {
                        counts.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                    if record {
                        receipts.push(Receipt {
                            thread: index,
                            seq,
                            at,
                        });
                    }
                    counts.received.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        match open {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if joined {
                    counts.ended.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    drop(permit);
    receipts
}
