//! The privileged helpers, and how the rest of the extension calls them.
//!
//! Everything else in threadcast runs as its caller: the triggers render rows and call type output
//! functions as the role that wrote the row, and enable/disable/doctor work on a table as its
//! owner. Only these helpers run as the extension's owner (SECURITY DEFINER, search_path pinned),
//! and they read and write nothing but threadcast's own tables, taking every value as a
//! parameter. EXECUTE on them is revoked from PUBLIC (`sql/finish.sql`); this module calls them
//! through fmgr, which applies SECURITY DEFINER and SET search_path but does not check EXECUTE,
//! so no SQL statement of any other role can reach them.
//!
//! `next_seq` and `record_tombstone` are on the trigger's hot path and are Rust with plans kept
//! for the backend's life; the colder helpers are SQL in `sql/bootstrap.sql`.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{direct_function_call, pg_sys};

use crate::report::internal;

// The common case, a thread that has a counter, is a plain UPDATE: cheaper than the speculative
// insertion of INSERT ... ON CONFLICT, which only the first change of a thread needs.
const BUMP_SQL: &str =
    "UPDATE threadcast.counters AS c SET last_seq = c.last_seq OPERATOR(pg_catalog.+) 1 \
     WHERE c.source OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass \
       AND c.thread OPERATOR(pg_catalog.=) $2 \
     RETURNING c.last_seq";

const FIRST_SQL: &str = "INSERT INTO threadcast.counters AS c (source, thread, last_seq) \
     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, 1) \
     ON CONFLICT (source, thread) DO UPDATE SET last_seq = c.last_seq OPERATOR(pg_catalog.+) 1 \
     RETURNING c.last_seq";

const TOMBSTONE_SQL: &str = "INSERT INTO threadcast.tombstones (source, thread, seq, id) \
     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4) RETURNING seq";

thread_local! {
    // Plans kept for the life of the backend: planning per row would cost more than the insert.
    static BUMP: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static FIRST: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TOMBSTONE: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Runs a kept plan, preparing it on first use in this backend.
pub(crate) fn run_kept<T: pgrx::FromDatum + IntoDatum>(
    slot: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
    sql: &str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    Spi::connect_mut(|client| {
        slot.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(client.prepare_mut(sql, types)?.keep());
            }
            let plan = cell.as_ref().expect("plan was just prepared");
            let table = client.update(plan, Some(1), args)?;
            if table.is_empty() {
                return Ok(None);
            }
            table.first().get_one::<T>()
        })
    })
    .unwrap_or_else(|e: pgrx::spi::Error| internal("a counter query failed", e))
}

const OID_TEXT: [PgOid; 2] = [
    PgOid::BuiltIn(PgBuiltInOids::OIDOID),
    PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
];

/// Hands out the next number of `thread` in source `src`, locking its counter row until commit.
/// Privileged helper: called only through [`Helpers::next_seq`].
#[pg_extern(security_definer, volatile, parallel_unsafe, strict)]
#[search_path(pg_catalog, pg_temp)]
fn next_seq(src: pg_sys::Oid, thread: &str) -> i64 {
    bump(src, thread)
}

/// The counter bump itself, shared with the legacy path (whose trigger is the definer).
pub(crate) fn bump(src: pg_sys::Oid, thread: &str) -> i64 {
    run_kept::<i64>(&BUMP, BUMP_SQL, &OID_TEXT, &[src.into(), thread.into()]).unwrap_or_else(|| {
        // The thread's first change; ON CONFLICT settles a race with another first writer.
        run_kept::<i64>(&FIRST, FIRST_SQL, &OID_TEXT, &[src.into(), thread.into()])
            .expect("an upsert with RETURNING returns one row")
    })
}

/// Keeps a delete's number, so that a client resuming from the table learns of it.
/// Privileged helper: called only through [`Helpers::record_tombstone`].
#[pg_extern(security_definer, volatile, parallel_unsafe, strict)]
#[search_path(pg_catalog, pg_temp)]
fn record_tombstone(src: pg_sys::Oid, thread: &str, seq: i64, id: &str) {
    tombstone(src, thread, seq, id);
}

/// The tombstone insert itself, shared with the legacy path.
pub(crate) fn tombstone(src: pg_sys::Oid, thread: &str, seq: i64, id: &str) {
    run_kept::<i64>(
        &TOMBSTONE,
        TOMBSTONE_SQL,
        &[
            PgOid::BuiltIn(PgBuiltInOids::OIDOID),
            PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            PgOid::BuiltIn(PgBuiltInOids::INT8OID),
            PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
        ],
        &[src.into(), thread.into(), seq.into(), id.into()],
    );
}

/// A helper resolved once and called through fmgr. The `FmgrInfo` lives in `TopMemoryContext`
/// until a change to `pg_proc` (ALTER EXTENSION UPDATE, DROP EXTENSION) makes us look again.
struct Callable {
    info: Box<pg_sys::FmgrInfo>,
}

impl Callable {
    fn resolve(signature: &str) -> Option<Callable> {
        // SAFETY: to_regprocedure takes one text datum and returns NULL when there is no such
        // function, which direct_function_call turns into None.
        let oid = unsafe {
            direct_function_call::<pg_sys::Oid>(pg_sys::to_regprocedure, &[signature.into_datum()])
        }?;
        let mut info = Box::new(pg_sys::FmgrInfo::default());
        // SAFETY: the FmgrInfo outlives every call; what fmgr caches for it goes into
        // TopMemoryContext, which lives as long as the backend.
        unsafe { pg_sys::fmgr_info_cxt(oid, info.as_mut(), pg_sys::TopMemoryContext) };
        Some(Callable { info })
    }

    /// Calls the function with non-NULL arguments; `None` when it returns NULL.
    fn call(&mut self, args: &[pg_sys::Datum]) -> Option<pg_sys::Datum> {
        let nargs = args.len();
        // SAFETY: the call info is sized for `nargs` arguments, every one set and non-NULL, as
        // the helpers (all STRICT or argument-less) expect; fn_addr was set by fmgr_info_cxt.
        unsafe {
            let fcinfo = pg_sys::palloc0(
                std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                    + std::mem::size_of::<pg_sys::NullableDatum>() * nargs,
            ) as *mut pg_sys::FunctionCallInfoBaseData;
            let call = &mut *fcinfo;
            call.flinfo = self.info.as_mut();
            call.fncollation = pg_sys::InvalidOid;
            call.nargs = nargs as _;
            for (slot, value) in call.args.as_mut_slice(nargs).iter_mut().zip(args) {
                slot.value = *value;
                slot.isnull = false;
            }
            let func = self.info.fn_addr.expect("fmgr_info sets fn_addr");
            let result = pg_sys::ffi::pg_guard_ffi_boundary(|| func(fcinfo));
            let isnull = call.isnull;
            pg_sys::pfree(fcinfo.cast());
            (!isnull).then_some(result)
        }
    }
}

/// The hot-path helpers of this backend, or `None` while the extension's SQL objects are those of
/// 0.1.0 (the library was upgraded, `ALTER EXTENSION threadcast UPDATE` not yet run).
struct Resolved {
    next_seq: Callable,
    record_tombstone: Callable,
    signing_key: Callable,
}

thread_local! {
    static RESOLVED: RefCell<Option<Option<Resolved>>> = const { RefCell::new(None) };
    /// Set by the invalidation callback, which may run in the middle of a helper's call (while
    /// `RESOLVED` is borrowed); the next use drops the resolved helpers.
    static STALE: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the resolved helpers when `pg_proc` changes (registered in `_PG_init`).
pub(crate) unsafe extern "C-unwind" fn forget_helpers(_: pg_sys::Datum, _: i32, _: u32) {
    STALE.with(|stale| stale.set(true));
}

fn with_resolved<T>(f: impl FnOnce(Option<&mut Resolved>) -> T) -> T {
    RESOLVED.with(|cell| {
        let mut cell = cell.borrow_mut();
        if STALE.with(|stale| stale.replace(false)) {
            *cell = None;
        }
        let resolved = cell.get_or_insert_with(|| {
            Some(Resolved {
                next_seq: Callable::resolve("threadcast.next_seq(pg_catalog.oid, text)")?,
                record_tombstone: Callable::resolve(
                    "threadcast.record_tombstone(pg_catalog.oid, text, bigint, text)",
                )?,
                signing_key: Callable::resolve("threadcast.signing_key()")?,
            })
        });
        f(resolved.as_mut())
    })
}

/// Whether this database still has 0.1.0's SQL objects under this library.
pub fn legacy() -> bool {
    with_resolved(|r| r.is_none())
}

/// The helpers as the triggers use them.
pub struct Helpers;

impl Helpers {
    /// The next number of `thread`, from the privileged helper.
    pub fn next_seq(src: pg_sys::Oid, thread: &str) -> i64 {
        let (src_datum, thread_datum) = (src.into_datum(), thread.into_datum());
        let datum = with_resolved(|r| {
            let r = r.expect("callers check legacy() first");
            r.next_seq
                .call(&[src_datum.unwrap(), thread_datum.unwrap()])
        });
        // SAFETY: next_seq returns a non-NULL bigint.
        datum
            .and_then(|d| unsafe { i64::from_datum(d, false) })
            .expect("next_seq returns a number")
    }

    pub fn record_tombstone(src: pg_sys::Oid, thread: &str, seq: i64, id: &str) {
        let args = [
            src.into_datum().unwrap(),
            thread.into_datum().unwrap(),
            seq.into_datum().unwrap(),
            id.into_datum().unwrap(),
        ];
        with_resolved(|r| {
            r.expect("callers check legacy() first")
                .record_tombstone
                .call(&args)
        });
    }

    /// The current signing key as `threadcast.signing_key()` packs it, `None` when there is none.
    pub fn signing_key() -> Option<Vec<u8>> {
        let datum = with_resolved(|r| {
            r.expect("callers check legacy() first")
                .signing_key
                .call(&[])
        })?;
        // SAFETY: signing_key returns bytea.
        unsafe { Vec::<u8>::from_datum(datum, false) }
    }
}

/// Calls one of the cold helpers of `sql/bootstrap.sql` by name (fmgr: EXECUTE is not checked,
/// SECURITY DEFINER and SET search_path are applied).
pub fn call<R: FromDatum + IntoDatum>(
    name: &str,
    args: &[&dyn pgrx::fn_call::FnCallArg],
) -> Option<R> {
    pgrx::fn_call::fn_call::<R>(&format!("threadcast.{name}"), args).unwrap_or_else(|e| {
        internal(
            &format!("cannot call threadcast.{name}() (is the extension up to date? run ALTER EXTENSION threadcast UPDATE)"),
            e,
        )
    })
}
