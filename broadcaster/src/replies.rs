//! `POST /api/widget/replies`: the widget's way to answer in its thread. The token says which
//! thread and as whom (`role`); the body is `{"content", "author_name", "client_id"}`.
//!
//! The request is idempotent on `client_id`, which becomes the row's id: the store answers the
//! row already stored (200) instead of a new one (201), or a conflict if that id is another
//! reply's (`store/pg.rs` says why that is a plain INSERT).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Authenticated, Role};
use crate::config::Config;
use crate::error::ApiError;
use crate::rate::RateLimiter;
use crate::store::{InsertError, NewReply, Stored};
use crate::AppState;

/// The longest `author_name` accepted, in characters.
pub const MAX_AUTHOR_NAME_CHARS: usize = 200;

/// The reply route, with a body limit that fits the longest reply allowed.
pub fn router(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/api/widget/replies", post(post_reply))
        .layer(DefaultBodyLimit::max(body_limit(config.max_reply_chars)))
}

/// The largest body read for a reply of `max_chars` characters: room for every character as a
/// JSON escaped surrogate pair (12 bytes), plus the other fields. Larger bodies are refused with
/// 413 before they are read in full.
pub fn body_limit(max_chars: usize) -> usize {
    max_chars.saturating_mul(12).saturating_add(16 * 1024)
}

/// What posting replies needs: the limits and the rate limiter.
pub struct Replies {
    max_chars: usize,
    /// Keyed by thread and role: every token of one thread's end user (or of its agency) shares
    /// one bucket, so minting fresh tokens does not buy a faster rate.
    limiter: Option<RateLimiter<(Uuid, Role)>>,
}

impl Replies {
    /// The reply settings of `config`.
    pub fn new(config: &Config) -> Self {
        Replies {
            max_chars: config.max_reply_chars,
            limiter: config.reply_rate.map(RateLimiter::new),
        }
    }
}

/// A reply as the client sent it. `feedback_id` is optional; when given it must be the token's.
#[derive(Deserialize)]
struct Body {
    content: String,
    author_name: String,
    client_id: String,
    feedback_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostQuery {
    feedback_id: Option<String>,
}

#[tracing::instrument(skip_all, fields(thread = %claims.feedback_id, role = claims.role.as_str()))]
async fn post_reply(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    query: Result<Query<PostQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // The token may come from a cookie, which a browser attaches to a form another site makes
    // it POST (text/plain can carry a JSON-looking body). JSON only: a cross-origin request
    // with that type needs a CORS preflight, which only the allowed origins pass.
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be sent as Content-Type: application/json".into(),
        ));
    }
    let Query(query) = query
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {}", e.body_text())))?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "the body is larger than {} bytes",
            body_limit(state.config.max_reply_chars)
        )),
        _ => ApiError::BadRequest(format!("cannot read the body: {}", rejection.body_text())),
    })?;
    let replies = &state.replies;
    let reply = validate(
        &body,
        query.feedback_id.as_deref(),
        claims.feedback_id,
        claims.role,
        replies.max_chars,
    )?;
    if let Some(limiter) = &replies.limiter {
        limiter
            .check((reply.thread, reply.role))
            .map_err(|wait| ApiError::TooManyRequests {
                message: "too many replies; slow down".into(),
                retry_after_secs: retry_after(wait),
            })?;
    }
    let stored = state
        .store
        .insert_reply(&reply)
        .await
        .map_err(|error| match error {
            InsertError::NoThread => ApiError::NotFound(error.to_string()),
            InsertError::Conflict(why) => ApiError::Conflict(why.into()),
            InsertError::Rejected => ApiError::Unprocessable(error.to_string()),
            InsertError::Unavailable => {
                ApiError::Unavailable("the database is unavailable; try again".into())
            }
            InsertError::Internal(cause) => ApiError::Internal(cause),
        })?;
    let (status, row) = match stored {
        Stored::Created(row) => (StatusCode::CREATED, row),
        Stored::Existing(row) => (StatusCode::OK, row),
    };
    tracing::debug!(id = %reply.id, status = status.as_u16(), "reply posted");
    Ok((status, [(header::CONTENT_TYPE, "application/json")], row).into_response())
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Checks everything that needs no database: the body's shape (400), the thread (403), and the
/// content (413, 422).
fn validate(
    body: &[u8],
    query_thread: Option<&str>,
    thread: Uuid,
    role: Role,
    max_chars: usize,
) -> Result<NewReply, ApiError> {
    let Body {
        content,
        author_name,
        client_id,
        feedback_id,
    } = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid reply: {e}")))?;
    let id = Uuid::try_parse(&client_id)
        .map_err(|_| ApiError::BadRequest("client_id must be a UUID".into()))?;
    for named in [query_thread, feedback_id.as_deref()].into_iter().flatten() {
        let named = Uuid::try_parse(named)
            .map_err(|_| ApiError::BadRequest("feedbackId must be a UUID".into()))?;
        if named != thread {
            return Err(ApiError::Forbidden(
                "this token is for another thread".into(),
            ));
        }
    }
    if content.chars().count() > max_chars {
        return Err(ApiError::PayloadTooLarge(format!(
            "content is longer than {max_chars} characters"
        )));
    }
    if content.trim().is_empty() {
        return Err(ApiError::Unprocessable("content is empty".into()));
    }
    if author_name.trim().is_empty() {
        return Err(ApiError::Unprocessable("author_name is empty".into()));
    }
    if author_name.chars().count() > MAX_AUTHOR_NAME_CHARS {
        return Err(ApiError::Unprocessable(format!(
            "author_name is longer than {MAX_AUTHOR_NAME_CHARS} characters"
        )));
    }
    // PostgreSQL's text cannot hold U+0000; refusing it here keeps it from becoming a 500.
    if content.contains('\0') || author_name.contains('\0') {
        return Err(ApiError::Unprocessable(
            "content and author_name must not contain U+0000".into(),
        ));
    }
    Ok(NewReply {
        id,
        thread,
        role,
        author_name,
        content,
    })
}

/// The delay to answer in `Retry-After`, whole seconds, at least one.
pub fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREAD: &str = "6f1c2b8e-8a7b-4d3c-9a57-0d3f8e1e2a10";
    const OTHER: &str = "0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01";
    const ID: &str = "1d6b2d1e-4c4e-4f7a-9c43-0c1b2d3e4f50";

    fn check(body: &str, query_thread: Option<&str>, max_chars: usize) -> Result<NewReply, u16> {
        validate(
            body.as_bytes(),
            query_thread,
            Uuid::parse_str(THREAD).unwrap(),
            Role::Agency,
            max_chars,
        )
        .map_err(|e| e.status().as_u16())
    }

    fn body(content: &str) -> String {
        serde_json::json!({ "content": content, "author_name": "Ada", "client_id": ID }).to_string()
    }

    #[test]
    fn a_good_reply_takes_the_tokens_thread_and_role() {
        let reply = check(&body("hi"), None, 10).unwrap();
        assert_eq!(
            reply,
            NewReply {
                id: Uuid::parse_str(ID).unwrap(),
                thread: Uuid::parse_str(THREAD).unwrap(),
                role: Role::Agency,
                author_name: "Ada".into(),
                content: "hi".into(),
            }
        );
    }

    #[test]
    fn each_client_mistake_has_its_status() {
        let long_name = serde_json::json!({
            "content": "x", "author_name": "n".repeat(MAX_AUTHOR_NAME_CHARS + 1), "client_id": ID
        })
        .to_string();
        let with_thread = |t: &str| {
            serde_json::json!({ "content": "x", "author_name": "A", "client_id": ID, "feedback_id": t })
                .to_string()
        };
        let cases: Vec<(&str, String, Option<String>, u16)> = vec![
            ("not JSON", "{".into(), None, 400),
            ("an array", "[]".into(), None, 400),
            ("no body", String::new(), None, 400),
            (
                "no content",
                r#"{"author_name":"A","client_id":"x"}"#.into(),
                None,
                400,
            ),
            (
                "content not a string",
                format!(r#"{{"content":5,"author_name":"A","client_id":"{ID}"}}"#),
                None,
                400,
            ),
            (
                "no author_name",
                format!(r#"{{"content":"x","client_id":"{ID}"}}"#),
                None,
                400,
            ),
            (
                "no client_id",
                r#"{"content":"x","author_name":"A"}"#.into(),
                None,
                400,
            ),
            (
                "client_id not a uuid",
                r#"{"content":"x","author_name":"A","client_id":"42"}"#.into(),
                None,
                400,
            ),
            ("feedbackId not a uuid", body("x"), Some("nope".into()), 400),
            (
                "another thread in the query",
                body("x"),
                Some(OTHER.into()),
                403,
            ),
            ("another thread in the body", with_thread(OTHER), None, 403),
            (
                "the token's thread named",
                with_thread(THREAD),
                Some(THREAD.into()),
                0,
            ),
            ("11 characters", body(&"é".repeat(11)), None, 413),
            ("10 characters", body(&"é".repeat(10)), None, 0),
            ("empty content", body(""), None, 422),
            ("blank content", body(" \n\t "), None, 422),
            ("NUL in content", body("a\0b"), None, 422),
            ("long author_name", long_name, None, 422),
        ];
        for (name, body, query, expected) in cases {
            let got = check(&body, query.as_deref(), 10).err().unwrap_or(0);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn the_body_limit_fits_the_longest_reply_escaped() {
        let content = "\u{1F600}".repeat(100);
        let escaped = serde_json::json!({ "content": content }).to_string();
        assert!(escaped.len() < body_limit(100));
        let worst = "\\ud83d\\ude00".repeat(100);
        assert!(worst.len() + 1024 < body_limit(100));
    }
}
