//! The one LISTEN connection: receives the extension's notifications and hands them to delivery;
//! when it drops, reconnects with capped exponential backoff (with jitter), LISTENs again and has
//! every live thread read what committed in between.
//!
//! Any role that can connect may NOTIFY, so the connection is read as fast as it delivers, into a
//! bounded buffer ([`Config::listener_buffer`](crate::Config::listener_buffer) notifications): a
//! notification that finds it full is dropped and counted, and once the buffer has room again
//! every live thread reads the table, which holds whatever the dropped ones said. A flood costs
//! CPU, never memory, and the server's notification queue never fills because of us.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBackoff;
use futures::future::poll_fn;
use governor::{Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Notification};
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, Delivery};
use crate::metrics::Metrics;
use crate::ops::Readiness;
use crate::source::Source;
use crate::store::PgStore;

/// How long a probe of the LISTEN connection may take.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Owns the LISTEN connection for the life of the broadcaster.
pub(crate) struct Listener {
    pub pg: tokio_postgres::Config,
    pub tls: crate::tls::Connector,
    /// The source's registration as last read; followed by oid.
    pub source: Source,
    /// The store, whose statements name the source.
    pub store: Arc<PgStore>,
    pub delivery: Delivery,
    pub metrics: Metrics,
    /// What `/readyz` says: ready while LISTEN is in force on the source's registration.
    pub readiness: Arc<Readiness>,
    pub max_backoff: Duration,
    /// Notifications received but not yet taken, at most; more are dropped (and every live
    /// thread reads the table).
    pub buffer: usize,
    /// How often the idle connection is probed (so that a silent network cut is noticed), and
    /// the source's registration read again.
    pub source_check: Duration,
    pub shutdown: CancellationToken,
}

/// Why a LISTEN session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{}", crate::error::chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server did not answer a ping within {PING_TIMEOUT:?}")]
    PingTimeout,
    #[error("cannot read the signing keys (has this role been granted them? SELECT threadcast.grant_listen('<role>')): {}", crate::error::chain(.0))]
    Keys(#[source] crate::store::StoreError),
    #[error("the served table {name} (oid {oid}) is no longer a threadcast source (dropped, or threadcast.disable() was run); run SELECT threadcast.enable('{name}')")]
    SourceGone { name: String, oid: u32 },
    #[error("the registration of {0} changed in threadcast.sources; listening again")]
    SourceChanged(String),
}

impl Listener {
    /// Listens until shutdown, reconnecting whenever the connection drops.
    pub async fn run(mut self) {
        let mut delays = delivery::backoff(self.max_backoff);
        let mut sessions = 0u64;
        while !self.shutdown.is_cancelled() {
            let result = self.session(&mut delays, &mut sessions).await;
            let delay = match &result {
                Ok(()) => return,
                // A changed registration is followed at once.
                Err(SessionEnd::SourceChanged(_)) => Duration::ZERO,
                Err(_) => delays.next().unwrap_or(self.max_backoff),
            };
            let error = result.expect_err("Ok returned above");
            match &error {
                SessionEnd::SourceGone { .. } => {
                    tracing::error!(%error, ?delay, "not serving; checking again")
                }
                _ => tracing::warn!(%error, ?delay, "LISTEN connection lost; reconnecting"),
            }
            self.readiness.not_ready(error.to_string());
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Reads the source's registration by oid. A renamed table is the same source; another
    /// channel, payload mode or columns are adopted (delivery, the store's statements) before
    /// LISTEN, so the session listens where the table announces now.
    async fn follow_registration(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<(), SessionEnd> {
        let Some(now) = Source::registration(client, self.source.oid).await? else {
            return Err(SessionEnd::SourceGone {
                name: self.source.name.clone(),
                oid: self.source.oid,
            });
        };
        let changes = self.source.changes_to(&now);
        if !changes.is_empty() {
            tracing::warn!(
                changes = %changes.join(", "),
                "the served table's registration changed; following it"
            );
            self.delivery.set_source(&now);
            self.store.set_source(&now);
            self.source = now;
        }
        Ok(())
    }

    /// One connection's life: connect, LISTEN, resync, then pass on notifications until the
    /// connection fails (Err) or shutdown (Ok).
    async fn session(
        &mut self,
        delays: &mut ExponentialBackoff,
        sessions: &mut u64,
    ) -> Result<(), SessionEnd> {
        let connect = self.pg.connect(self.tls.clone());
        let (client, mut connection) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            result = connect => result?,
        };
        // The connection object must be polled for queries to complete; notifications come out
        // of the same poll, so one task drives it and forwards them, never waiting for room.
        let (tx, mut rx) = mpsc::channel::<Notification>(self.buffer.max(1));
        let (ended_tx, ended) = oneshot::channel::<tokio_postgres::Error>();
        let overflowed = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn({
            let (overflowed, metrics) = (overflowed.clone(), self.metrics.clone());
            async move {
                while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) => match tx.try_send(n) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics.notifications.inc();
                                metrics.notifications_dropped.inc();
                                overflowed.store(true, Ordering::SeqCst);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        },
                        Ok(_) => {}
                        Err(e) => {
                            let _ = ended_tx.send(e);
                            return;
                        }
                    }
                }
            }
        });
        let _abort_driver = AbortOnDrop(driver);
        let mut ended = std::pin::pin!(ended);

        let shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            result = self.follow_registration(&client) => result?,
        }
        let listen = format!("LISTEN {}", quote_ident(&self.source.channel));
        tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            result = client.batch_execute(&listen) => result?,
        }
        // The keys to check signatures with, read after LISTEN so that no key made in between is
        // missed (a notification signed with a newer one makes delivery read them again).
        tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            result = self.delivery.refresh_keys() => result.map_err(SessionEnd::Keys)?,
        }
        self.readiness.ready();
        // Up again: the next outage starts from short delays.
        *delays = delivery::backoff(self.max_backoff);
        *sessions += 1;
        if *sessions > 1 {
            self.metrics.reconnects.inc();
        }
        tracing::info!(channel = %self.source.channel, "listening");
        // Whatever committed before LISTEN took effect reached nobody; the live threads read it
        // from the table. Their inboxes get this before any notification received from now on.
        self.delivery.resync_all();

        let overflow_warnings = RateLimiter::direct(
            Quota::with_period(Duration::from_secs(10))
                .expect("a non-zero period")
                .allow_burst(NonZeroU32::MIN),
        );
        let mut ping = tokio::time::interval(self.source_check);
        ping.reset();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                message = rx.recv() => match message {
                    Some(notification) => {
                        self.on_notification(&notification).await;
                        if overflowed.swap(false, Ordering::SeqCst) {
                            // Notifications were dropped, for any thread: every live thread reads
                            // the table (each at most once per repair interval, coalesced).
                            if overflow_warnings.check().is_ok() {
                                tracing::warn!(
                                    "notifications came faster than they could be taken; every \
                                     live thread reads the table instead \
                                     (threadcast_notifications_dropped_total counts them)"
                                );
                            }
                            self.delivery.resync_all();
                        }
                    }
                    // The driver is gone: the connection ended, with its error if it had one.
                    None => return Err(match ended.as_mut().await {
                        Ok(error) => error.into(),
                        Err(_) => SessionEnd::Closed,
                    }),
                },
                _ = ping.tick() => {
                    // The probe reads the registration: a change made while connected (another
                    // channel, a disable) must not go unnoticed until the next reconnect.
                    let probe = Source::registration(&client, self.source.oid);
                    match tokio::time::timeout(PING_TIMEOUT, probe).await {
                        Ok(Ok(Some(now))) if now == self.source => {}
                        Ok(Ok(Some(_))) => {
                            return Err(SessionEnd::SourceChanged(self.source.name.clone()))
                        }
                        Ok(Ok(None)) => {
                            return Err(SessionEnd::SourceGone {
                                name: self.source.name.clone(),
                                oid: self.source.oid,
                            })
                        }
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => return Err(SessionEnd::PingTimeout),
                    }
                }
            }
        }
    }

    async fn on_notification(&self, notification: &Notification) {
        self.metrics.notifications.inc();
        tracing::trace!(payload = notification.payload(), "notification");
        self.delivery
            .notify(notification.channel(), notification.payload())
            .await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Quotes an identifier for SQL the way `quote_ident` does.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_quoted_as_identifiers() {
        assert_eq!(quote_ident("threadcast"), "\"threadcast\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
