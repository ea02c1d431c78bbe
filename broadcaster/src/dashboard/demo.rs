//! Demo mode's dashboard page (`--demo` only): `/demo/dashboard/`, a React page of live feedback
//! cards built from `widget/demo/dashboard/` by `npm run build:demo` (served from
//! `--demo-assets`), the demo project and its threads, and a token endpoint that signs a
//! project token for anyone who asks, which is why demo mode must never be on in production.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::scope::mint_projects;
use crate::auth::Role;
use crate::demo::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::widget::file;
use crate::AppState;

const INDEX_HTML: &str = include_str!("../../../widget/demo/dashboard/index.html");
const DASHBOARD_CSS: &str = include_str!("../../../widget/demo/dashboard/dashboard.css");
/// The bundle's file name in `--demo-assets`.
pub const BUNDLE: &str = "dashboard.js";
/// The most cards the page shows.
const MAX_CARDS: i64 = 48;

/// The demo dashboard's routes; `app` merges them only in demo mode.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/demo/dashboard",
            get(|| async { Redirect::permanent("/demo/dashboard/") }),
        )
        .route(
            "/demo/dashboard/",
            get(|| file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/demo/dashboard/dashboard.css",
            get(|| file("text/css; charset=utf-8", DASHBOARD_CSS)),
        )
        .route("/demo/dashboard/app.js", get(bundle))
        .route("/demo/dashboard/project", get(project))
        .route("/demo/dashboard/token", get(token))
}

/// The page's script, built by `npm run build:demo` into `--demo-assets`.
async fn bundle(State(state): State<AppState>) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::NotFound(
            "the dashboard page is not built: run `npm ci && npm run build:demo -- <dir>` in \
             widget/ and start the broadcaster with --demo-assets <dir> (cargo xtask demo does)"
                .into(),
        )
    };
    let dir = state.config.demo_assets.as_ref().ok_or_else(missing)?;
    let body = tokio::fs::read(dir.join(BUNDLE))
        .await
        .map_err(|_| missing())?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `{"projectId", "threads": [{"feedbackId", "title"}]}`: the project with the most threads.
async fn project(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let project = state
        .store
        .demo_project(MAX_CARDS)
        .await
        .map_err(|e| match e {
            StoreError::Unavailable(_) => {
                ApiError::Unavailable("the database is unavailable; try again".into())
            }
            StoreError::Query(_) => ApiError::internal(e),
        })?
        .ok_or_else(|| {
            ApiError::NotFound("no thread belongs to a project; load sql/demo.sql".into())
        })?;
    Ok(Json(serde_json::json!({
        "projectId": project.id,
        "threads": project.threads.iter().map(|t| serde_json::json!({ "feedbackId": t.id, "title": t.title })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenParams {
    project_id: Option<String>,
    ttl: Option<u64>,
}

/// `{"token"}`: an agency token for `?projectId=`, for `?ttl=` seconds (default an hour).
async fn token(
    State(state): State<AppState>,
    params: Result<Query<TokenParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {}", e.body_text())))?;
    let project = params
        .project_id
        .ok_or_else(|| ApiError::BadRequest("projectId is required".into()))?;
    let ttl = params
        .ttl
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL)
        .clamp(Duration::from_secs(1), MAX_TOKEN_TTL);
    let token = mint_projects(&state.keys, &[project], ttl, Role::Agency);
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "token": token })),
    )
        .into_response())
}
