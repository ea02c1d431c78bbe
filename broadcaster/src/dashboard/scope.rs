//! What a dashboard token covers: one thread (an end user's or a card's token, `feedback_id`), or
//! whole projects (an agency's token, `projects`). The claims are read with the same key and the
//! same checks as a widget token's ([`Keys::verify_as`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{find_token, Keys, Role};
use crate::error::ApiError;
use crate::AppState;

/// The most projects one token may name: a token travels in a URL.
pub const MAX_PROJECTS: usize = 100;

/// The claims of a token as the dashboard reads them: exactly one of `feedback_id` and
/// `projects`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScopeClaims {
    /// The one thread the token covers (a widget token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_id: Option<Uuid>,
    /// The projects whose threads the token covers (an agency's dashboard token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub role: Role,
}

/// What a token covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One thread, by its key.
    Thread(Arc<str>),
    /// Every thread that belongs to one of these projects (keys in canonical form).
    Projects(Arc<BTreeSet<String>>),
}

impl Scope {
    /// The scope in one canonical string (`thread:<key>` or `projects:<a>,<b>`): a subject for
    /// the per-subject cap on open streams.
    pub fn key(&self) -> String {
        match self {
            Scope::Thread(thread) => format!("thread:{thread}"),
            Scope::Projects(projects) => {
                format!(
                    "projects:{}",
                    projects
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
        }
    }

    /// Whether `project` is one of the scope's projects.
    pub fn has_project(&self, project: &str) -> bool {
        matches!(self, Scope::Projects(projects) if projects.contains(project))
    }
}

impl ScopeClaims {
    /// The scope these claims state, or why they state none.
    pub fn scope(&self) -> Result<Scope, ApiError> {
        match (&self.feedback_id, &self.projects) {
            (Some(thread), None) => Ok(Scope::Thread(Arc::from(thread.to_string()))),
            (None, Some(projects)) => {
                if projects.is_empty() || projects.len() > MAX_PROJECTS {
                    return Err(ApiError::Unauthorized(format!(
                        "the token must name from 1 to {MAX_PROJECTS} projects"
                    )));
                }
                Ok(Scope::Projects(Arc::new(
                    projects.iter().map(|p| project_key(p)).collect(),
                )))
            }
            (Some(_), Some(_)) => Err(ApiError::Unauthorized(
                "a token is for one thread (feedback_id) or for projects, not both".into(),
            )),
            (None, None) => Err(ApiError::Unauthorized(
                "the token names neither a thread (feedback_id) nor projects".into(),
            )),
        }
    }
}

/// A project key as PostgreSQL prints it: a UUID in its lowercase hyphenated form, anything
/// else as given (trimmed).
pub fn project_key(text: &str) -> String {
    let text = text.trim();
    match Uuid::try_parse(text) {
        Ok(uuid) => uuid.to_string(),
        Err(_) => text.to_owned(),
    }
}

/// A token for `projects` that expires `ttl` from now (the demo's and the tools' minting).
pub fn mint_projects(keys: &Keys, projects: &[String], ttl: Duration, role: Role) -> String {
    let exp = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or(SystemTime::now())
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    keys.sign_claims(&ScopeClaims {
        feedback_id: None,
        projects: Some(projects.to_vec()),
        exp,
        role,
    })
}

/// The verified scope of the request's token (header, `?token=` or cookie, as for widgets), and
/// its expiry.
pub struct Authorized {
    pub scope: Scope,
    pub exp: u64,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri).ok();
        let token = find_token(
            &parts.headers,
            query.as_ref().and_then(|q| q.token.as_deref()),
        )?;
        let claims: ScopeClaims = state.keys.verify_as(token)?;
        Ok(Authorized {
            scope: claims.scope()?,
            exp: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(feedback_id: Option<Uuid>, projects: Option<Vec<&str>>) -> ScopeClaims {
        ScopeClaims {
            feedback_id,
            projects: projects.map(|p| p.into_iter().map(String::from).collect()),
            exp: u64::MAX / 2,
            role: Role::Agency,
        }
    }

    #[test]
    fn a_token_covers_one_thread_or_some_projects() {
        let thread = Uuid::new_v4();
        assert_eq!(
            claims(Some(thread), None).scope().unwrap(),
            Scope::Thread(thread.to_string().into())
        );
        let upper = "6F1C2B8E-8A7B-4D3C-9A57-0D3F8E1E2A10";
        let scope = claims(None, Some(vec![upper, "acme"])).scope().unwrap();
        assert!(scope.has_project("6f1c2b8e-8a7b-4d3c-9a57-0d3f8e1e2a10"));
        assert!(scope.has_project("acme"));
        assert!(!scope.has_project("other"));
        for bad in [
            claims(Some(thread), Some(vec!["acme"])),
            claims(None, None),
            claims(None, Some(vec![])),
        ] {
            assert!(bad.scope().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_minted_project_token_verifies() {
        let keys = Keys::new(b"secret");
        let token = mint_projects(
            &keys,
            &["p1".to_owned()],
            Duration::from_secs(60),
            Role::Agency,
        );
        let claims: ScopeClaims = keys.verify_as(&token).unwrap();
        assert_eq!(claims.projects, Some(vec!["p1".to_owned()]));
        assert!(
            keys.verify(&token).is_err(),
            "a project token is no widget token"
        );
    }
}
