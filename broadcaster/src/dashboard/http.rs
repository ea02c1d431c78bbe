//! The dashboard's HTTP side: `GET /api/dashboard/stream` opens a stream (auth, the connection
//! limit, the frames), `POST /api/dashboard/stream/{id}` changes what it follows (validation,
//! membership, then a command to the stream).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::connection::{Change, Connection, From};
use super::membership::other_threads;
use super::scope::{project_key, Authorized, Scope};
use super::{wire, HandleError};
use crate::auth::LEEWAY_SECS;
use crate::error::ApiError;
use crate::sse::{self, KeepAlive};
use crate::stream::Slot;
use crate::AppState;

/// The dashboard routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/dashboard/stream", get(open_stream))
        .route("/api/dashboard/stream/{id}", post(change_stream))
}

/// When a stream opened (or renewed) with a token expiring at `exp` ends: when the token would
/// no longer be accepted.
fn deadline(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // jsonwebtoken accepts a token until `exp + leeway` has passed (`exp < now - leeway`).
    let end = Duration::from_secs(exp.saturating_add(LEEWAY_SECS + 1));
    // Capped: a token may say it never expires, and an Instant cannot be that far off.
    Instant::now()
        + end
            .saturating_sub(now)
            .min(Duration::from_secs(366 * 86_400))
}

#[tracing::instrument(skip_all)]
async fn open_stream(
    State(state): State<AppState>,
    Authorized { scope, exp }: Authorized,
) -> Result<Response, ApiError> {
    let dashboard = state.dashboard.clone();
    if matches!(scope, Scope::Projects(_)) && dashboard.membership.is_none() {
        return Err(ApiError::Forbidden(
            "project tokens need the broadcaster to know how threads belong to projects \
             (THREADCAST_PROJECT_TABLE)"
                .into(),
        ));
    }
    let permit = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many open streams; try again later".into()))?;
    let held = state.caps.hold_scope(&scope.key())?;
    let slot = Slot::open(permit, held, state.metrics.clone());
    let (registration, commands, followed) = dashboard.register(scope.clone());
    let open = wire::open(registration.id());
    let connection = Connection::new(
        state.delivery.clone(),
        state.store.clone(),
        dashboard.membership.clone(),
        scope,
        commands,
        state.metrics.clone(),
        dashboard.settings.max_threads,
        state.config.max_backoff,
        deadline(exp),
        registration,
        slot,
        followed,
    );
    let frames = stream::iter([sse::retry_frame(state.config.retry), open]).chain(stream::unfold(
        Box::new(connection),
        |mut connection| async move { connection.next_frame().await.map(|f| (f, connection)) },
    ));
    let frames = KeepAlive::new(frames.boxed(), state.config.heartbeat)
        // Open streams never end by themselves; shutdown ends them (axum#2673).
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(sse::response(frames))
}

/// How the threads of a followed project that the client does not list start.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ProjectStart {
    /// From now: a first connect.
    Live,
    /// From their first change: a reconnect, whose cursor lists every thread it knew, so that
    /// any other thread is new to it.
    Resume,
}

/// The body of `POST /api/dashboard/stream/{id}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    /// Threads to follow: thread → the last seq the client has (0: none, the whole thread),
    /// or null to start from now.
    #[serde(default)]
    follow: HashMap<String, Option<i64>>,
    #[serde(default)]
    unfollow: Vec<String>,
    /// Projects to follow whole.
    #[serde(default)]
    projects: HashMap<String, ProjectStart>,
}

/// A thread key as the stream and the table spell it.
fn thread_key(text: &str) -> Result<Arc<str>, ApiError> {
    Uuid::try_parse(text)
        .map(|id| Arc::from(id.to_string()))
        .map_err(|_| ApiError::BadRequest(format!("thread {text:?} is not a UUID")))
}

#[tracing::instrument(skip_all, fields(stream = %id))]
async fn change_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { scope, exp }: Authorized,
    body: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("send the change as application/json".into())
        }
        e => ApiError::BadRequest(format!("malformed change: {}", e.body_text())),
    })?;
    let dashboard = state.dashboard.clone();
    let max = dashboard.settings.max_threads;
    if body.follow.len() > max || body.unfollow.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "a stream follows at most {max} threads"
        )));
    }
    let (commands, followed) = dashboard.handle(&id, &scope).map_err(|e| match e {
        HandleError::Gone => ApiError::NotFound(
            "no open stream has this id (it ended): open a stream and follow again".into(),
        ),
        HandleError::OtherScope => {
            ApiError::Forbidden("the stream was opened with a token of another scope".into())
        }
    })?;

    let mut follow = Vec::with_capacity(body.follow.len());
    for (thread, after) in &body.follow {
        let from = match after {
            None => From::Now,
            Some(n) if *n >= 0 => From::After(*n),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "a thread's last seq must be a non-negative integer or null".into(),
                ))
            }
        };
        follow.push((thread_key(thread)?, from));
    }
    let unfollow = body
        .unfollow
        .iter()
        .map(|t| thread_key(t))
        .collect::<Result<Vec<_>, _>>()?;

    let mut refused = serde_json::Map::new();
    if !follow.is_empty() {
        let threads: Vec<Arc<str>> = follow.iter().map(|(t, _)| t.clone()).collect();
        let not = match (&scope, &dashboard.membership) {
            (Scope::Thread(own), _) => other_threads(own, &threads),
            (Scope::Projects(_), Some(membership)) => membership
                .refused(&scope, &threads)
                .await
                .map_err(unavailable)?,
            // Refused when opened: a project stream needs the membership.
            (Scope::Projects(_), None) => {
                return Err(ApiError::Forbidden("projects are not configured".into()))
            }
        };
        for (thread, why) in not {
            follow.retain(|(t, _)| *t != thread);
            refused.insert(thread.to_string(), why.as_str().into());
        }
    }

    let mut projects = Vec::new();
    let mut refused_projects = serde_json::Map::new();
    let mut admitted = None;
    if !body.projects.is_empty() {
        let membership = dashboard
            .membership
            .as_ref()
            .filter(|_| matches!(scope, Scope::Projects(_)))
            .ok_or_else(|| {
                ApiError::Forbidden("only a project token may follow whole projects".into())
            })?;
        let mut starts = HashMap::new();
        for (project, start) in &body.projects {
            let project = project_key(project);
            if scope.has_project(&project) {
                starts.insert(project.clone(), *start);
                projects.push(project);
            } else {
                refused_projects.insert(project, "not one of the token's projects".into());
            }
        }
        if !projects.is_empty() {
            // Subscribed before the threads are listed: a thread made in between is seen.
            admitted = Some(state.delivery.admitted());
            let rows = membership
                .source()
                .threads_of(&projects)
                .await
                .map_err(unavailable)?;
            membership.remember(&rows);
            let listed: std::collections::HashSet<&Arc<str>> =
                follow.iter().map(|(t, _)| t).collect();
            let mut more = Vec::new();
            for (thread, project) in &rows {
                let thread: Arc<str> = Arc::from(thread.as_str());
                if listed.contains(&thread) {
                    continue;
                }
                let from = match starts.get(project) {
                    Some(ProjectStart::Resume) => From::After(0),
                    _ => From::Now,
                };
                more.push((thread, from));
            }
            follow.extend(more);
        }
    }

    // Room as the stream last reported it; the stream refuses (`event: refused`) what a
    // concurrent change took meanwhile.
    let mut room = (max + unfollow.len()).saturating_sub(followed);
    follow.retain(|(thread, _)| {
        if room == 0 {
            refused.insert(
                thread.to_string(),
                format!("the stream already follows {max} threads").into(),
            );
            return false;
        }
        room -= 1;
        true
    });
    let following: Vec<String> = follow.iter().map(|(t, _)| t.to_string()).collect();
    // The change is queued, not awaited: the stream takes it in as it runs, and a stream whose
    // client reads slowly must not hold a request.
    commands
        .try_send(Change {
            follow,
            unfollow,
            projects: projects.clone(),
            admitted,
            deadline: deadline(exp),
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::TooManyRequests {
                message: "the stream has changes still to take in; send this one again".into(),
                retry_after_secs: 1,
            },
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::NotFound("the stream has ended".into())
            }
        })?;
    Ok(Json(serde_json::json!({
        "following": following,
        "refused": refused,
        "projects": projects,
        "refused_projects": refused_projects,
    })))
}

fn unavailable(error: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %crate::error::chain(&error), "cannot check thread membership");
    ApiError::Unavailable("the database is unavailable; try again".into())
}
