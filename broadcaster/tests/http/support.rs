//! The app on `MemStore`, and requests to it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_broadcaster::dashboard::MemProjects;
use threadcast_broadcaster::store::MemStore;
use threadcast_broadcaster::{app, AppState, Config};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use uuid::Uuid;

/// The secret the app signs tokens with.
pub const SECRET: &[u8] = b"threadcast-http-test-secret";

/// The app and its store. Dropping it shuts it down.
pub struct Api {
    pub router: Router,
    pub state: AppState,
    pub store: Arc<MemStore>,
    /// Which project each thread belongs to, for dashboard tokens scoped to projects.
    pub projects: Arc<MemProjects>,
    pub keys: Keys,
    shutdown: CancellationToken,
}

impl Api {
    /// The app with the default configuration; notifications of the store's changes reach
    /// delivery as NOTIFY would bring them, and `/readyz` says ready.
    pub fn new() -> Api {
        Api::with(|_| {})
    }

    /// The app with a configuration `adjust` changes first.
    pub fn with(adjust: impl FnOnce(&mut Config)) -> Api {
        let mut config = Config::new("unused: the store is in memory", SECRET);
        adjust(&mut config);
        let source = MemStore::source(false);
        let (store, mut notifications) = MemStore::with_notifications(source.clone());
        let store = Arc::new(store);
        let shutdown = CancellationToken::new();
        let projects = Arc::new(MemProjects::default());
        let state = AppState::new(
            config,
            store.clone(),
            Arc::new(source.clone()),
            shutdown.clone(),
            TaskTracker::new(),
        )
        .with_projects(projects.clone());
        let delivery = state.delivery.clone();
        tokio::spawn(async move {
            while let Some(payload) = notifications.recv().await {
                delivery.notify(&source.channel, &payload).await;
            }
        });
        state.set_ready(true);
        Api {
            router: app(state.clone()),
            state,
            store,
            projects,
            keys: Keys::new(SECRET),
            shutdown,
        }
    }

    /// A valid one-hour end-user token for `thread`.
    pub fn token(&self, thread: Uuid) -> String {
        self.keys
            .mint(thread, Duration::from_secs(3600), Role::EndUser)
    }

    /// Sends `request` to the app.
    pub async fn send(&self, request: Request<Body>) -> axum::response::Response {
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails")
    }

    /// Sends `request` and reads the whole (finite) answer.
    pub async fn answer(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.send(request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("read the body");
        (parts.status, parts.headers, body)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A GET of `uri` with `headers`.
pub fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("a valid request")
}

/// The frames of an event-stream response as text, read until `until` has appeared; panics
/// after 10 s.
pub struct Frames {
    body: axum::body::BodyDataStream,
    pub seen: String,
}

impl Frames {
    pub fn of(response: axum::response::Response) -> Frames {
        Frames {
            body: response.into_body().into_data_stream(),
            seen: String::new(),
        }
    }

    /// Reads until the stream ends; returns everything seen. Panics after 10 s.
    pub async fn end(&mut self) -> &str {
        let read = async {
            while let Some(Ok(bytes)) = self.body.next().await {
                self.seen.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("the stream did not end within 10 s: {:?}", self.seen));
        &self.seen
    }

    /// Reads until the text seen so far contains `until`; returns all of it.
    pub async fn until(&mut self, until: &str) -> &str {
        let read = async {
            while !self.seen.contains(until) {
                match self.body.next().await {
                    Some(Ok(bytes)) => self.seen.push_str(std::str::from_utf8(&bytes).unwrap()),
                    other => panic!(
                        "the stream ended ({other:?}) before {until:?}: {}",
                        self.seen
                    ),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("no {until:?} within 10 s: {:?}", self.seen));
        &self.seen
    }
}
