//! Demo mode (`--demo`, off by default): the two-pane demo page of `widget/demo/`, the thread it
//! shows, and a token endpoint that signs a token for any thread to anyone who asks, which is
//! why demo mode must never be on in production.
//!
//! The page's files are compiled in, so the binary serves them wherever it runs.

use std::time::Duration;

use axum::extract::{Query, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Role;
use crate::error::ApiError;
use crate::store::StoreError;
use crate::widget::file;
use crate::AppState;

const INDEX_HTML: &str = include_str!("../../widget/demo/index.html");
const DEMO_CSS: &str = include_str!("../../widget/demo/demo.css");
const DEMO_JS: &str = include_str!("../../widget/demo/demo.js");

/// The lifetime of a demo token when the page does not ask for one.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a demo token may be asked for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// The demo routes; `app` merges them only in demo mode.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/demo", get(to_folder))
        .route(
            "/demo/",
            get(|| file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/demo/index.html",
            get(|| file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/demo/demo.css",
            get(|| file("text/css; charset=utf-8", DEMO_CSS)),
        )
        .route(
            "/demo/demo.js",
            get(|| file("text/javascript; charset=utf-8", DEMO_JS)),
        )
        .route("/demo/thread", get(demo_thread))
        .route("/demo/token", get(demo_token))
}

/// `/demo` → `/demo/`, query kept: the page loads its files relative to the folder.
async fn to_folder(RawQuery(query): RawQuery) -> Redirect {
    match query {
        Some(query) => Redirect::permanent(&format!("/demo/?{query}")),
        None => Redirect::permanent("/demo/"),
    }
}

/// The first feedback thread (`{"feedbackId", "title"}`), for a page opened without
/// `?feedbackId=`: the store's demo thread (`public.feedback`'s first, or the served table's).
async fn demo_thread(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let thread = state.store.demo_thread().await.map_err(|e| match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %crate::error::chain(&e), "no database connection for /demo/thread");
            ApiError::Unavailable("the database is unavailable; try again".into())
        }
        StoreError::Query(_) => ApiError::internal(e),
    })?;
    let thread = thread.ok_or_else(|| {
        ApiError::NotFound("there is no feedback thread yet; load sql/demo.sql".into())
    })?;
    Ok(Json(serde_json::json!({
        "feedbackId": thread.id,
        "title": thread.title,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenParams {
    feedback_id: Option<String>,
    role: Option<String>,
    ttl: Option<String>,
}

/// `{"token"}` for `?feedbackId=<uuid>&role=agency|end_user[&ttl=<seconds>]`.
async fn demo_token(
    State(state): State<AppState>,
    params: Result<Query<TokenParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {}", e.body_text())))?;
    let feedback_id = params
        .feedback_id
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("feedbackId is required".into()))
        .and_then(|id| {
            Uuid::try_parse(id)
                .map_err(|_| ApiError::BadRequest("feedbackId must be a UUID".into()))
        })?;
    let role = match params.role.as_deref() {
        None | Some("end_user") => Role::EndUser,
        Some("agency") => Role::Agency,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "role must be agency or end_user".into(),
            ))
        }
    };
    let ttl = match params.ttl.as_deref() {
        None | Some("") => DEFAULT_TOKEN_TTL,
        Some(ttl) => ttl
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .filter(|ttl| !ttl.is_zero() && *ttl <= MAX_TOKEN_TTL)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "ttl must be whole seconds from 1 to {}",
                    MAX_TOKEN_TTL.as_secs()
                ))
            })?,
    };
    let token = state.keys.mint(feedback_id, ttl, role);
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "token": token })),
    )
        .into_response())
}
