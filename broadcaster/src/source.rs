//! The source table this broadcaster serves: looked up by name in `threadcast.sources` at start,
//! then followed by oid (the listener reads its registration again at every connect, and with
//! every ping), so that a rename, or `enable()` run again with another channel or payload mode,
//! is followed, and a source disabled or dropped is reported by `/readyz`.

use threadcast_payload::PayloadMode;
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
        Source::registration(client, oid)
            .await?
            .ok_or_else(|| SourceError::NotEnabled(table.to_owned()))
    }

    /// The registration of the table with oid `oid` as it is now: its name (which follows a
    /// rename), channel, payload mode and columns; None if the table is gone or no longer
    /// enabled.
    pub async fn registration(
        client: &impl GenericClient,
        oid: u32,
    ) -> Result<Option<Source>, tokio_postgres::Error> {
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
            .await?;
        Ok(row.map(|row| Source {
            oid,
            name: row.get(0),
            channel: row.get(1),
            keys_only: row.get::<_, String>(2) == PayloadMode::Keys.as_str(),
            thread_column: row.get(3),
            id_column: row.get(4),
            batched: row.get::<_, Option<String>>(5).as_deref()
                == Some(threadcast_payload::DeliveryMode::Batched.as_str()),
        }))
    }

    /// What differs between this registration and `now`, for the log; empty if nothing.
    pub fn changes_to(&self, now: &Source) -> Vec<String> {
        let mut changes = Vec::new();
        let mut differs =
            |what: &str, before: &dyn std::fmt::Display, after: &dyn std::fmt::Display| {
                let (before, after) = (before.to_string(), after.to_string());
                if before != after {
                    changes.push(format!("{what} {before} -> {after}"));
                }
            };
        differs("name", &self.name, &now.name);
        differs("channel", &self.channel, &now.channel);
        differs("keys only", &self.keys_only, &now.keys_only);
        differs("thread column", &self.thread_column, &now.thread_column);
        differs("id column", &self.id_column, &now.id_column);
        differs("batched", &self.batched, &now.batched);
        changes
    }
}
