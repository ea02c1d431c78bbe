//! The broadcaster's configuration: the library's `Config`, and the command-line flags (with
//! environment fallbacks) that `main.rs` turns into one.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{Pins, MIN_SECRET_BYTES};
use crate::dashboard::ProjectsOf;
use crate::rate::{Rate, RateSpec};
use crate::store::PAGE_BYTES;

/// Everything the library needs to serve. Tests build one with [`Config::new`] and adjust fields;
/// the binary builds one from [`ServeArgs`].
#[derive(Clone, Debug)]
pub struct Config {
    /// libpq-style connection string or URL of the database with the `threadcast` extension.
    pub database_url: String,
    /// The HS256 secret that widget tokens are signed with (at least
    /// [`MIN_SECRET_BYTES`](crate::auth::MIN_SECRET_BYTES), or the broadcaster refuses to start).
    pub jwt_secret: Secret,
    /// The issuer and audience every token must name, if any.
    pub jwt_pins: Pins,
    /// The table to serve, as `threadcast.enable()` registered it (`schema.table`).
    pub source: String,
    /// How long a stream may stay silent before a comment line keeps it alive.
    pub heartbeat: Duration,
    /// The reconnection delay a stream suggests to EventSource with its `retry:` field.
    pub retry: Duration,
    /// Origins allowed to read streams across origins (CORS); empty allows none.
    pub allowed_origins: Vec<String>,
    /// Open streams beyond this number are refused with 503.
    pub max_connections: usize,
    /// Open streams of one token subject (its `sub`, or its thread and role) beyond this number
    /// are refused with 429.
    pub max_streams_per_subject: usize,
    /// Open streams of one thread beyond this number are refused with 429.
    pub max_streams_per_thread: usize,
    /// Events one subscriber may have queued before it is disconnected as too slow.
    pub subscriber_buffer: usize,
    /// Connections of the pool used for catch-up, gap repair and omitted rows.
    pub fetch_pool_size: usize,
    /// Bytes of row data one table read (a catch-up page, a repair, a history) may bring; at least
    /// one row is read whatever its size.
    pub page_bytes: usize,
    /// Notifications the listener holds before it drops more (and every live thread reads the
    /// table instead): the bound on what a flood of NOTIFYs can make it hold.
    pub listener_buffer: usize,
    /// The longest wait between two attempts to re-establish the LISTEN connection.
    pub max_backoff: Duration,
    /// How often the LISTEN connection is probed, which also reads the source's registration
    /// again: a changed one (another channel, payload mode, name) is followed within this time,
    /// a disabled one reported by `/readyz`.
    pub source_check: Duration,
    /// How long a write to a client may make no progress before its connection is closed: a
    /// client that stopped reading must not hold its place and its queue forever.
    pub write_timeout: Duration,
    /// How long bytes sent to a client may stay unacknowledged, its receive window closed
    /// included, before the kernel drops the connection (`TCP_USER_TIMEOUT`; keepalive probes
    /// cover connections with nothing to send). With heartbeats, a peer that vanished from a
    /// quiet thread is gone within `heartbeat` plus this.
    pub dead_peer_timeout: Duration,
    /// How long a stream may stay open before the server ends it (None: as long as it likes),
    /// with up to a tenth less at random so that streams opened together do not end together.
    /// EventSource reconnects and resumes exactly; a client that does not read is gone.
    pub max_stream_age: Option<Duration>,
    /// The longest reply `POST /api/widget/replies` accepts, in characters.
    pub max_reply_chars: usize,
    /// How fast one thread's side (its end user, or its agency) may post replies; None: no limit.
    pub reply_rate: Option<Rate>,
    /// Serve the demo page and its token endpoint, which signs tokens for anyone who asks.
    pub demo: bool,
    /// How often the threads with subscribers of a batched source compare their counters with
    /// what they forwarded (the anti-entropy sweep); it bounds how long a lost change can go
    /// unnoticed.
    pub anti_entropy: Duration,
    /// How a thread belongs to a project, for dashboard tokens scoped to projects; None: only
    /// thread-scoped tokens may open dashboard streams.
    pub projects: Option<ProjectsOf>,
    /// How long a thread's project, once read, is trusted; dashboard streams check their
    /// threads again this often.
    pub membership_ttl: Duration,
    /// The most threads one dashboard stream may follow.
    pub dashboard_max_threads: usize,
    /// Where the demo's built dashboard page (`npm run build:demo` in widget/) is, served at
    /// `/demo/dashboard/` in demo mode.
    pub demo_assets: Option<PathBuf>,
}

impl Config {
    /// A configuration with every optional setting at its default.
    pub fn new(database_url: impl Into<String>, jwt_secret: impl Into<Vec<u8>>) -> Self {
        Config {
            database_url: database_url.into(),
            jwt_secret: Secret(jwt_secret.into()),
            jwt_pins: Pins::default(),
            source: DEFAULT_SOURCE.to_owned(),
            heartbeat: Duration::from_secs(DEFAULT_HEARTBEAT_SECS),
            retry: Duration::from_millis(2000),
            allowed_origins: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_subject: DEFAULT_MAX_STREAMS_PER_SUBJECT,
            max_streams_per_thread: DEFAULT_MAX_STREAMS_PER_THREAD,
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
            fetch_pool_size: DEFAULT_FETCH_POOL_SIZE,
            listener_buffer: DEFAULT_LISTENER_BUFFER,
            page_bytes: PAGE_BYTES,
            max_backoff: Duration::from_secs(5),
            source_check: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            dead_peer_timeout: Duration::from_secs(DEFAULT_DEAD_PEER_SECS),
            max_stream_age: Some(Duration::from_secs(DEFAULT_MAX_STREAM_SECS)),
            max_reply_chars: DEFAULT_MAX_REPLY_CHARS,
            reply_rate: Some(Rate::new(DEFAULT_REPLY_PER_SECOND, DEFAULT_REPLY_BURST)),
            demo: false,
            anti_entropy: Duration::from_secs(DEFAULT_ANTI_ENTROPY_SECS),
            projects: None,
            membership_ttl: Duration::from_secs(DEFAULT_MEMBERSHIP_TTL_SECS),
            dashboard_max_threads: DEFAULT_DASHBOARD_MAX_THREADS,
            demo_assets: None,
        }
    }
}

const DEFAULT_SOURCE: &str = "public.feedback_replies";
const DEFAULT_HEARTBEAT_SECS: u64 = 15;
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_DEAD_PEER_SECS: u64 = 20;
const DEFAULT_MAX_STREAM_SECS: u64 = 1800;
const DEFAULT_MAX_STREAMS_PER_SUBJECT: usize = 32;
const DEFAULT_MAX_STREAMS_PER_THREAD: usize = 256;
const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;
const DEFAULT_FETCH_POOL_SIZE: usize = 4;
const DEFAULT_LISTENER_BUFFER: usize = 1024;
const DEFAULT_MAX_REPLY_CHARS: usize = 10_000;
const DEFAULT_REPLY_RATE: &str = "5/s";
const DEFAULT_REPLY_PER_SECOND: f64 = 5.0;
const DEFAULT_REPLY_BURST: u32 = 10;
const DEFAULT_ANTI_ENTROPY_SECS: u64 = 5;
const DEFAULT_MEMBERSHIP_TTL_SECS: u64 = 5;
const DEFAULT_DASHBOARD_MAX_THREADS: usize = 5_000;

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The token secret, given inline or as a file (for secrets mounted by an orchestrator).
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct SecretArgs {
    /// The HS256 secret that widget tokens are signed with.
    #[arg(long, env = "THREADCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 secret (trailing newlines are ignored).
    #[arg(long, env = "THREADCAST_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
}

impl SecretArgs {
    /// Reads the secret, from the file if one was named.
    pub fn resolve(&self) -> Result<Secret, ConfigError> {
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(inline), _) => inline.clone().into_bytes(),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path).map_err(|source| ConfigError::SecretFile {
                    path: path.clone(),
                    source,
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            (None, None) => Vec::new(),
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::ShortSecret(secret.len()));
        }
        Ok(Secret(secret))
    }
}

/// What every token must name besides its thread: `iss` and `aud`, each optional.
#[derive(clap::Args, Debug, Clone)]
pub struct PinArgs {
    /// Tokens must carry this `iss` claim (and `token` writes it).
    #[arg(long, env = "THREADCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Tokens must carry this `aud` claim (and `token` writes it).
    #[arg(long, env = "THREADCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl PinArgs {
    pub fn pins(&self) -> Pins {
        Pins {
            issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
        }
    }
}

/// The flags of `threadcast-broadcaster` (serving), each with an environment fallback.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The database with the threadcast extension (a libpq URL or key=value string).
    // Optional in type only: clap requires it, except under a subcommand such as `token`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, required = true)]
    pub database_url: Option<String>,
    /// The address to listen on.
    #[arg(long, env = "THREADCAST_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub pins: PinArgs,
    /// The table to serve, as registered in threadcast.sources.
    #[arg(long, env = "THREADCAST_SOURCE", default_value = DEFAULT_SOURCE)]
    pub source: String,
    /// Seconds of silence after which a stream sends a comment line to keep proxies from closing it.
    #[arg(long, env = "THREADCAST_HEARTBEAT_SECS", default_value_t = DEFAULT_HEARTBEAT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,
    /// Comma-separated origins allowed to open streams from a browser (CORS); none by default.
    #[arg(long, env = "THREADCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// The most streams open at once; more are refused with 503.
    #[arg(long, env = "THREADCAST_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds that bytes sent to a client may stay unacknowledged before its connection is
    /// dropped (TCP_USER_TIMEOUT): a peer that vanished is gone within the heartbeat plus this.
    #[arg(long, env = "THREADCAST_DEAD_PEER_SECS", default_value_t = DEFAULT_DEAD_PEER_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dead_peer_secs: u64,
    /// Seconds a stream may stay open before the server ends it (EventSource resumes it at
    /// once, exactly; a client that does not read is gone); 0: no limit.
    #[arg(long, env = "THREADCAST_MAX_STREAM_SECS", default_value_t = DEFAULT_MAX_STREAM_SECS)]
    pub max_stream_secs: u64,
    /// The most streams open at once for one token subject (its `sub` claim, or its thread and
    /// role); more are refused with 429.
    #[arg(long, env = "THREADCAST_MAX_STREAMS_PER_SUBJECT", default_value_t = DEFAULT_MAX_STREAMS_PER_SUBJECT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_streams_per_subject: usize,
    /// The most streams open at once on one thread; more are refused with 429.
    #[arg(long, env = "THREADCAST_MAX_STREAMS_PER_THREAD", default_value_t = DEFAULT_MAX_STREAMS_PER_THREAD,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_streams_per_thread: usize,
    /// Events a subscriber may have queued before it is disconnected as too slow (it then resumes).
    #[arg(long, env = "THREADCAST_SUBSCRIBER_BUFFER", default_value_t = DEFAULT_SUBSCRIBER_BUFFER,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub subscriber_buffer: usize,
    /// Connections used to read rows from the table (catch-up, gap repair, large rows).
    #[arg(long, env = "THREADCAST_FETCH_POOL_SIZE", default_value_t = DEFAULT_FETCH_POOL_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub fetch_pool_size: usize,
    /// Bytes of row data one table read (catch-up page, repair, history) may bring per stream or
    /// thread; one row is read whatever its size.
    #[arg(long, env = "THREADCAST_PAGE_BYTES", default_value_t = PAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..))]
    pub page_bytes: usize,
    /// Notifications held before more are dropped (every live thread then reads the table): a
    /// flood of NOTIFYs costs at most this many payloads of memory.
    #[arg(long, env = "THREADCAST_LISTENER_BUFFER", default_value_t = DEFAULT_LISTENER_BUFFER,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub listener_buffer: usize,
    /// The longest reply POST /api/widget/replies accepts, in characters (longer ones get 413).
    #[arg(long, env = "THREADCAST_MAX_REPLY_CHARS", default_value_t = DEFAULT_MAX_REPLY_CHARS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_reply_chars: usize,
    /// How fast one thread's end user, or its agency, may post replies: N/s, N/m, N/h, or off.
    #[arg(long, env = "THREADCAST_REPLY_RATE", default_value = DEFAULT_REPLY_RATE)]
    pub reply_rate: RateSpec,
    /// Replies that may be posted back to back before --reply-rate applies.
    #[arg(long, env = "THREADCAST_REPLY_BURST", default_value_t = DEFAULT_REPLY_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub reply_burst: u32,
    /// Serve the demo page at /demo/ with a token endpoint that signs tokens for anyone: never in
    /// production.
    #[arg(long, env = "THREADCAST_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,
    /// Seconds between two anti-entropy sweeps of a batched source's live threads: the longest a
    /// change whose notification was lost (a ring overflow, a database crash) waits, plus a read.
    #[arg(long, env = "THREADCAST_ANTI_ENTROPY_SECS", default_value_t = DEFAULT_ANTI_ENTROPY_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub anti_entropy_secs: u64,
    /// The demo's built dashboard page (widget/: npm run build:demo), served at /demo/dashboard/.
    #[arg(long, env = "THREADCAST_DEMO_ASSETS")]
    pub demo_assets: Option<PathBuf>,
    /// The table whose key is the thread key and which names each thread's project (for
    /// example public.feedback): dashboard tokens may then be scoped to projects.
    #[arg(long, env = "THREADCAST_PROJECT_TABLE")]
    pub project_table: Option<String>,
    /// The project table's column holding the thread key.
    #[arg(long, env = "THREADCAST_PROJECT_THREAD_KEY", default_value = "id")]
    pub project_thread_key: String,
    /// The project table's column naming the thread's project.
    #[arg(long, env = "THREADCAST_PROJECT_COLUMN", default_value = "project_id")]
    pub project_column: String,
    /// Seconds a thread's project is trusted once read; dashboard streams check again this often.
    #[arg(long, env = "THREADCAST_MEMBERSHIP_TTL_SECS", default_value_t = DEFAULT_MEMBERSHIP_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub membership_ttl_secs: u64,
    /// The most threads one dashboard stream may follow.
    #[arg(long, env = "THREADCAST_DASHBOARD_MAX_THREADS", default_value_t = DEFAULT_DASHBOARD_MAX_THREADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub dashboard_max_threads: usize,
}

impl ServeArgs {
    /// The library configuration these flags describe; reads the secret file if one was given.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let database_url = self.database_url.ok_or(ConfigError::MissingDatabaseUrl)?;
        let mut config = Config::new(database_url, self.secret.resolve()?.0);
        config.jwt_pins = self.pins.pins();
        config.source = self.source;
        config.heartbeat = Duration::from_secs(self.heartbeat_secs);
        config.allowed_origins = self
            .allowed_origins
            .into_iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        config.max_connections = self.max_connections;
        config.dead_peer_timeout = Duration::from_secs(self.dead_peer_secs);
        config.max_stream_age =
            (self.max_stream_secs > 0).then(|| Duration::from_secs(self.max_stream_secs));
        config.max_streams_per_subject = self.max_streams_per_subject;
        config.max_streams_per_thread = self.max_streams_per_thread;
        config.subscriber_buffer = self.subscriber_buffer;
        config.fetch_pool_size = self.fetch_pool_size;
        config.listener_buffer = self.listener_buffer;
        config.page_bytes = self.page_bytes;
        config.max_reply_chars = self.max_reply_chars;
        config.reply_rate = match self.reply_rate {
            RateSpec::Off => None,
            RateSpec::PerSecond(n) => Some(Rate::new(n, self.reply_burst)),
        };
        config.demo = self.demo;
        config.anti_entropy = Duration::from_secs(self.anti_entropy_secs);
        config.demo_assets = self.demo_assets;
        config.projects = self.project_table.map(|table| ProjectsOf {
            table,
            thread_key: self.project_thread_key,
            project_column: self.project_column,
        });
        config.membership_ttl = Duration::from_secs(self.membership_ttl_secs);
        config.dashboard_max_threads = self.dashboard_max_threads;
        Ok(config)
    }
}

/// Why the flags do not make a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the JWT secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the JWT secret is {0} bytes long; it must be at least {MIN_SECRET_BYTES} (make one with `openssl rand -base64 32`)")]
    ShortSecret(usize),
    #[error("DATABASE_URL is required")]
    MissingDatabaseUrl,
}
