//! Operations endpoints: `/healthz` (the process answers), `/readyz` (the LISTEN connection is
//! up on the served source's registration, or why not: [`Readiness`]), `/metrics` (Prometheus
//! text).

use std::sync::{Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ApiError;
use crate::AppState;

/// The operations routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether notifications are being received, and if not, why: what `/readyz` answers.
pub struct Readiness {
    /// None when ready; else the reason.
    reason: Mutex<Option<String>>,
}

/// The reason while the LISTEN connection is being (re-)established.
pub const RECONNECTING: &str = "not listening to the database (reconnecting)";

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            reason: Mutex::new(Some(RECONNECTING.to_owned())),
        }
    }
}

impl Readiness {
    fn reason_lock(&self) -> MutexGuard<'_, Option<String>> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notifications are being received.
    pub fn ready(&self) {
        *self.reason_lock() = None;
    }

    /// Notifications are not being received, for `reason` (kept until the next change).
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.reason_lock() = Some(reason.into());
    }

    /// Why it is not ready, or None.
    pub fn reason(&self) -> Option<String> {
        self.reason_lock().clone()
    }
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    if let Some(reason) = state.readiness.reason() {
        return Err(ApiError::Unavailable(reason));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}
