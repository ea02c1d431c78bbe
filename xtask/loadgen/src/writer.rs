//! Writers: connections that insert (and delete) replies and note, on the same monotonic clock as
//! the streams, the moment each COMMIT returned. They run on an OS thread of their own so that a
//! burst of stream reads never delays that moment.

use std::future::Future;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

/// What a reply says: about as long as people write in a feedback thread.
const CONTENT: &str =
    "A reply of ordinary length, about as long as people write in a feedback thread.";

/// Connects and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates the `feedback` rows of `threads` (replies reference them).
pub async fn create_threads(url: &str, threads: &[Uuid]) -> Result<()> {
    let client = connect(url).await?;
    client
        .execute(
            "INSERT INTO feedback (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
            &[&threads],
        )
        .await
        .context("create the threads")?;
    Ok(())
}

/// One writing connection.
pub struct Writer {
    client: Client,
    insert: Statement,
    delete: Statement,
}

impl Writer {
    pub async fn connect(url: &str) -> Result<Writer> {
        let client = connect(url).await?;
        let insert = client
            .prepare(
                "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) \
                 VALUES ($1, 'agency', 'loadgen', $2) RETURNING thread_seq",
            )
            .await?;
        let delete = client
            .prepare(
                "DELETE FROM feedback_replies WHERE id = (SELECT id FROM feedback_replies \
                 WHERE feedback_id = $1 ORDER BY thread_seq LIMIT 1)",
            )
            .await?;
        Ok(Writer {
            client,
            insert,
            delete,
        })
    }

    /// Inserts a reply in its own transaction; returns its seq and when the commit returned.
    pub async fn insert(&self, thread: Uuid) -> Result<(i64, Instant)> {
        let row = self
            .client
            .query_one(&self.insert, &[&thread, &CONTENT])
            .await
            .context("insert a reply")?;
        let committed = Instant::now();
        Ok((row.get(0), committed))
    }

    /// Deletes the oldest reply of `thread`, if it has one.
    pub async fn delete_oldest(&self, thread: Uuid) -> Result<u64> {
        self.client
            .execute(&self.delete, &[&thread])
            .await
            .context("delete a reply")
    }
}

/// Runs `work` on a current-thread runtime on an OS thread of its own; the result comes back
/// through the returned handle.
pub fn on_own_thread<F, Fut, T>(work: F) -> tokio::task::JoinHandle<Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the writers");
        let _ = tx.send(runtime.block_on(work()));
    });
    tokio::spawn(async move {
        rx.await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the writer thread panicked")))
    })
}
