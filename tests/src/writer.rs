//! A writer that keeps writing through database outages, as an application would: a write that
//! fails because the server went away is retried on a new connection until it succeeds.
//!
//! A retried INSERT may have committed the first time (the connection can drop after the commit,
//! before the answer), so a reply can be stored twice; the delivery check counts what the table
//! holds, never what was attempted.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::EVENTUALLY;

/// How long a writer waits before it tries again after a failure.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// One connection's worth of writes, reconnecting as needed.
pub struct Writer {
    url: String,
    client: Option<Client>,
    /// Writes that failed and were retried.
    pub retries: u64,
}

impl Writer {
    /// A writer for the database at `url` (connects on first use).
    pub fn new(url: &str) -> Writer {
        Writer {
            url: url.to_owned(),
            client: None,
            retries: 0,
        }
    }

    /// Inserts one reply into `thread`, retrying until it is stored; panics after [`EVENTUALLY`]
    /// of failures.
    pub async fn insert_reply(&mut self, thread: Uuid, content: &str) {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            match self.try_insert(thread, content).await {
                Ok(()) => return,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "a reply could not be written for {EVENTUALLY:?}: {error}"
                    );
                    self.retries += 1;
                    self.client = None;
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
    }

    async fn try_insert(
        &mut self,
        thread: Uuid,
        content: &str,
    ) -> Result<(), tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        client
            .execute(
                "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
                 VALUES ($1, 'end_user', 'Writer', $2)",
                &[&thread, &content],
            )
            .await?;
        Ok(())
    }
}
