//! The source table this broadcaster serves: looked up once in `threadcast.sources` at start, to
//! learn its channel and how notifications name it.

use tokio_postgres::GenericClient;

/// A table registered with `threadcast.enable()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The table's oid: queries pass it as `$1::oid::regclass`, which no `search_path` can bend.
    pub oid: u32,
    /// The schema-qualified, quoted name, as the payload's `table` field carries it.
    pub name: String,
    /// The channel the extension NOTIFYs on.
    pub channel: String,
    /// Whether notifications never carry rows (`payload => 'keys'`).
    pub keys_only: bool,
    /// The thread column, quoted for SQL.
    pub thread_column: String,
    /// The primary key column, quoted for SQL.
    pub id_column: String,
    /// Whether a batch worker announces its changes (`delivery => 'batched'`), which may lose
    /// some: the broadcaster then also sweeps its live threads' counters.
    pub batched: bool,
}

/// Why the configured source cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("table {0} does not exist")]
    NoTable(String),
    #[error("table {0} is not enabled for threadcast; run SELECT threadcast.enable('{0}')")]
    NotEnabled(String),
    #[error("cannot read threadcast.sources (is the threadcast extension installed, and may this role read it?)")]
    Query(#[from] tokio_postgres::Error),
}

impl Source {
    /// Looks `table` (for example `public.feedback_replies`) up in `threadcast.sources`.
    pub async fn lookup(client: &impl GenericClient, table: &str) -> Result<Source, SourceError> {
        let row = client
            .query_one("SELECT pg_catalog.to_regclass($1)::oid", &[&table])
            .await?;
        let oid: Option<u32> = row.get(0);
        let oid = oid.ok_or_else(|| SourceError::NoTable(table.to_owned()))?;
        let row = client
            .query_opt(
                "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                        s.channel, s.payload,
                        pg_catalog.quote_ident(s.thread_column), pg_catalog.quote_ident(s.id_column),
                        pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'delivery'
                   FROM threadcast.sources s
                   JOIN pg_catalog.pg_class c ON c.oid = s.source
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE s.source = $1::oid::regclass",
                &[&oid],
            )
            .await?
            .ok_or_else(|| SourceError::NotEnabled(table.to_owned()))?;
        Ok(Source {
            oid,
            name: row.get(0),
            channel: row.get(1),
            keys_only: row.get::<_, String>(2) == "keys",
            thread_column: row.get(3),
            id_column: row.get(4),
            batched: row.get::<_, Option<String>>(5).as_deref()
                == Some(threadcast_payload::DeliveryMode::Batched.as_str()),
        })
    }
}
