//! The dashboard side: one Server-Sent Events stream carrying the replies of many threads
//! (`GET /api/dashboard/stream`), following a set of threads that changes while it runs, or whole
//! projects, changed by `POST /api/dashboard/stream/{id}`. `docs/dashboard.md` is the protocol.
//!
//! Every followed thread goes through delivery exactly as a widget stream's thread does (a
//! [`Feed`](crate::delivery::Feed) per thread), so each is delivered exactly once and in order;
//! this module adds what is specific to many threads: tokens scoped to projects ([`scope`]), how
//! a thread belongs to a project ([`projects`], read in batches and cached by [`membership`]),
//! the stream that merges the threads ([`connection`]), its wire format ([`wire`]) and the HTTP
//! side ([`http`]).
//!
//! Module graph (no cycles): `mod → {http, connection, membership, projects, scope, wire,
//! metrics}`, `http → {connection, membership, scope, wire}`, `connection → {membership, scope,
//! wire}`, `membership → {projects, scope}`.

mod connection;
pub mod demo;
mod http;
mod membership;
mod metrics;
mod projects;
mod scope;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub use connection::From;
pub use http::router;
pub use membership::{Membership, Refusal, MAX_CACHED};
pub use metrics::DashboardMetrics;
pub use projects::{
    MemProjects, Memberships, PgProjects, Projects, ProjectsError, ProjectsOf, StartProjectsError,
};
pub use scope::{mint_projects, project_key, Authorized, Scope, ScopeClaims, MAX_PROJECTS};

use connection::Change;

/// How dashboard streams are tuned.
#[derive(Clone, Debug)]
pub struct DashboardSettings {
    /// The most threads one stream may follow.
    pub max_threads: usize,
}

/// The dashboard's shared state: the open streams by id, and the membership of threads in
/// projects (None when no project table is configured: then only thread-scoped tokens work).
pub struct Dashboard {
    pub membership: Option<Arc<Membership>>,
    pub settings: DashboardSettings,
    streams: Mutex<HashMap<Arc<str>, Handle>>,
}

/// How a request reaches an open stream.
struct Handle {
    scope: Scope,
    commands: mpsc::Sender<Change>,
    /// How many threads it follows.
    followed: Arc<AtomicUsize>,
}

/// Changes queued for one stream; beyond, a change is refused (429) until the stream has
/// taken them in (a client sends one at a time).
const COMMANDS: usize = 16;

impl Dashboard {
    /// A dashboard whose project-scoped tokens are checked with `projects` (if any), trusted for
    /// `ttl`.
    pub fn new(
        projects: Option<Arc<dyn Projects>>,
        ttl: Duration,
        settings: DashboardSettings,
    ) -> Self {
        Dashboard {
            membership: projects.map(|p| Arc::new(Membership::new(p, ttl))),
            settings,
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Handle>> {
        // Every critical section is one insert, remove or look-up.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stream's id (random: knowing it is what lets a request change the stream, along
    /// with a token of the same scope) and the receiving end of its commands.
    fn register(
        self: &Arc<Self>,
        scope: Scope,
    ) -> (Registration, mpsc::Receiver<Change>, Arc<AtomicUsize>) {
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let (commands, rx) = mpsc::channel(COMMANDS);
        let followed = Arc::new(AtomicUsize::new(0));
        self.streams().insert(
            id.clone(),
            Handle {
                scope,
                commands,
                followed: followed.clone(),
            },
        );
        (
            Registration {
                dashboard: self.clone(),
                id,
            },
            rx,
            followed,
        )
    }

    /// The commands of stream `id` and how many threads it follows, if it is open and its scope
    /// is `scope`.
    fn handle(
        &self,
        id: &str,
        scope: &Scope,
    ) -> Result<(mpsc::Sender<Change>, usize), HandleError> {
        let streams = self.streams();
        let handle = streams.get(id).ok_or(HandleError::Gone)?;
        if handle.scope != *scope {
            return Err(HandleError::OtherScope);
        }
        Ok((
            handle.commands.clone(),
            handle.followed.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    /// Open dashboard streams.
    pub fn open_streams(&self) -> usize {
        self.streams().len()
    }
}

enum HandleError {
    Gone,
    OtherScope,
}

/// A stream's place in the registry, removed when the stream ends.
pub struct Registration {
    dashboard: Arc<Dashboard>,
    id: Arc<str>,
}

impl Registration {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.dashboard.streams().remove(&self.id);
    }
}
