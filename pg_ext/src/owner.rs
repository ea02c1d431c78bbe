//! Working on a table as its owner, the way PostgreSQL itself runs VACUUM, ANALYZE, CREATE INDEX
//! and REFRESH MATERIALIZED VIEW: `enable()`, `disable()`, `repair()` and `doctor()` may be
//! called by a superuser on a table that a less trusted role owns, and the statements they run
//! there can fire that role's triggers, evaluate its defaults and policies, and call its
//! functions. Those must run with the owner's rights, never the caller's; and as a security
//! restricted operation, so that they cannot change the session (SET ROLE, temporary objects);
//! and any setting they change (a planted `set_config('search_path', ...)`) is rolled back.

use pgrx::pg_sys;

/// Puts the user id, security context and settings back, also when the closure raises an ERROR.
struct Restore {
    user: pg_sys::Oid,
    context: i32,
    guc_level: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: undoes exactly what as_owner set up, innermost first.
        unsafe {
            pg_sys::AtEOXact_GUC(false, self.guc_level);
            pg_sys::SetUserIdAndSecContext(self.user, self.context);
        }
    }
}

/// Runs `work` as `owner`, in a security restricted operation.
pub fn as_owner<R>(owner: pg_sys::Oid, work: impl FnOnce() -> R) -> R {
    let mut restore = Restore {
        user: pg_sys::InvalidOid,
        context: 0,
        guc_level: 0,
    };
    // SAFETY: plain reads and writes of the backend's current user, as fmgr does for SECURITY
    // DEFINER; the guard restores them on every way out.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut restore.user, &mut restore.context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            restore.context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        restore.guc_level = pg_sys::NewGUCNestLevel();
    }
    let result = work();
    drop(restore);
    result
}
