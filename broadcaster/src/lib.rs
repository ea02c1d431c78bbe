//! threadcast's broadcaster: turns the `threadcast` extension's notifications into per-thread
//! Server-Sent Event streams.
//!
//! [`run`] serves on a listener the caller bound until the shutdown token fires; [`app`] is the
//! router, for callers (and tests) that serve it themselves. The library never binds a port or
//! reads the environment: `main.rs` does.
//!
//! The database is behind [`store::Store`]: [`Broadcaster::start`] builds the state on
//! PostgreSQL, and [`AppState::new`] builds it on any store, such as the in-memory
//! [`store::MemStore`] with which the whole HTTP API is tested without a database.

pub mod auth;
pub mod caps;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod demo;
pub mod error;
mod fast_path;
mod listener;
pub mod metrics;
pub mod ops;
pub mod rate;
pub mod replies;
mod serve;
pub mod source;
pub mod sse;
mod stall;
pub mod store;
pub mod stream;
pub mod tls;
pub mod widget;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use crate::config::Config;
pub use crate::error::ApiError;
pub use threadcast_payload::APPLICATION_NAME;

use crate::auth::{Keys, MIN_SECRET_BYTES};
use crate::caps::StreamCaps;
use crate::dashboard::{Dashboard, DashboardSettings, PgProjects, Projects, StartProjectsError};
use crate::delivery::{Delivery, Settings};
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::ops::Readiness;
use crate::replies::Replies;
use crate::source::{Source, SourceError};
use crate::store::{PgStore, Store};

/// Everything a handler may need; cheap to clone (every field is shared).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The served table: catch-up, history, posted replies.
    pub store: Arc<dyn Store>,
    /// The table served, as `threadcast.sources` described it at start (the listener follows
    /// later changes of its registration).
    pub source: Arc<Source>,
    /// Exactly-once delivery of the table's changes to streams.
    pub delivery: Delivery,
    pub keys: Arc<Keys>,
    pub metrics: Metrics,
    /// Limits and the rate limiter of `POST /api/widget/replies`.
    pub replies: Arc<Replies>,
    /// The dashboard streams (`/api/dashboard/stream`) and thread membership in projects.
    pub dashboard: Arc<Dashboard>,
    /// Fires on shutdown; long-lived responses end on it.
    pub shutdown: CancellationToken,
    /// What `/readyz` says.
    pub readiness: Arc<Readiness>,
    streams: Arc<Semaphore>,
    /// Open streams per token subject and per thread.
    caps: Arc<StreamCaps>,
}

impl AppState {
    /// The state for serving `source` through `store`. Nothing is started and nothing listens:
    /// notifications reach streams through `delivery` ([`Delivery::notify`]), and `/readyz` says
    /// ready once [`AppState::set_ready`] says so. Thread tasks run on `tasks`; everything long
    /// lived ends on `shutdown`.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        source: Arc<Source>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let metrics = Metrics::new();
        let delivery = Delivery::new(
            store.clone(),
            &source,
            Settings {
                subscriber_buffer: config.subscriber_buffer,
                max_backoff: config.max_backoff,
                page_bytes: config.page_bytes,
                ..Settings::default()
            },
            metrics.clone(),
            shutdown.clone(),
            tasks,
        );
        let dashboard = Arc::new(Dashboard::new(
            None,
            config.membership_ttl,
            DashboardSettings {
                max_threads: config.dashboard_max_threads,
            },
        ));
        AppState {
            dashboard,
            streams: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            keys: Arc::new(Keys::pinned(&config.jwt_secret.0, config.jwt_pins.clone())),
            caps: Arc::new(StreamCaps::new(
                config.max_streams_per_subject,
                config.max_streams_per_thread,
            )),
            replies: Arc::new(Replies::new(&config)),
            config: Arc::new(config),
            store,
            source,
            delivery,
            metrics,
            shutdown,
            readiness: Arc::new(Readiness::default()),
        }
    }

    /// The same state, with project-scoped dashboard tokens checked against `projects` (how
    /// threads belong to projects).
    pub fn with_projects(mut self, projects: Arc<dyn Projects>) -> Self {
        self.dashboard = Arc::new(Dashboard::new(
            Some(projects),
            self.config.membership_ttl,
            self.dashboard.settings.clone(),
        ));
        self
    }

    /// Tells `/readyz` whether notifications are being received (the LISTEN connection is up).
    pub fn set_ready(&self, ready: bool) {
        match ready {
            true => self.readiness.ready(),
            false => self.readiness.not_ready(ops::RECONNECTING),
        }
    }
}

/// Why the broadcaster could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DatabaseUrl(#[from] tls::DatabaseConfigError),
    #[error("cannot create the database pool: {0}")]
    Pool(String),
    #[error("cannot connect to the database")]
    Connect(#[source] deadpool_postgres::PoolError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot serve dashboards: {0}")]
    Projects(#[from] StartProjectsError),
    #[error("allowed origin {0:?} is not a valid origin")]
    Origin(String),
    #[error("the JWT secret is {0} bytes long; it must be at least {MIN_SECRET_BYTES} (make one with `openssl rand -base64 32`)")]
    ShortSecret(usize),
    #[error("serving failed")]
    Serve(#[from] std::io::Error),
}

/// The whole HTTP API over `state`. Features add their routes with `Router::merge`.
pub fn app(state: AppState) -> Router {
    let cors = cors(&state.config.allowed_origins);
    let mut router = Router::new()
        .merge(stream::router())
        .merge(dashboard::router())
        .merge(replies::router(&state.config))
        .merge(widget::router())
        .merge(ops::router());
    if state.config.demo {
        router = router
            .merge(demo::router())
            .merge(dashboard::demo::router());
    }
    router
        // 503s from /readyz during an outage and refused streams are expected answers, not
        // failures to shout about; real internal errors are logged where they happen.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .layer(cors)
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .allow_credentials(true)
}

/// A started broadcaster: connected, its source looked up, its LISTEN task running.
pub struct Broadcaster {
    state: AppState,
    tasks: TaskTracker,
}

impl Broadcaster {
    /// Connects to the database, looks the source up (a missing source is an error here, not
    /// later), and starts listening. Everything stops when `shutdown` fires.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        if config.jwt_secret.0.len() < MIN_SECRET_BYTES {
            return Err(StartError::ShortSecret(config.jwt_secret.0.len()));
        }
        for origin in &config.allowed_origins {
            if HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return Err(StartError::Origin(origin.clone()));
            }
        }
        // TLS (sslmode, sslrootcert, client certificates) applies to the pool and LISTEN alike.
        let tls::DatabaseConfig {
            mut pg,
            connector,
            tls,
        } = tls::database_config(&config.database_url)?;
        tls.log(&pg);
        pg.connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);

        let mut pool_pg = pg.clone();
        pool_pg.application_name(format!("{APPLICATION_NAME}-fetch"));
        let manager = Manager::from_config(
            pool_pg,
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.fetch_pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StartError::Pool(e.to_string()))?;

        let source = {
            let client = pool.get().await.map_err(StartError::Connect)?;
            Arc::new(Source::lookup(&**client, &config.source).await?)
        };
        tracing::info!(source = %source.name, channel = %source.channel, keys_only = source.keys_only, batched = source.batched, "serving source");
        if config.demo {
            tracing::warn!(
                "DEMO MODE IS ON: /demo/token signs a token for any thread to anyone who asks. \
                 Never run --demo (THREADCAST_DEMO) in production."
            );
        }

        let projects = match &config.projects {
            Some(of) => {
                let projects = PgProjects::lookup(pool.clone(), of).await?;
                tracing::info!(table = %of.table, thread_key = %of.thread_key, project = %of.project_column, "dashboard tokens may name projects");
                Some(Arc::new(projects) as Arc<dyn Projects>)
            }
            None => None,
        };
        let tasks = TaskTracker::new();
        let store = Arc::new(PgStore::new(pool, (*source).clone()));
        let mut state = AppState::new(
            config,
            store.clone(),
            source.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        state.delivery.spawn_anti_entropy(state.config.anti_entropy);
        if let Some(projects) = projects {
            state = state.with_projects(projects);
        }
        let mut listen_pg = pg;
        listen_pg.application_name(APPLICATION_NAME);
        tasks.spawn(
            Listener {
                pg: listen_pg,
                tls: connector,
                source: (*source).clone(),
                store,
                delivery: state.delivery.clone(),
                metrics: state.metrics.clone(),
                readiness: state.readiness.clone(),
                source_check: state.config.source_check,
                max_backoff: state.config.max_backoff,
                buffer: state.config.listener_buffer,
                shutdown,
            }
            .run(),
        );
        Ok(Broadcaster { state, tasks })
    }

    /// The shared state, for building routers and for inspection.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves `router` on `listener` until shutdown, then waits for open streams to end and for
    /// the background tasks to stop.
    pub async fn serve(self, listener: TcpListener, router: Router) -> Result<(), StartError> {
        let config = &self.state.config;
        let timeouts = serve::Timeouts {
            write: config.write_timeout,
            dead_peer: config.dead_peer_timeout,
        };
        serve::serve(listener, router, timeouts, self.state.shutdown.clone()).await?;
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts the broadcaster and serves [`app`] on `listener` until `shutdown` fires.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let broadcaster = Broadcaster::start(config, shutdown).await?;
    let router = app(broadcaster.state().clone());
    broadcaster.serve(listener, router).await
}
