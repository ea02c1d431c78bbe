//! Widget tokens: HS256 JWTs naming the one thread (`feedback_id`) their bearer may read, and the
//! extractor that finds and checks them on a request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// The cookie a same-site page may carry the token in.
pub const TOKEN_COOKIE: &str = "threadcast_token";

/// Seconds of clock skew allowed past a token's `exp` (between the minting backend and the
/// broadcaster). A dashboard stream ends when its token would no longer be accepted: `exp` plus
/// this.
pub const LEEWAY_SECS: u64 = 30;

/// Who the bearer is; an application's backend says so when it mints the token.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person who left the feedback (the widget's user).
    #[default]
    EndUser,
    /// Someone answering on behalf of the agency.
    Agency,
}

impl Role {
    /// The name tokens and the `author_type` column use: `end_user` or `agency`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::EndUser => "end_user",
            Role::Agency => "agency",
        }
    }
}

/// The claims of a widget token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The one thread this token may read.
    pub feedback_id: Uuid,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub role: Role,
    /// Who the token was minted for (the application's user id): open streams are capped per
    /// subject. Without it, the subject is the thread and role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Not valid before, seconds since the Unix epoch (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Who issued it, and for whom: checked against `--jwt-issuer` and `--jwt-audience` when
    /// those are set (by the token library, which also takes an audience list); written by
    /// [`Keys::mint`] when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub aud: Option<String>,
}

/// The shortest token secret accepted: HS256's own key size (RFC 7518 section 3.2 requires a key
/// of at least the hash's 256 bits). A short one can be found by brute force from one token.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token must name, beyond its thread and expiry: both optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    /// The `iss` every token must carry (`--jwt-issuer`).
    pub issuer: Option<String>,
    /// The `aud` every token must carry (`--jwt-audience`).
    pub audience: Option<String>,
}

/// Signs and checks tokens with one HS256 secret.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pins: Pins,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Keys::pinned(secret, Pins::default())
    }

    /// Keys that also require (and mint) the issuer and audience of `pins`.
    pub fn pinned(secret: &[u8], pins: Pins) -> Self {
        // Pinning the algorithm is what refuses `alg: none`, RS256 with the secret as a public
        // key, and the like; `exp` is required, not merely checked when present, and `nbf` is
        // checked when present, with the same leeway for clock skew.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &pins.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &pins.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            pins,
        }
    }

    /// A token for `feedback_id` that expires `ttl` from now, with the pinned issuer and audience.
    pub fn mint(&self, feedback_id: Uuid, ttl: Duration, role: Role) -> String {
        let exp = SystemTime::now()
            .checked_add(ttl)
            .unwrap_or(SystemTime::now())
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sign(&Claims {
            feedback_id,
            exp,
            role,
            iss: self.pins.issuer.clone(),
            aud: self.pins.audience.clone(),
            ..Claims::default()
        })
    }

    /// Signs exactly these claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_claims(claims)
    }

    /// Signs claims of any shape: a widget's [`Claims`], or a dashboard token's
    /// ([`crate::dashboard::ScopeClaims`]).
    pub fn sign_claims(&self, claims: &impl Serialize) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a valid token; the error says why a token is not.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.verify_as(token)
    }

    /// The claims of a valid token, read as `T` (the same checks as [`Keys::verify`]).
    pub fn verify_as<T: DeserializeOwned>(&self, token: &str) -> Result<T, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                    ErrorKind::InvalidSignature => "the token's signature is not valid".to_owned(),
                    ErrorKind::InvalidAlgorithm => "the token must be signed with HS256".to_owned(),
                    ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
                    ErrorKind::InvalidIssuer => "the token is from another issuer".to_owned(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("the token has no {claim} claim")
                    }
                    _ => "the token is malformed".to_owned(),
                };
                ApiError::Unauthorized(why)
            })
    }
}

/// The token of a request: `Authorization: Bearer`, else `?token=`, else the cookie. The query
/// form exists because a browser's EventSource cannot send headers.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Result<&'a str, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("the Authorization header is malformed".into()))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
        return Ok(token.trim());
    }
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("a token is required".into()))
}

/// The verified claims of the request's token; rejects with 401 when there is none that checks.
pub struct Authenticated(pub Claims);

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // A query that does not parse has no usable `token`; the handler reports its own
        // parameters, so this extractor only looks for the token.
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri).ok();
        let query_token = query.as_ref().and_then(|q| q.token.as_deref());
        let token = find_token(&parts.headers, query_token)?;
        state.keys.verify(token).map(Authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys() -> Keys {
        Keys::new(b"test-secret")
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let id = Uuid::new_v4();
        let claims = keys()
            .verify(&keys().mint(id, Duration::from_secs(60), Role::Agency))
            .unwrap();
        assert_eq!((claims.feedback_id, claims.role), (id, Role::Agency));
    }

    #[test]
    fn role_defaults_to_end_user() {
        let token = keys().sign(&Claims {
            feedback_id: Uuid::nil(),
            exp: u64::MAX / 2,
            ..Claims::default()
        });
        assert_eq!(keys().verify(&token).unwrap().role, Role::EndUser);
    }

    #[test]
    fn another_secret_is_refused() {
        let token = Keys::new(b"other").mint(Uuid::nil(), Duration::from_secs(60), Role::EndUser);
        assert!(matches!(
            keys().verify(&token),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn the_header_wins_over_query_and_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("threadcast_token=from-cookie"),
        );
        assert_eq!(
            find_token(&headers, Some("from-query")).unwrap(),
            "from-header"
        );
    }

    #[test]
    fn the_query_wins_over_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; threadcast_token=from-cookie"),
        );
        assert_eq!(
            find_token(&headers, Some("from-query")).unwrap(),
            "from-query"
        );
        assert_eq!(find_token(&headers, None).unwrap(), "from-cookie");
    }

    #[test]
    fn a_non_bearer_authorization_header_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert!(find_token(&headers, Some("ignored")).is_err());
    }
}
