//! The black-box tests: one binary (one link, one shared PostgreSQL cluster for every test that
//! does not need a private one), each concern a module. They need a PostgreSQL 15 with the
//! `threadcast` extension installed (`PG_BIN` names its binaries' folder when it is not Debian's),
//! and the browser tests Debian's Chromium and chromedriver. `cargo xtask test` sets all of that
//! up; `cargo xtask test --quick` runs what needs neither.

mod attacks;
mod batched;
mod browser;
mod dashboard;
mod dashboard_browser;
mod dead_peers;
mod delivery;
mod demo;
mod deploy;
mod deploy_pins;
mod dockerfile_pins;
mod event_source;
mod extension_delivery;
mod faults;
mod flood;
mod forged;
mod hostile_http;
mod hostile_sql;
mod least_privilege;
mod lifecycle;
mod replicas;
mod replies;
mod resume;
mod service;
mod serving;
mod source;
mod tenants;
mod tls;
mod upgrade;
