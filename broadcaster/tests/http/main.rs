//! The HTTP API over the in-memory store: the real router (`app`) built on `MemStore`, driven with
//! `tower::ServiceExt::oneshot`, no database and no socket. Each case is a test of its own, and the
//! whole binary runs in well under a second. (Delivery over real PostgreSQL, sockets and browsers
//! is the `threadcast-tests` crate's.)

mod caps;
mod cors;
mod dashboard;
mod demo;
mod ops;
mod replies;
mod stream_auth;
mod support;
mod wire;
