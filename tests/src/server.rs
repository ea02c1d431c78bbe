//! The real broadcaster, served in-process on 127.0.0.1:0 against a test database, with helpers
//! to mint tokens, open streams and read metrics.

use std::net::SocketAddr;
use std::time::Duration;

use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_broadcaster::{app, Broadcaster, Config, StartError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::TestDb;
use crate::eventually;
use crate::sse::{Refused, SseStream};
use crate::subscriber::Subscriber;

/// The secret test servers sign tokens with.
pub const SECRET: &[u8] = b"threadcast-test-secret-of-32-bytes-at-least";

/// A running broadcaster. Dropping it shuts it down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub keys: Keys,
    pub http: reqwest::Client,
    served: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestServer {
    /// A broadcaster with the default configuration for `db`, ready (LISTEN is in force).
    pub async fn start(db: &TestDb) -> TestServer {
        TestServer::start_with(db, |_| {}).await
    }

    /// A broadcaster whose configuration `adjust` changes first.
    pub async fn start_with(db: &TestDb, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_at(db, "127.0.0.1:0".parse().unwrap(), adjust).await
    }

    /// A broadcaster on `addr`: a restart on the address of a stopped one, where its clients
    /// reconnect.
    pub async fn start_at(
        db: &TestDb,
        addr: SocketAddr,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        crate::init_logging();
        let mut config = Config::new(db.reader_url.clone(), SECRET);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let broadcaster = Broadcaster::start(config, shutdown.clone())
            .await
            .expect("start the broadcaster");
        let router = app(broadcaster.state().clone());
        let served = tokio::spawn(broadcaster.serve(listener, router));
        let server = TestServer {
            addr,
            shutdown,
            keys: Keys::new(SECRET),
            http: reqwest::Client::new(),
            served: Some(served),
        };
        server.wait_ready().await;
        server
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually("the broadcaster to be ready", || async {
            self.readyz().await == 200
        })
        .await;
    }

    /// The status `/readyz` answers.
    pub async fn readyz(&self) -> u16 {
        self.http
            .get(self.url("/readyz"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A background subscriber of `thread` that reconnects like EventSource; see [`Subscriber`].
    pub fn subscribe(&self, name: impl Into<String>, thread: Uuid) -> Subscriber {
        Subscriber::spawn(name, &self.url(""), thread, self.token(thread))
    }

    /// A background subscriber of `thread` that starts live, as a plain `new EventSource(url)`
    /// does; see [`Subscriber::spawn_live`].
    pub fn subscribe_live(&self, name: impl Into<String>, thread: Uuid) -> Subscriber {
        Subscriber::spawn_live(name, &self.url(""), thread, self.token(thread))
    }

    /// A valid one-hour end-user token for `thread`.
    pub fn token(&self, thread: Uuid) -> String {
        self.keys
            .mint(thread, Duration::from_secs(3600), Role::EndUser)
    }

    /// The stream URL of `thread`, plus `extra` query parameters (`&a=b...`).
    pub fn stream_url(&self, thread: Uuid, extra: &str) -> String {
        self.url(&format!("/api/widget/stream?feedbackId={thread}{extra}"))
    }

    /// Opens `thread`'s stream with a valid bearer token, live from now on.
    pub async fn open(&self, thread: Uuid) -> SseStream {
        self.open_with(thread, "", None)
            .await
            .expect("open a stream")
    }

    /// Opens `thread`'s stream with a valid bearer token, `extra` query parameters and an optional
    /// `Last-Event-ID`; waits until the stream has joined its thread.
    pub async fn open_with(
        &self,
        thread: Uuid,
        extra: &str,
        last_event_id: Option<i64>,
    ) -> Result<SseStream, Refused> {
        let mut request = self
            .http
            .get(self.stream_url(thread, extra))
            .bearer_auth(self.token(thread));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let mut stream = SseStream::open(request).await?;
        // The first frame is `retry:`; once it is here the handler has subscribed, so a change
        // committed from now on reaches this stream. A live start's also says where it joined.
        let first = stream.next_item().await;
        assert!(
            matches!(first, Some(crate::sse::SseItem::Retry(_))),
            "a stream starts with retry:, got {first:?}"
        );
        let live = last_event_id.is_none()
            && !extra.contains("lastEventId=")
            && !extra.contains("history=");
        if live {
            let joined = stream.next_item().await;
            assert!(
                matches!(joined, Some(crate::sse::SseItem::Joined(_))),
                "a live stream says where it joined, got {joined:?}"
            );
        }
        Ok(stream)
    }

    /// The value of metric `name` (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("read /metrics");
        crate::metric_value(&text, name)
    }

    /// Fires shutdown and waits for the server to finish; returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        let served = self.served.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the broadcaster stops within 10 s")
            .expect("the serve task does not panic")
            .expect("the broadcaster serves without error");
        started.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
