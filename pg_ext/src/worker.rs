//! The batch workers: background processes that take committed changes out of a database's ring
//! (`ring.rs`) and announce them, packed into as few NOTIFYs as fit in 8,000 bytes each, in one
//! short transaction per drain. Under batched delivery they are the only processes that take
//! PostgreSQL's notification commit lock; the writers never do. After a drain that sent
//! something, a worker lets changes gather for `threadcast.batch_window` (1 ms) before the next:
//! under load that turns many small transactions of its own into a few full ones.
//!
//! There are `threadcast.batch_workers` of them, registered when the server starts (it needs
//! `shared_preload_libraries = 'threadcast'`), one per ring. A worker waits, connected to no
//! database, until a database claims its ring; it then connects to that database for as long as
//! it serves it (NOTIFY reaches the listeners of one database only). Each record of the ring is a
//! transaction's changes, appended before that transaction committed: the worker announces it
//! once `TransactionIdDidCommit`, skips it if the transaction aborted, and stops at one still in
//! progress (its commit wakes the worker again), as NOTIFY's own readers treat its queue.
//!
//! It announces a **resync** after a ring overflowed, and when it restarts to serve a database a
//! worker served before (what the previous one held is sent again rather than lost, since the
//! ring is freed only after the announcing transaction committed, but a resync makes sure). A
//! worker that leaves, because it was idle for `threadcast.batch_idle_timeout` or was told to
//! stop, exits with status 1, so that the postmaster starts it again a second later; an ERROR
//! does the same. After a crash the rings are gone, and so is every LISTEN connection: a
//! reconnecting broadcaster reads every live thread anyway.

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{direct_function_call_as_datum, pg_sys};
use threadcast_payload::{BatchWriter, Key, Resync, ResyncReason};

use crate::pending;
use crate::ring::{self, entry, record, Slot};

/// The `backend_type` of the workers in `pg_stat_activity`, and their `application_name`.
pub const WORKER_TYPE: &str = "threadcast batch worker";

/// How often an idle worker looks up (its heartbeat, and whether to leave).
const TICK: Duration = Duration::from_secs(1);

/// Registers the workers; only in the postmaster, while it loads `shared_preload_libraries`.
pub fn register() {
    for i in 0..ring::WORKERS.get().max(0) {
        BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {i}"))
            .set_type(WORKER_TYPE)
            .set_library("threadcast")
            .set_function("threadcast_batch_worker")
            .set_argument(i.into_datum())
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

/// The worker's entry point.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn threadcast_batch_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    pending::mark_worker();
    let index = arg.value();
    let Some(slot) = ring::slot(index) else {
        // No rings (cannot happen when the postmaster registered us): nothing to do, for good.
        return;
    };
    // SAFETY: MyProcPid and MyLatch are this process's, set before a worker's main runs.
    unsafe { slot.attach_worker(pg_sys::MyProcPid, pg_sys::MyLatch) };

    let database = loop {
        if let Some(database) = slot.database() {
            break database;
        }
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            leave();
        }
        slot.beat();
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    set("application_name", WORKER_TYPE);
    // It runs as the bootstrap superuser: nothing it runs may be found on a path others can write.
    set("search_path", "pg_catalog, pg_temp");
    // The changes are durable already; this transaction only queues notifications, which are
    // never durable. Waiting for its commit record to reach the disk would only add latency.
    set("synchronous_commit", "off");
    log!(
        "{WORKER_TYPE} {index}: serving database {}",
        u32::from(database)
    );

    let mut drainer = Drainer::new(slot);
    if slot.restarted() {
        drainer.resync(ResyncReason::Restart);
    }
    // SAFETY: reading the clock has no preconditions.
    let mut active_at = unsafe { pg_sys::GetCurrentTimestamp() };
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file is what SIGHUP asks of a process.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // From here on, an append sets the latch again: nothing appended after this is missed.
        slot.rearm();
        if drainer.drain() {
            // SAFETY: as above.
            active_at = unsafe { pg_sys::GetCurrentTimestamp() };
            // Busy: let the next changes gather for a moment, so that under load one transaction
            // of ours announces many commits (each drain is a transaction, with its commit
            // record and the notification lock). Idle, the next change is announced at once.
            let window = ring::WINDOW_MS.get();
            if window > 0 {
                // SAFETY: a plain sleep; an append meanwhile sets the latch, so the wait below
                // returns at once.
                unsafe { pg_sys::pg_usleep(i64::from(window) * 1000) };
            }
        }
        slot.beat();
        let idle = i64::from(ring::IDLE_SECS.get()) * 1_000_000;
        // SAFETY: as above.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        if idle > 0 && now - active_at > idle && slot.release() {
            log!(
                "{WORKER_TYPE} {index}: idle, leaving database {}",
                u32::from(database)
            );
            leave();
        }
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            leave();
        }
    }
}

/// Exits so that the postmaster starts the worker again (status 0 would unregister it).
fn leave() -> ! {
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(1) }
}

fn set(name: &str, value: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL");
    let value = std::ffi::CString::new(value).expect("no NUL");
    // SAFETY: both are valid C strings; a user-settable setting for this session.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        )
    };
}

/// One worker's drain loop state: its buffer is reused from drain to drain.
struct Drainer {
    slot: &'static Slot,
    bytes: Vec<u8>,
}

impl Drainer {
    fn new(slot: &'static Slot) -> Drainer {
        Drainer {
            slot,
            bytes: Vec::new(),
        }
    }

    /// Announces every record in the ring whose transaction has ended (committed ones; aborted
    /// ones are skipped), up to the first still in progress, and a resync if one was asked for.
    /// Returns whether there was anything to do.
    fn drain(&mut self) -> bool {
        let mut worked = false;
        loop {
            let resync = self.slot.take_resync();
            let from = self.slot.read(&mut self.bytes);
            if self.bytes.is_empty() && !resync {
                return worked;
            }
            let bytes = &self.bytes;
            let (done, events, notifications) =
                BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| {
                    let (mut done, mut events, mut notifications) = (0, 0, 0);
                    let mut batch = Batch::default();
                    for record in record::read(bytes) {
                        // SAFETY: both read the transaction's status in shared memory and the
                        // commit log; this is a transaction of a connected backend.
                        let (running, committed) = unsafe {
                            (
                                pg_sys::TransactionIdIsInProgress(record.xid),
                                pg_sys::TransactionIdDidCommit(record.xid),
                            )
                        };
                        if running {
                            break;
                        }
                        if committed {
                            events += batch.add(record.entries);
                        }
                        done = record.end;
                    }
                    notifications += batch.finish();
                    if resync {
                        notifications += send_resync(ResyncReason::Overflow);
                    }
                    (done, events, notifications)
                }));
            if resync {
                self.slot.count_resync();
            }
            if done == 0 && !resync {
                // The oldest record's transaction is still committing; its end wakes us.
                return worked;
            }
            worked = true;
            self.slot.consume(from + done as u64, events, notifications);
            if done < self.bytes.len() {
                return worked;
            }
        }
    }

    /// Announces a resync on every batched channel of the database, in a transaction of its own.
    fn resync(&mut self, reason: ResyncReason) {
        BackgroundWorker::transaction(|| send_resync(reason));
        self.slot.count_resync();
    }
}

/// The notifications of one drain: changes packed per channel, in their order, into as few
/// NOTIFYs as fit.
#[derive(Default)]
struct Batch<'a> {
    writers: Vec<(&'a str, BatchWriter)>,
    sent: u64,
}

impl<'a> Batch<'a> {
    /// Adds one record's entries; returns how many changes they were.
    fn add(&mut self, entries: &'a [u8]) -> u64 {
        let mut events = 0;
        for (channel, payload) in entry::read(entries) {
            events += 1;
            let at = match self.writers.iter().position(|(c, _)| *c == channel) {
                Some(at) => at,
                None => {
                    self.writers.push((channel, BatchWriter::new()));
                    self.writers.len() - 1
                }
            };
            let writer = &mut self.writers[at].1;
            if !writer.push(payload) {
                if let Some(text) = writer.take() {
                    notify(channel, &text);
                    self.sent += 1;
                }
                writer.push(payload);
            }
        }
        events
    }

    /// Sends what is left; returns how many notifications the drain sent.
    fn finish(mut self) -> u64 {
        for (channel, writer) in &mut self.writers {
            if let Some(text) = writer.take() {
                notify(channel, &text);
                self.sent += 1;
            }
        }
        self.sent
    }
}

fn notify(channel: &str, text: &str) {
    // SAFETY: pg_notify takes two text datums, which these are.
    unsafe {
        direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), text.into_datum()],
        );
    }
}

/// Sends a signed resync on every channel a batched source of this database uses; returns how
/// many notifications that was. Without the extension's tables (or a key) there is nobody to
/// tell, and nothing is sent.
fn send_resync(reason: ResyncReason) -> u64 {
    let Some((key, channels)) = resync_setup() else {
        return 0;
    };
    // SAFETY: reading the clock has no preconditions.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    // TimestampTz counts from 2000-01-01; the notice says Unix microseconds.
    let at = now + 946_684_800_000_000;
    let text = Resync::sign(reason, at, &key);
    for channel in &channels {
        notify(channel, &text);
    }
    channels.len() as u64
}

fn resync_setup() -> Option<(Key, Vec<String>)> {
    Spi::connect(|client| {
        let ready = client
            .select(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('threadcast.sources') \
                    AND a.attname OPERATOR(pg_catalog.=) 'delivery') \
                    AND pg_catalog.to_regclass('threadcast.keys') IS NOT NULL",
                None,
                &[],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        if !ready {
            return Ok(None);
        }
        let key = client
            .select(
                "SELECT k.kid, k.secret FROM threadcast.keys k WHERE k.retired_at IS NULL \
                  ORDER BY k.kid DESC LIMIT 1",
                None,
                &[],
            )?
            .first()
            .get_two::<i32, Vec<u8>>()?;
        let key = match key {
            (Some(kid), Some(secret)) => Key::from_row(kid as u32, &secret),
            _ => None,
        };
        let Some(key) = key else {
            warning!("threadcast: no signing key, so no resync notification can be sent");
            return Ok(None);
        };
        let channels = client
            .select(
                "SELECT DISTINCT s.channel FROM threadcast.sources s \
                  WHERE s.delivery OPERATOR(pg_catalog.=) 'batched'",
                None,
                &[],
            )?
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect();
        Ok::<_, pgrx::spi::Error>(Some((key, channels)))
    })
    .unwrap_or_else(|e| crate::report::internal("cannot prepare a resync notification", e))
}
