//! `threadcast`: a PostgreSQL extension that numbers every change of a reply table per thread and
//! announces it at commit with one compact, signed NOTIFY. See ARCHITECTURE.md for the whole
//! picture and docs/security.md for the privilege model.

use pgrx::pg_sys;
use pgrx::prelude::*;

mod catalog;
mod doctor;
mod enable;
mod keys;
mod owner;
mod privileged;
mod repair;
mod report;
mod text;
mod trigger;

::pgrx::pg_module_magic!(name, version);

// The extension's own tables and SQL functions; everything in Rust below builds on them.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finish.sql", name = "finish", finalize);

/// Runs when a backend loads the library: forget cached helpers and keys when the catalog says
/// they changed (ALTER EXTENSION UPDATE, DROP EXTENSION, threadcast.rotate_key()).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: registering invalidation callbacks is what _PG_init is for; both are plain
    // functions that only reset backend-local caches.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(privileged::forget_helpers),
            pg_sys::Datum::from(0),
        );
        pg_sys::CacheRegisterRelcacheCallback(Some(keys::forget_key), pg_sys::Datum::from(0));
    }
}

// `#[pg_test]`s: they run inside a real PostgreSQL with the extension installed, each in a
// transaction that is rolled back. Delivery over real connections is tested in `tests/`.
#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`: must be visible at the crate root.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
