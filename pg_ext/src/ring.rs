//! The shared memory of batched delivery: one ring of committed, signed changes per database that
//! uses it, each drained by a background worker of its own (`worker.rs`).
//!
//! A committing backend appends its transaction's changes to its database's ring as one record
//! tagged with its transaction id, at PRE_COMMIT (`pending.rs` says why not later), and its
//! COMMIT callback wakes the worker. Neither allocates, raises or waits: a lookup over atomics,
//! an LWLock, a copy, and a latch set on the 0 → 1 transition of a wake flag (as `pg_net`'s
//! worker is woken). A ring without room drops the transaction's changes; the commit counts them
//! and asks the worker for a resync. Only the worker consumes, so it reads without the lock; the
//! lock orders the appenders, before their commits become visible, so a thread's changes enter
//! the ring in seq order. The worker announces a record once its transaction committed.
//!
//! The rings live in memory requested in `shmem_request_hook` (through `pg_shmem_init!`): their
//! size is the `threadcast.ring_size` setting, read when the server starts. There are
//! `threadcast.batch_workers` rings and as many workers; a database takes a free ring at its
//! first batched change (a claim, under one LWLock) and keeps it until its worker has been idle
//! for `threadcast.batch_idle_timeout`.

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::shmem::PgSharedMemoryInitialization;

/// Bytes per ring, in kB (`threadcast.ring_size`). The ring must hold what commits while a worker
/// connects to its database after an idle spell: with 8 writers at about 9,000 commits a second on
/// 2 cores, that peaked at 2.1 MB (`docs/benchmarks.md`), and 1 MB overflowed at every such start.
pub static RING_KB: GucSetting<i32> = GucSetting::<i32>::new(8 * 1024);
/// Rings and workers: how many databases can use batched delivery at once.
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Seconds a worker stays with its database with nothing to send (0: for good).
pub static IDLE_SECS: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Milliseconds a worker lets changes gather after it sent some (`threadcast.batch_window`).
pub static WINDOW_MS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// The smallest ring: a change of the largest kind (8000 bytes and its header) must fit.
const MIN_RING_KB: i32 = 16;

const TRANCHE: &CStr = c"threadcast batched delivery";

/// Registers the settings. They take effect when the server starts (the memory is sized then).
pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"threadcast.ring_size",
        c"Shared memory per database for committed changes waiting to be announced (batched delivery).",
        c"A commit that finds its ring full drops its announcements and makes the worker send a resync notification.",
        &RING_KB,
        MIN_RING_KB,
        1024 * 1024,
        GucContext::Postmaster,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"threadcast.batch_workers",
        c"How many databases can use batched delivery at once: one background worker each.",
        c"Each worker takes one of max_worker_processes. A database beyond these announces per transaction.",
        &WORKERS,
        0,
        64,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"threadcast.batch_window",
        c"Milliseconds a batch worker lets changes gather after it announced some.",
        c"Under load, fewer and fuller notifications (each is a transaction of the worker's); at most this much is added to an announcement's delay. An idle worker announces at once.",
        &WINDOW_MS,
        0,
        100,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"threadcast.batch_idle_timeout",
        c"Seconds a batch worker keeps its database with nothing to announce (0: never leaves).",
        c"A worker that leaves releases its ring and its connection, so that the database can be dropped.",
        &IDLE_SECS,
        0,
        86_400,
        GucContext::Postmaster,
        GucFlags::UNIT_S,
    );
}

/// One database's ring and what its worker publishes. Every field is shared between processes.
#[repr(C)]
pub struct Slot {
    /// Orders the appenders; the worker takes it only to give the ring up.
    lock: *mut pg_sys::LWLock,
    /// The database served, `0` while free.
    database: AtomicU32,
    /// Bytes ever appended, and ever consumed: the ring holds `[tail, head)`.
    head: AtomicU64,
    tail: AtomicU64,
    /// Set from 0 to 1 by the first appender after the worker last looked; that one sets the latch.
    wake: AtomicU32,
    /// Changes were dropped: the worker must send a resync.
    resync: AtomicBool,
    /// A worker has served the current assignment already: one that starts now is a restart,
    /// and announces a resync.
    served: AtomicBool,
    /// The worker's latch (`*mut Latch`), its pid and its last sign of life (a TimestampTz).
    latch: AtomicUsize,
    worker_pid: AtomicI32,
    heartbeat: AtomicI64,
    /// Counters since the server started.
    transactions: AtomicU64,
    events: AtomicU64,
    delivered: AtomicU64,
    notifications: AtomicU64,
    overflows: AtomicU64,
    dropped: AtomicU64,
    resyncs: AtomicU64,
    starts: AtomicU64,
    high_water: AtomicU64,
}

/// The layout in shared memory: this, then the slots, then the rings' bytes.
#[repr(C)]
struct Header {
    /// Taken to claim or give up a slot, so that a database never holds two.
    control: *mut pg_sys::LWLock,
    slots: usize,
    capacity: u64,
    /// Transactions whose changes found no ring (every ring taken by other databases).
    unslotted: AtomicU64,
}

/// The shared memory, once attached (null in a server without the preload).
pub struct Rings {
    header: UnsafeCell<*mut Header>,
}

// SAFETY: the pointer is written once, in the postmaster's shmem_startup_hook, before any backend
// exists, and only read afterwards; everything behind it is atomics or under LWLocks.
unsafe impl Sync for Rings {}

pub static RINGS: Rings = Rings {
    header: UnsafeCell::new(std::ptr::null_mut()),
};

/// Where the slots and the rings start, and the whole size.
struct Layout {
    slots_at: usize,
    data_at: usize,
    size: usize,
}

fn layout(slots: usize, capacity: usize) -> Layout {
    let slots_at = std::mem::size_of::<Header>().next_multiple_of(64);
    let data_at = (slots_at + slots * std::mem::size_of::<Slot>()).next_multiple_of(64);
    Layout {
        slots_at,
        data_at,
        size: data_at + slots * capacity,
    }
}

fn configured() -> (usize, usize) {
    let slots = WORKERS.get().max(0) as usize;
    let capacity = RING_KB.get().max(MIN_RING_KB) as usize * 1024;
    (slots, capacity)
}

impl PgSharedMemoryInitialization for Rings {
    type Value = ();

    unsafe fn on_shmem_request(&'static self) {
        let (slots, capacity) = configured();
        // SAFETY: called from shmem_request_hook, as these require.
        unsafe {
            pg_sys::RequestAddinShmemSpace(layout(slots, capacity).size);
            pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), slots as i32 + 1);
        }
    }

    unsafe fn on_shmem_startup(&'static self, _: ()) {
        let (slots, capacity) = configured();
        let Layout {
            slots_at,
            data_at,
            size,
        } = layout(slots, capacity);
        // SAFETY: called from shmem_startup_hook; the memory was requested above with this size,
        // and is initialised in place (it is megabytes: nothing passes through the stack).
        unsafe {
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let base = pg_sys::ShmemInitStruct(TRANCHE.as_ptr(), size, &mut found).cast::<u8>();
            let header = base.cast::<Header>();
            if !found {
                // The header and the slots start at zero; the rings' bytes need no clearing.
                std::ptr::write_bytes(base, 0, data_at);
                let locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
                (*header).control = &raw mut (*locks).lock;
                (*header).slots = slots;
                (*header).capacity = capacity as u64;
                let first = base.add(slots_at).cast::<Slot>();
                for i in 0..slots {
                    (*first.add(i)).lock = &raw mut (*locks.add(i + 1)).lock;
                }
            }
            *self.header.get() = header;
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

fn header() -> Option<&'static Header> {
    // SAFETY: see `Sync` above; null until attached.
    unsafe { (*RINGS.header.get()).as_ref() }
}

/// Whether this server has the rings (threadcast is in `shared_preload_libraries`, and
/// `threadcast.batch_workers` is not 0).
pub fn available() -> bool {
    header().is_some_and(|h| h.slots > 0)
}

/// The bytes one ring holds.
pub fn capacity() -> Option<usize> {
    header().map(|h| h.capacity as usize)
}

/// Slot `i`, if there is one.
pub fn slot(i: usize) -> Option<&'static Slot> {
    let h = header()?;
    if i >= h.slots {
        return None;
    }
    // SAFETY: the slots start at slots_at, and i is one of them.
    unsafe {
        let base = (h as *const Header).cast::<u8>();
        base.add(layout(h.slots, 0).slots_at)
            .cast::<Slot>()
            .add(i)
            .as_ref()
    }
}

fn slots() -> impl Iterator<Item = (usize, &'static Slot)> {
    let n = header().map_or(0, |h| h.slots);
    (0..n).filter_map(|i| slot(i).map(|s| (i, s)))
}

/// The slot that serves `database`, if one does. Atomics only.
pub fn find(database: pg_sys::Oid) -> Option<&'static Slot> {
    let db = u32::from(database);
    slots()
        .map(|(_, s)| s)
        .find(|s| s.database.load(Acquire) == db)
}

/// The slot of `database`, taking a free one if it has none. Safe in a transaction callback: atomics
/// and one LWLock, no allocation, no error.
pub fn claim(database: pg_sys::Oid) -> Option<&'static Slot> {
    if let Some(slot) = find(database) {
        return Some(slot);
    }
    let h = header()?;
    let _control = Locked::exclusive(h.control);
    if let Some(slot) = find(database) {
        return Some(slot);
    }
    let (_, slot) = slots().find(|(_, s)| s.database.load(Acquire) == 0)?;
    slot.served.store(false, SeqCst);
    slot.database.store(u32::from(database), Release);
    slot.wake_worker();
    Some(slot)
}

/// Counts a transaction whose changes found no ring.
pub fn count_unslotted() {
    if let Some(h) = header() {
        h.unslotted.fetch_add(1, Relaxed);
    }
}

/// An LWLock held until dropped.
struct Locked(*mut pg_sys::LWLock);

impl Locked {
    fn exclusive(lock: *mut pg_sys::LWLock) -> Locked {
        // SAFETY: the lock lives in shared memory for the server's life. LWLockAcquire raises no
        // error unless 200 LWLocks are held at once, which never happens here.
        unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Locked(lock)
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: acquired in `exclusive`.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

/// What a commit's append came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Done,
    /// No room: the changes were dropped, counted, and a resync is on its way.
    Overflow,
    /// The slot serves another database now (it was given up meanwhile).
    Moved,
}

impl Slot {
    /// The slot's ring: where its bytes start, and how many there are.
    fn data(&self) -> (*mut u8, u64) {
        let Some(h) = header() else {
            // A slot is only ever handed out of attached memory.
            return (std::ptr::null_mut(), 0);
        };
        let at = layout(h.slots, 0);
        // SAFETY: `self` is one of the slots; the rings follow the slots, in the same order.
        unsafe {
            let base = (h as *const Header).cast::<u8>().cast_mut();
            let first = base.add(at.slots_at).cast::<Slot>();
            let index = (self as *const Slot).offset_from(first) as usize;
            (
                base.add(at.data_at + index * h.capacity as usize),
                h.capacity,
            )
        }
    }

    /// The database served, if any.
    pub fn database(&self) -> Option<pg_sys::Oid> {
        let db = self.database.load(Acquire);
        (db != 0).then(|| pg_sys::Oid::from(db))
    }

    /// Appends one transaction's entries as a record tagged with `xid`, `events` changes in all.
    /// Callback safe: no allocation, no error, never waits for room (then: `Overflow`, and the
    /// caller counts it once the transaction committed).
    pub fn append(
        &self,
        database: pg_sys::Oid,
        xid: pg_sys::TransactionId,
        bytes: &[u8],
        events: u64,
    ) -> Appended {
        let (data, capacity) = self.data();
        let header = record::header(xid, events, bytes.len());
        let size = (header.len() + bytes.len()) as u64;
        let _lock = Locked::exclusive(self.lock);
        if self.database.load(Acquire) != u32::from(database) {
            return Appended::Moved;
        }
        let head = self.head.load(Relaxed);
        let used = head - self.tail.load(Acquire);
        if used + size > capacity {
            return Appended::Overflow;
        }
        // SAFETY: [head, head + size) is free space of the ring (the worker only reads
        // [tail, head)), wrapped at its end.
        unsafe {
            copy_in(data, capacity, head, &header);
            copy_in(data, capacity, head + header.len() as u64, bytes);
        }
        self.head.store(head + size, Release);
        self.high_water.fetch_max(used + size, Relaxed);
        self.transactions.fetch_add(1, Relaxed);
        self.events.fetch_add(events, Relaxed);
        Appended::Done
    }

    /// Counts a committed transaction whose changes were dropped, and has the worker send a
    /// resync (the changes are visible now, so the readers it prompts will see them).
    pub fn overflow(&self, events: u64) {
        self.overflows.fetch_add(1, Relaxed);
        self.dropped.fetch_add(events, Relaxed);
        self.resync.store(true, SeqCst);
        self.wake.store(0, SeqCst);
        self.wake_worker();
    }

    /// Sets the worker's latch, unless an earlier appender already did since it last looked.
    pub fn wake_worker(&self) {
        if self.wake.compare_exchange(0, 1, SeqCst, SeqCst).is_ok() {
            let latch = self.latch.load(SeqCst) as *mut pg_sys::Latch;
            if !latch.is_null() {
                // SAFETY: a PGPROC's latch lives in shared memory for the server's life; if its
                // worker is gone, the set is a harmless spurious wake-up of whoever owns it now.
                unsafe { pg_sys::SetLatch(latch) };
            }
        }
    }

    // The worker's side.

    /// Publishes this process as the slot's worker.
    pub fn attach_worker(&self, pid: i32, latch: *mut pg_sys::Latch) {
        self.worker_pid.store(pid, SeqCst);
        self.latch.store(latch as usize, SeqCst);
        self.starts.fetch_add(1, Relaxed);
        self.beat();
    }

    /// Records a sign of life.
    pub fn beat(&self) {
        // SAFETY: reading the clock has no preconditions.
        self.heartbeat
            .store(unsafe { pg_sys::GetCurrentTimestamp() }, Relaxed);
    }

    /// Forgets earlier wake-ups: an append from now on sets the latch again.
    pub fn rearm(&self) {
        self.wake.store(0, SeqCst);
    }

    /// Whether a resync was asked for since the last call.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, SeqCst)
    }

    /// Marks the current assignment served; true when a worker had served it before (this
    /// worker is a restart).
    pub fn restarted(&self) -> bool {
        self.served.swap(true, SeqCst)
    }

    /// Copies what waits in the ring into `out` (cleared first); returns where it starts, the
    /// position that [`Slot::consume`] counts from.
    pub fn read(&self, out: &mut Vec<u8>) -> u64 {
        let (data, capacity) = self.data();
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Relaxed);
        out.clear();
        out.resize((head - tail) as usize, 0);
        // SAFETY: [tail, head) was written by appenders before they published head.
        unsafe { copy_out(data, capacity, tail, out) };
        tail
    }

    /// Frees the ring up to `to`.
    pub fn consume(&self, to: u64, events: u64, notifications: u64) {
        self.tail.store(to, Release);
        self.delivered.fetch_add(events, Relaxed);
        self.notifications.fetch_add(notifications, Relaxed);
    }

    pub fn count_resync(&self) {
        self.resyncs.fetch_add(1, Relaxed);
    }

    /// Gives the slot up if nothing waits in it; true when it did.
    pub fn release(&self) -> bool {
        let Some(h) = header() else { return false };
        let _control = Locked::exclusive(h.control);
        let _lock = Locked::exclusive(self.lock);
        if self.head.load(Acquire) != self.tail.load(Acquire) {
            return false;
        }
        self.database.store(0, Release);
        self.worker_pid.store(0, SeqCst);
        true
    }

    /// What `doctor()` shows.
    pub fn stats(&self) -> Stats {
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        Stats {
            capacity: capacity().unwrap_or(0) as u64,
            used: head - tail,
            high_water: self.high_water.load(Relaxed),
            worker_pid: self.worker_pid.load(Relaxed),
            heartbeat: self.heartbeat.load(Relaxed),
            transactions: self.transactions.load(Relaxed),
            events: self.events.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            overflows: self.overflows.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            resyncs: self.resyncs.load(Relaxed),
            starts: self.starts.load(Relaxed),
        }
    }
}

/// A slot's figures, as `threadcast.doctor()` reports them.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub capacity: u64,
    pub used: u64,
    pub high_water: u64,
    pub worker_pid: i32,
    pub heartbeat: pg_sys::TimestampTz,
    pub transactions: u64,
    pub events: u64,
    pub delivered: u64,
    pub notifications: u64,
    pub overflows: u64,
    pub dropped: u64,
    pub resyncs: u64,
    pub starts: u64,
}

/// Transactions that found no ring since the server started.
pub fn unslotted() -> u64 {
    header().map_or(0, |h| h.unslotted.load(Relaxed))
}

/// Copies `bytes` into the ring at `pos`, wrapping at its end.
unsafe fn copy_in(data: *mut u8, capacity: u64, pos: u64, bytes: &[u8]) {
    let start = (pos % capacity) as usize;
    let first = bytes.len().min(capacity as usize - start);
    // SAFETY: both pieces are within the ring, as the caller checked the room.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(start), first);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, bytes.len() - first);
    }
}

/// Copies `out.len()` bytes out of the ring from `pos`, wrapping at its end.
unsafe fn copy_out(data: *const u8, capacity: u64, pos: u64, out: &mut [u8]) {
    let start = (pos % capacity) as usize;
    let first = out.len().min(capacity as usize - start);
    // SAFETY: both pieces are within the ring.
    unsafe {
        std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
        let rest = out.len() - first;
        std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), rest);
    }
}

/// A ring's record: one transaction's entries behind
/// `[transaction id: u32 LE][changes: u32 LE][bytes: u32 LE]`.
pub mod record {
    use pgrx::pg_sys;

    /// The header's length.
    pub const HEADER: usize = 12;

    /// The header of a record of `events` changes in `len` bytes of entries.
    pub fn header(xid: pg_sys::TransactionId, events: u64, len: usize) -> [u8; HEADER] {
        let mut header = [0; HEADER];
        header[..4].copy_from_slice(&u32::from(xid).to_le_bytes());
        header[4..8].copy_from_slice(&(events as u32).to_le_bytes());
        header[8..].copy_from_slice(&(len as u32).to_le_bytes());
        header
    }

    /// One record, as the worker reads it.
    pub struct Record<'a> {
        pub xid: pg_sys::TransactionId,
        pub entries: &'a [u8],
        /// Where the record ends, from the start of what was read.
        pub end: usize,
    }

    /// The records of `bytes`, in order; stops at anything incomplete.
    pub fn read(bytes: &[u8]) -> impl Iterator<Item = Record<'_>> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let header = bytes.get(at..at + HEADER)?;
            let word =
                |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
            let len = word(8) as usize;
            let entries = bytes.get(at + HEADER..at + HEADER + len)?;
            at += HEADER + len;
            Some(Record {
                xid: pg_sys::TransactionId::from(word(0)),
                entries,
                end: at,
            })
        })
    }
}

/// One entry of a ring (and of a backend's pending buffer, which holds them in the same form):
/// `[payload length: u32 LE][channel length: u8][channel][payload]`.
pub mod entry {
    /// Bytes an entry takes.
    pub fn size(channel: &str, payload: &str) -> usize {
        5 + channel.len() + payload.len()
    }

    /// Appends an entry to `out`.
    pub fn write(out: &mut Vec<u8>, channel: &str, payload: &str) {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.push(channel.len() as u8);
        out.extend_from_slice(channel.as_bytes());
        out.extend_from_slice(payload.as_bytes());
    }

    /// The entries of `bytes`, as (channel, payload); stops at anything malformed.
    pub fn read(bytes: &[u8]) -> impl Iterator<Item = (&str, &str)> {
        let mut rest = bytes;
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (&channel_len, tail) = tail.split_first()?;
            let len = u32::from_le_bytes(*len) as usize;
            let channel_len = channel_len as usize;
            if tail.len() < channel_len + len {
                return None;
            }
            let (channel, tail) = tail.split_at(channel_len);
            let (payload, tail) = tail.split_at(len);
            rest = tail;
            Some((
                std::str::from_utf8(channel).ok()?,
                std::str::from_utf8(payload).ok()?,
            ))
        })
    }
}
