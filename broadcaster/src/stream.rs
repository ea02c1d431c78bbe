//! `GET /api/widget/stream?feedbackId=<uuid>`: one thread's changes as Server-Sent Events.
//!
//! A stream joins its thread in the hub first and only then reads the table (catch-up after
//! `Last-Event-ID`, or `?history=N`), so nothing committed in between is missed; live events at or
//! below the last seq sent are dropped, so nothing is sent twice.

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::fetch::{self, PAGE_ROWS};
use crate::hub::Subscription;
use crate::metrics::Metrics;
use crate::sse::{self, Event, KeepAlive};
use crate::AppState;

/// The most rows `?history=N` sends; larger values are clamped.
pub const MAX_HISTORY: i32 = 500;

/// The stream route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/widget/stream", get(stream_thread))
}

/// Where a new stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With live events only.
    Live,
    /// With the last `n` replies, then live.
    History(i32),
    /// With every change after this seq (the client's Last-Event-ID), then live.
    After(i64),
}

/// The validated parameters of a stream request.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamParams {
    pub feedback_id: Uuid,
    pub start: Start,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawParams {
    feedback_id: Option<String>,
    last_event_id: Option<String>,
    history: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for StreamParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawParams>::try_from_uri(&parts.uri).map_err(|e| {
            ApiError::BadRequest(format!("malformed query string: {}", e.body_text()))
        })?;
        let feedback_id = raw
            .feedback_id
            .as_deref()
            .ok_or_else(|| ApiError::BadRequest("feedbackId is required".into()))?;
        let feedback_id = Uuid::try_parse(feedback_id)
            .map_err(|_| ApiError::BadRequest("feedbackId must be a UUID".into()))?;
        // The header is what a reconnecting EventSource sends; the query form is for a first
        // connect that already knows where it stopped. The header wins.
        let header = match parts.headers.get("last-event-id") {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::BadRequest("Last-Event-ID must be a sequence number".into())
            })?),
            None => None,
        };
        let last_event_id = header
            .filter(|v| !v.is_empty())
            .or(raw.last_event_id.as_deref());
        let start = match (last_event_id, raw.history.as_deref()) {
            (Some(id), _) => Start::After(parse_seq(id).ok_or_else(|| {
                ApiError::BadRequest("lastEventId must be a sequence number".into())
            })?),
            (None, Some(n)) => Start::History(
                n.parse::<u32>()
                    .map_err(|_| {
                        ApiError::BadRequest("history must be a non-negative integer".into())
                    })?
                    .min(MAX_HISTORY as u32) as i32,
            ),
            (None, None) => Start::Live,
        };
        Ok(StreamParams { feedback_id, start })
    }
}

/// A sequence number as a client may send it: plain decimal digits that fit an `i64`.
fn parse_seq(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[tracing::instrument(skip_all, fields(thread = %params.feedback_id, start = ?params.start))]
async fn stream_thread(
    State(state): State<AppState>,
    params: StreamParams,
    Authenticated(claims): Authenticated,
) -> Result<Response, ApiError> {
    if claims.feedback_id != params.feedback_id {
        return Err(ApiError::Forbidden(
            "this token is for another thread".into(),
        ));
    }
    let permit = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many open streams; try again later".into()))?;
    let slot = Slot::open(permit, state.metrics.clone());
    let subscription = state.hub.subscribe(&params.feedback_id.to_string());
    let feed = Feed {
        state: state.clone(),
        subscription,
        start: params.start,
        last_sent: 0,
        pending: VecDeque::new(),
        phase: Phase::Joining,
        _slot: slot,
    };
    let events = stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|frame| (frame, feed))
    });
    let frames = KeepAlive::new(events.boxed(), state.config.heartbeat)
        // Open streams never end by themselves; shutdown ends them (axum#2673).
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(sse::response(frames))
}

/// Holds one of the `max_connections` places for as long as the stream lives.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Slot {
    fn open(permit: OwnedSemaphorePermit, metrics: Metrics) -> Self {
        metrics.open_streams.increment(1.0);
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open_streams.decrement(1.0);
    }
}

enum Phase {
    /// Waiting for the thread's task to register the subscriber.
    Joining,
    /// Sending the last `n` replies.
    History(i32),
    /// Sending rows read from the table; `after` is where the next page starts, None when done.
    CatchUp {
        after: Option<i64>,
    },
    Live,
}

/// The state of one stream: its subscription and how far it got.
struct Feed {
    state: AppState,
    subscription: Subscription,
    start: Start,
    /// The highest seq written to this stream; live events at or below it are duplicates.
    last_sent: i64,
    pending: VecDeque<Event>,
    phase: Phase,
    _slot: Slot,
}

impl Feed {
    /// The next frame to write, or None to end the stream.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let Some(frame) = self.send(event) {
                    return Some(frame);
                }
                continue;
            }
            match self.phase {
                Phase::Joining => {
                    let joined_at = self.subscription.joined().await?;
                    tracing::debug!(joined_at, "joined");
                    self.phase = match self.start {
                        Start::Live => Phase::Live,
                        Start::After(n) => Phase::CatchUp { after: Some(n) },
                        Start::History(n) => Phase::History(n),
                    };
                    // The first frame goes out only now, so that a client holding it knows that
                    // every change committed from then on reaches it, even on a live-only stream.
                    return Some(sse::retry_frame(self.state.config.retry));
                }
                Phase::History(n) => {
                    let state = &self.state;
                    // Table reads are boxed: the stream keeps its state for as long as it is
                    // open, and should not keep room for a query's all that time.
                    let read = fetch::latest(&state.pool, &state.source, self.thread(), n);
                    let rows = self.read(Box::pin(read)).await?;
                    self.pending.extend(rows.iter().map(|c| c.event()));
                    self.phase = Phase::Live;
                }
                Phase::CatchUp { after: None } => self.phase = Phase::Live,
                Phase::CatchUp { after: Some(after) } => {
                    let page = self
                        .read(Box::pin(fetch::changes(
                            &self.state.pool,
                            &self.state.source,
                            self.thread(),
                            after,
                            None,
                        )))
                        .await?;
                    let more = page.len() >= PAGE_ROWS as usize;
                    let next_after = page.last().map(|c| c.seq);
                    self.pending.extend(page.iter().map(|c| c.event()));
                    self.phase = Phase::CatchUp {
                        after: next_after.filter(|_| more),
                    };
                }
                // None: this subscriber was dropped as too slow (after what it had queued) or the
                // hub stopped. Ending the stream makes EventSource resume with Last-Event-ID.
                Phase::Live => {
                    let event = self.subscription.recv().await?;
                    if let Some(frame) = self.send(event) {
                        return Some(frame);
                    }
                }
            }
        }
    }

    fn thread(&self) -> &str {
        self.subscription.thread()
    }

    /// The frame of `event` unless it was already sent.
    fn send(&mut self, event: Event) -> Option<Bytes> {
        if event.seq <= self.last_sent {
            return None;
        }
        self.last_sent = event.seq;
        self.state.metrics.events_delivered.increment(1);
        Some(event.frame())
    }

    /// Awaits a table read; a failure ends the stream, and the client resumes where it stopped.
    async fn read<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, fetch::FetchError>>,
    ) -> Option<T> {
        match read.await {
            Ok(rows) => Some(rows),
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "reading the table for a stream failed; ending it so the client resumes");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    async fn params(uri: &str, last_event_id: Option<&str>) -> Result<StreamParams, u16> {
        let mut request = Request::builder().uri(uri);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        StreamParams::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| e.status().as_u16())
    }

    const ID: &str = "6f1c2b8e-8a7b-4d3c-9a57-0d3f8e1e2a10";

    #[tokio::test]
    async fn parameters_are_validated() {
        let cases: &[(&str, Option<&str>, Result<Start, u16>)] = &[
            ("/s", None, Err(400)),
            ("/s?feedbackId=nope", None, Err(400)),
            ("/s?feedbackId={ID}", None, Ok(Start::Live)),
            (
                "/s?feedbackId={ID}&lastEventId=5",
                None,
                Ok(Start::After(5)),
            ),
            (
                "/s?feedbackId={ID}&lastEventId=5",
                Some("9"),
                Ok(Start::After(9)),
            ),
            ("/s?feedbackId={ID}", Some(""), Ok(Start::Live)),
            ("/s?feedbackId={ID}&lastEventId=-1", None, Err(400)),
            ("/s?feedbackId={ID}&lastEventId=abc", None, Err(400)),
            (
                "/s?feedbackId={ID}&lastEventId=99999999999999999999999",
                None,
                Err(400),
            ),
            ("/s?feedbackId={ID}", Some("+3"), Err(400)),
            (
                "/s?feedbackId={ID}&history=20",
                None,
                Ok(Start::History(20)),
            ),
            (
                "/s?feedbackId={ID}&history=100000",
                None,
                Ok(Start::History(MAX_HISTORY)),
            ),
            ("/s?feedbackId={ID}&history=-2", None, Err(400)),
            (
                "/s?feedbackId={ID}&history=3&lastEventId=4",
                None,
                Ok(Start::After(4)),
            ),
        ];
        for (uri, header, expected) in cases {
            let uri = uri.replace("{ID}", ID);
            let got = params(&uri, *header).await.map(|p| p.start);
            assert_eq!(&got, expected, "{uri} with Last-Event-ID {header:?}");
        }
    }
}
