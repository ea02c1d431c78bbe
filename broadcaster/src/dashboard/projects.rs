//! How a thread belongs to a project: stated once by the DBA in the broadcaster's configuration
//! ([`ProjectsOf`]: for this product `public.feedback`, keyed by `id` = the thread key, with its
//! `project_id`), and read in batches through [`Projects`], the dashboard's boundary to the
//! database: [`PgProjects`] in PostgreSQL, [`MemProjects`] in memory for tests.
//!
//! The names come from the configuration, so they are checked against the catalog at start and
//! used quoted as PostgreSQL quotes them; values always travel as parameters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// The configured membership: the table whose key is the thread key, and its project column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectsOf {
    /// The threads' table (for example `public.feedback`).
    pub table: String,
    /// Its column that holds the thread key (for example `id`).
    pub thread_key: String,
    /// Its column that names the thread's project (for example `project_id`).
    pub project_column: String,
}

/// `(thread, project)` pairs, each as PostgreSQL's text output.
pub type Memberships = Vec<(String, String)>;

/// Reads which project threads belong to: one query per batch, never one per thread.
pub trait Projects: Send + Sync + 'static {
    /// The project of each of `threads` that exists and has one.
    fn projects_of<'a>(
        &'a self,
        threads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>>;

    /// Every thread of `projects`, with its project.
    fn threads_of<'a>(
        &'a self,
        projects: &'a [String],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>>;
}

/// Why the configured membership cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProjectsError {
    #[error("the project table {0} does not exist")]
    NoTable(String),
    #[error("the project table {table} has no column {column}")]
    NoColumn { table: String, column: String },
    #[error("cannot look the project table up")]
    Query(#[from] tokio_postgres::Error),
}

/// [`Projects`] in PostgreSQL.
pub struct PgProjects {
    pool: Pool,
    projects_sql: String,
    threads_sql: String,
}

impl PgProjects {
    /// Checks `of` against the catalog and prepares its two queries.
    pub async fn lookup(pool: Pool, of: &ProjectsOf) -> Result<Self, StartProjectsError> {
        let client = pool.get().await.map_err(StartProjectsError::Connect)?;
        let table = client
            .query_opt(
                "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), c.oid
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = pg_catalog.to_regclass($1)",
                &[&of.table],
            )
            .await
            .map_err(ProjectsError::Query)?
            .ok_or_else(|| ProjectsError::NoTable(of.table.clone()))?;
        let (name, oid): (String, u32) = (table.get(0), table.get(1));
        let mut columns = Vec::new();
        for column in [&of.thread_key, &of.project_column] {
            let row = client
                .query_opt(
                    "SELECT pg_catalog.quote_ident(attname), pg_catalog.format_type(atttypid, NULL)
                       FROM pg_catalog.pg_attribute
                      WHERE attrelid = $1::oid AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                    &[&oid, column],
                )
                .await
                .map_err(ProjectsError::Query)?
                .ok_or_else(|| ProjectsError::NoColumn {
                    table: of.table.clone(),
                    column: column.clone(),
                })?;
            columns.push((row.get::<_, String>(0), row.get::<_, String>(1)));
        }
        let [(key, key_type), (project, project_type)] = <[_; 2]>::try_from(columns)
            .unwrap_or_else(|_| unreachable!("two columns were looked up"));
        // Parameters are cast to the columns' own types, so that an index on either is used.
        Ok(PgProjects {
            projects_sql: format!(
                "SELECT t.{key}::text, t.{project}::text FROM {name} t \
                  WHERE t.{key} = ANY($1::text[]::{key_type}[]) AND t.{project} IS NOT NULL"
            ),
            threads_sql: format!(
                "SELECT t.{key}::text, t.{project}::text FROM {name} t \
                  WHERE t.{project} = ANY($1::text[]::{project_type}[])"
            ),
            pool,
        })
    }

    async fn query(&self, sql: &str, keys: &[&str]) -> Result<Memberships, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| StoreError::Query(e.into()))?;
        match client.query(&statement, &[&keys]).await {
            Ok(rows) => Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            // A key that is not of the column's type (a project named "acme" in a uuid column)
            // matches nothing.
            Err(e) if e.code() == Some(&SqlState::INVALID_TEXT_REPRESENTATION) => Ok(Vec::new()),
            Err(e) if e.as_db_error().is_none() => Err(StoreError::Unavailable(e.into())),
            Err(e) => Err(StoreError::Query(e.into())),
        }
    }
}

/// Why the dashboard's membership could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum StartProjectsError {
    #[error("cannot connect to the database")]
    Connect(#[source] deadpool_postgres::PoolError),
    #[error(transparent)]
    Projects(#[from] ProjectsError),
}

impl Projects for PgProjects {
    fn projects_of<'a>(
        &'a self,
        threads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>> {
        let keys: Vec<&str> = threads.iter().map(|t| &**t).collect();
        async move { self.query(&self.projects_sql, &keys).await }.boxed()
    }

    fn threads_of<'a>(
        &'a self,
        projects: &'a [String],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>> {
        let keys: Vec<&str> = projects.iter().map(String::as_str).collect();
        async move { self.query(&self.threads_sql, &keys).await }.boxed()
    }
}

/// [`Projects`] in memory, for tests: each thread's project, changeable at will; counts queries.
#[derive(Default)]
pub struct MemProjects {
    projects: Mutex<HashMap<String, String>>,
    queries: std::sync::atomic::AtomicU64,
}

impl MemProjects {
    /// Puts `thread` in `project` (moving it if it was elsewhere).
    pub fn set(&self, thread: &str, project: &str) {
        self.map().insert(thread.to_owned(), project.to_owned());
    }

    /// How many batches were read.
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.projects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, keep: impl Fn(&String, &String) -> bool) -> Result<Memberships, StoreError> {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .map()
            .iter()
            .filter(|(t, p)| keep(t, p))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect())
    }
}

impl Projects for MemProjects {
    fn projects_of<'a>(
        &'a self,
        threads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>> {
        let result = self.read(|t, _| threads.iter().any(|x| **x == **t));
        async move { result }.boxed()
    }

    fn threads_of<'a>(
        &'a self,
        projects: &'a [String],
    ) -> BoxFuture<'a, Result<Memberships, StoreError>> {
        let result = self.read(|_, p| projects.contains(p));
        async move { result }.boxed()
    }
}
