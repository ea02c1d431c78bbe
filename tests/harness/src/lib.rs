//! What the black-box tests (`threadcast-tests`), `cargo xtask` and the load generator share, so
//! that each exists once: [`Cluster`], a throwaway PostgreSQL 15 cluster; [`sse`], the parser of
//! the Server-Sent Events wire format; [`audit`], the exactly-once audit of what a client
//! received against what the table committed; [`SoakArgs`], the soak's flags; [`flood`], the SQL
//! of a flood of notifications; and for the
//! deployment tests and `cargo xtask bench proxy`, [`nginx`] (Debian's nginx running
//! `deploy/nginx/threadcast.conf`), [`pki`] (a CA made on the spot) and [`scratch`] folders.

pub mod audit;
pub mod cluster;
pub mod flood;
pub mod nginx;
pub mod pki;
pub mod scratch;
pub mod soak;
pub mod sse;

pub use cluster::{Cluster, ClusterError};
pub use soak::SoakArgs;
