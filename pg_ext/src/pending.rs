//! A backend's changes waiting for its transaction to commit, under batched delivery: the
//! transaction's signed notifications, kept here instead of NOTIFY's queue, and handed to the
//! database's ring (`ring.rs`) as the transaction commits.
//!
//! The callbacks mirror what NOTIFY does with its own pending notifications, and for the same
//! reason hand them over at **PRE_COMMIT**, tagged with the transaction's id, rather than once
//! the commit is visible: a writer of the same thread that arrives after this transaction left
//! the proc array (and before its COMMIT callback ran) does not wait for its counter row at all
//! (the row's updater no longer counts as in progress), so it could append its higher number
//! first. Appended before the commit record, each thread's changes enter the ring in seq order;
//! the batch worker announces a transaction's record only once `TransactionIdDidCommit` says it
//! committed, waits while it is in progress, and skips it if it aborted, as NOTIFY's readers do
//! with its queue. A rolled-back savepoint forgets what it kept, an abort everything, and
//! `PREPARE TRANSACTION` is refused.
//!
//! The COMMIT and ABORT callbacks then only settle what PRE_COMMIT left: wake the worker, count
//! an overflow and ask for a resync (only now, once the dropped changes are visible to the
//! table reads a resync makes), or count a transaction that found no ring. An error there would
//! be a PANIC ("cannot abort transaction, it was already committed"): they allocate nothing,
//! take no RefCell they could find borrowed, and cannot panic or wait. PRE_COMMIT, where an
//! error merely aborts, does not wait either: a full ring drops the changes.

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::ring::{self, entry, Appended, Slot};

/// The buffer keeps up to this much room between transactions; a big transaction's excess is
/// given back at the next one's first change (never in a callback).
const KEEP_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Pending {
    /// Entries in the ring's own form, so that the commit is one copy.
    bytes: Vec<u8>,
    /// Per entry: the subtransaction that made it and where it starts in `bytes`.
    marks: Vec<(pg_sys::SubTransactionId, usize)>,
    /// More than a ring holds: dropped at once, to be counted (and resynced) at commit.
    overflowed: bool,
    dropped: u64,
    /// What PRE_COMMIT did, for the COMMIT or ABORT callback to settle.
    handed: Handed,
}

/// What PRE_COMMIT did with a transaction's changes.
#[derive(Default, Clone, Copy)]
enum Handed {
    #[default]
    Nothing,
    /// Appended to this ring: its worker is woken once the transaction ends.
    Appended(&'static Slot),
    /// Dropped for want of room: counted, and a resync asked for, once the transaction committed.
    Overflowed(&'static Slot, u64),
    /// Every ring served other databases.
    Unslotted,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.marks.is_empty() && !self.overflowed
    }

    /// Forgets the kept changes; keeps the memory (this runs in callbacks).
    fn clear(&mut self) {
        self.bytes.clear();
        self.marks.clear();
        self.overflowed = false;
        self.dropped = 0;
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
    /// Set in the batch worker, whose own transactions (NOTIFYs) are never buffered.
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this process as a batch worker.
pub fn mark_worker() {
    IS_WORKER.with(|w| w.set(true));
}

/// Keeps one change for this transaction's commit. False when batched delivery cannot take it
/// (the server lacks the preload, or every ring is taken by other databases): the caller then
/// NOTIFYs as per-transaction delivery does. Runs in the trigger, where errors are fine.
pub fn keep(channel: &str, payload: &str) -> bool {
    let Some(capacity) = ring::capacity() else {
        return false;
    };
    // SAFETY: MyDatabaseId is set in every backend that runs a trigger.
    let database = unsafe { pg_sys::MyDatabaseId };
    // Taking the ring now, in the trigger, means PRE_COMMIT normally finds it.
    if ring::claim(database).is_none() {
        warn_no_ring();
        return false;
    }
    let size = entry::size(channel, payload);
    // SAFETY: a trigger always runs inside a transaction.
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.marks.is_empty() && !p.overflowed && p.bytes.capacity() > KEEP_BYTES {
            p.bytes.shrink_to(KEEP_BYTES);
        }
        if p.overflowed || p.bytes.len() + size > capacity {
            // The whole transaction could never fit in the ring: drop it now rather than hold it.
            p.overflowed = true;
            p.dropped += 1 + p.marks.len() as u64;
            p.bytes.clear();
            p.marks.clear();
            return;
        }
        let at = p.bytes.len();
        p.marks.push((subid, at));
        entry::write(&mut p.bytes, channel, payload);
    });
    true
}

fn warn_no_ring() {
    thread_local! {
        static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        warning!(
            "threadcast: every batch worker serves another database, so this database announces \
             its changes per transaction; raise threadcast.batch_workers (and restart) to batch them"
        );
    }
}

/// Registers the transaction callbacks (once per process, from `_PG_init`).
pub fn register_callbacks() {
    // SAFETY: plain functions registered once; they live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_PREPARE => refuse_prepare(),
        XACT_EVENT_PRE_COMMIT => hand_over(),
        XACT_EVENT_COMMIT => settle(true),
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => settle(false),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    // Subtransactions nest, and their ids grow: the entries of the one rolled back and of its
    // children are exactly those from the first one at or above its id.
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if let Some(i) = p.marks.iter().position(|(s, _)| *s >= subid) {
                let at = p.marks[i].1;
                p.marks.truncate(i);
                p.bytes.truncate(at);
            }
        }
    });
}

/// Like NOTIFY, a transaction that announced changes cannot be prepared: its announcements
/// would have to outlive the session that made them.
fn refuse_prepare() {
    let pending = PENDING.with(|p| p.try_borrow().map(|p| !p.is_empty()).unwrap_or(false));
    if pending {
        crate::report::raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "threadcast: cannot PREPARE a transaction that changed a table with batched delivery",
            "Commit it instead; like NOTIFY, its announcements cannot wait for COMMIT PREPARED.",
        );
    }
}

/// PRE_COMMIT: appends the transaction's changes to its database's ring, as one record tagged
/// with its transaction id. Allocates nothing and never waits for room.
fn hand_over() {
    if IS_WORKER.try_with(|w| w.get()).unwrap_or(true) {
        return;
    }
    let _ = PENDING.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.is_empty() {
            return;
        }
        // SAFETY: MyDatabaseId is set in every backend that commits; a transaction that changed
        // a table has its id already (GetTopTransactionId only reads it then).
        let (database, xid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetTopTransactionId()) };
        let events = p.marks.len() as u64;
        // A ring given up by its idle worker between the lookup and the lock is taken again,
        // once; a second miss (every ring taken meanwhile) is counted at commit, and the
        // broadcaster's anti-entropy sweep reads the changes.
        let mut handed = Handed::Unslotted;
        for _ in 0..2 {
            let Some(slot) = ring::claim(database) else {
                break;
            };
            if p.overflowed {
                handed = Handed::Overflowed(slot, events + p.dropped);
                break;
            }
            match slot.append(database, xid, &p.bytes, events) {
                Appended::Done => handed = Handed::Appended(slot),
                Appended::Overflow => handed = Handed::Overflowed(slot, events),
                Appended::Moved => continue,
            }
            break;
        }
        p.handed = handed;
        p.clear();
    });
}

/// COMMIT (`committed`) or ABORT: settles what PRE_COMMIT did, and forgets the transaction. No
/// allocation, no error, no panic, no wait.
fn settle(committed: bool) {
    let _ = PENDING.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        match std::mem::take(&mut p.handed) {
            Handed::Nothing => {}
            // Committed or aborted, the worker may be waiting on the record's outcome.
            Handed::Appended(slot) => slot.wake_worker(),
            Handed::Overflowed(slot, events) if committed => slot.overflow(events),
            Handed::Unslotted if committed => ring::count_unslotted(),
            Handed::Overflowed(..) | Handed::Unslotted => {}
        }
        p.clear();
    });
}

/// The changes this transaction keeps for its commit (for the `#[pg_test]`s, which never commit).
#[cfg(any(test, feature = "pg_test"))]
pub fn kept() -> Vec<(String, String)> {
    PENDING.with(|p| {
        entry::read(&p.borrow().bytes)
            .map(|(c, t)| (c.to_owned(), t.to_owned()))
            .collect()
    })
}
