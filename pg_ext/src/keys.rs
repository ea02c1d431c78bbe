//! The keys that sign notifications: the backend's cached signing key, and
//! `threadcast.rotate_key()`.
//!
//! The trigger must not pay a query per row, nor per transaction, for its key: the key is read
//! once through the privileged `threadcast.signing_key()` and kept until `rotate_key()` commits
//! (it sends a relcache invalidation for `threadcast.keys`, which every backend receives) or a
//! minute has passed (a key changed by hand is picked up too).

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use pgrx::{direct_function_call, pg_sys};
use threadcast_payload::{Key, KEY_BYTES};

use crate::privileged::Helpers;
use crate::report::raise;

/// How long a backend keeps a key it read, at most.
const KEY_TTL_MICROS: i64 = 60_000_000;

struct Cached {
    key: Key,
    read_at: pg_sys::TimestampTz,
}

thread_local! {
    static CURRENT: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static KEYS_RELID: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    /// Set by the invalidation callback (which may run while the key is being read); the next
    /// use reads the key again.
    static STALE: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the cached key when `threadcast.keys` is invalidated (registered in `_PG_init`).
pub(crate) unsafe extern "C-unwind" fn forget_key(_: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || KEYS_RELID.with(Cell::get) == Some(relid) {
        STALE.with(|stale| stale.set(true));
    }
}

fn keys_relid() -> Option<pg_sys::Oid> {
    // SAFETY: to_regclass takes one text datum and returns NULL for a missing relation.
    unsafe {
        direct_function_call::<pg_sys::Oid>(pg_sys::to_regclass, &["threadcast.keys".into_datum()])
    }
}

/// The key to sign this change with.
pub fn signing_key() -> Key {
    // SAFETY: reading the transaction's start time has no preconditions inside a transaction.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    CURRENT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if STALE.with(|stale| stale.replace(false)) {
            *cell = None;
        }
        match &*cell {
            Some(c) if now - c.read_at < KEY_TTL_MICROS => c.key.clone(),
            _ => {
                let key = read_key();
                KEYS_RELID.with(|k| k.set(keys_relid()));
                *cell = Some(Cached {
                    key: key.clone(),
                    read_at: now,
                });
                key
            }
        }
    })
}

fn read_key() -> Key {
    let packed = Helpers::signing_key().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "threadcast: there is no signing key, so changes cannot be announced",
            "Run SELECT threadcast.rotate_key(); as the extension's owner.",
        )
    });
    let (id, secret) = packed.split_at(4.min(packed.len()));
    let id = <[u8; 4]>::try_from(id).map(u32::from_be_bytes).ok();
    id.and_then(|id| Key::from_row(id, secret))
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                "threadcast: the current signing key is malformed",
                "Run SELECT threadcast.rotate_key(); as the extension's owner.",
            )
        })
}

/// Makes a new signing key the current one. The previous keys keep verifying (a broadcaster may
/// still receive changes they signed) until they have been retired for longer than `keep`;
/// older ones are deleted. Returns the new key's id. Runs as its caller: only a role that may
/// write `threadcast.keys` (the extension's owner, a superuser) can rotate.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn rotate_key(keep: default!(pgrx::datum::Interval, "'1 day'")) -> i32 {
    let mut secret = [0u8; KEY_BYTES];
    // SAFETY: the buffer is KEY_BYTES long, as passed.
    let random = unsafe { pg_sys::pg_strong_random(secret.as_mut_ptr().cast(), KEY_BYTES) };
    if !random {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "threadcast: could not generate a random key",
            "PostgreSQL's strong random source failed; see the server log.",
        );
    }
    let kid = Spi::get_one_with_args::<i32>(
        "INSERT INTO threadcast.keys (secret) VALUES ($1) RETURNING kid",
        &[secret.as_slice().into()],
    )
    .unwrap_or_else(|e| crate::report::internal("cannot store a new key", e))
    .expect("INSERT ... RETURNING returns the key id");
    Spi::run_with_args(
        "UPDATE threadcast.keys SET retired_at = pg_catalog.now() \
          WHERE kid OPERATOR(pg_catalog.<>) $1 AND retired_at IS NULL",
        &[kid.into()],
    )
    .and_then(|()| {
        Spi::run_with_args(
            "DELETE FROM threadcast.keys \
              WHERE retired_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)",
            &[keep.into()],
        )
    })
    .unwrap_or_else(|e| crate::report::internal("cannot retire the previous keys", e));
    if let Some(relid) = keys_relid() {
        // Every backend drops its cached key once this commits.
        // SAFETY: relid is the oid of an existing relation.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
    kid
}
