//! `threadcast`: a PostgreSQL extension that numbers every change of a reply table per thread and
//! announces it at commit with one compact NOTIFY. See ARCHITECTURE.md for the whole picture.

use pgrx::prelude::*;

mod catalog;
mod doctor;
mod enable;
mod report;
mod text;
mod trigger;

::pgrx::pg_module_magic!(name, version);

// The extension's own tables and SQL functions; everything in Rust below builds on them.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finish.sql", name = "finish", finalize);

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
