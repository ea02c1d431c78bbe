//! `GET /api/widget/stream?feedbackId=<uuid>`: one thread's changes as Server-Sent Events. This
//! module is the HTTP side (parameters, auth, the caps per subject and thread, the connection
//! limit, the frames); what the stream
//! carries, and the hand-over from the table to live events, is [`delivery`](crate::delivery)'s.

use std::time::Duration;

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

pub use crate::delivery::Start;

use crate::auth::Authenticated;
use crate::caps::Held;
use crate::delivery::{Feed, Step};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sse::{self, KeepAlive, UntilShutdown};
use crate::AppState;

/// The most rows `?history=N` sends; larger values are clamped.
pub const MAX_HISTORY: i32 = 500;

/// The stream route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/widget/stream", get(stream_thread))
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
    let held = state.caps.hold(&claims)?;
    let permit = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many open streams; try again later".into()))?;
    let slot = Slot::open(permit, held, state.metrics.clone());
    let feed = state
        .delivery
        .feed(&params.feedback_id.to_string(), params.start);
    let frames = Frames {
        feed,
        retry: state.config.retry,
        announce_join: params.start == Start::Live,
        slot,
    };
    let events = stream::unfold(frames, |mut frames| async move {
        frames.next().await.map(|frame| (frame, frames))
    });
    let age = state.config.max_stream_age.map(jittered);
    let frames = UntilShutdown::new(
        KeepAlive::new(events.boxed(), state.config.heartbeat).lasting(age),
        state.shutdown.clone(),
    );
    Ok(sse::response(frames))
}

/// `age` less up to a tenth at random: streams opened together (after a restart) end apart.
fn jittered(age: Duration) -> Duration {
    use std::hash::BuildHasher;
    // A fresh RandomState is seeded from the OS: enough randomness for spreading reconnects.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    age.mul_f64(1.0 - (random % 1000) as f64 / 10_000.0)
}

/// Holds one of the `max_connections` places, and the stream's places under its subject's and
/// thread's caps, for as long as the stream lives.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _held: Held,
    metrics: Metrics,
}

impl Slot {
    pub(crate) fn open(permit: OwnedSemaphorePermit, held: Held, metrics: Metrics) -> Self {
        metrics.open_streams.inc();
        Slot {
            _permit: permit,
            _held: held,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open_streams.dec();
    }
}

/// A feed's steps as wire frames. It lives as long as the stream, so it keeps only what it needs.
struct Frames {
    feed: Feed,
    retry: Duration,
    /// Whether the first frame tells the client where it joined (a live start, which has no
    /// `Last-Event-ID` of its own to resume with): `sse::first_frame`.
    announce_join: bool,
    slot: Slot,
}

impl Frames {
    async fn next(&mut self) -> Option<Bytes> {
        match self.feed.next().await? {
            // The first frame goes out only once the subscription is in place, so that a client
            // holding it knows that every change committed from then on reaches it, even on a
            // live-only stream.
            Step::Joined => {
                let joined_at = self.feed.joined_at().filter(|_| self.announce_join);
                Some(sse::first_frame(self.retry, joined_at))
            }
            Step::Event(event) => {
                self.slot.metrics.events_delivered.inc();
                Some(event.frame())
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
