//! `threadcast`: a PostgreSQL extension that numbers every change of a reply table per thread and
//! announces it at commit with one compact, signed NOTIFY. See ARCHITECTURE.md for the whole
//! picture and docs/security.md for the privilege model.

use pgrx::pg_sys;
use pgrx::prelude::*;

mod catalog;
mod doctor;
mod doctor_delivery;
mod enable;
mod keys;
mod owner;
mod pending;
mod privileged;
mod repair;
mod report;
mod ring;
mod text;
mod trigger;
mod worker;

::pgrx::pg_module_magic!(name, version);

// The extension's own tables and SQL functions; everything in Rust below builds on them.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finish.sql", name = "finish", finalize);

/// Runs when a process loads the library: forget cached helpers and keys when the catalog says
/// they changed (ALTER EXTENSION UPDATE, DROP EXTENSION, threadcast.rotate_key()), and follow
/// transactions for batched delivery. Loaded by the postmaster (`shared_preload_libraries`), it
/// also asks for the rings' shared memory and registers the batch workers.
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
    pending::register_callbacks();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        // Only here: settings read at server start cannot be defined once it runs (a backend
        // that loads the library later would die with FATAL). Without the preload there are no
        // rings, and batched delivery is refused by enable() and reported by doctor().
        ring::define_settings();
        attach_rings();
        worker::register();
    }
}

// pg_shmem_init! names every PostgreSQL version pgrx supports in its cfgs; this crate knows pg15.
#[allow(unexpected_cfgs)]
fn attach_rings() {
    use ring::RINGS;
    pgrx::pg_shmem_init!(RINGS = ());
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
        // Batched delivery needs the library loaded when the server starts.
        vec!["shared_preload_libraries='threadcast'"]
    }
}
