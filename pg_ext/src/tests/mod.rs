//! The `#[pg_test]`s, one file per subject. pgrx calls each as `tests.<name>()`, so every file
//! wraps its tests in a `#[pg_schema] mod tests`.

mod bad_input;
mod enable;
mod payload;
mod semantics;
mod seq;
mod support;
