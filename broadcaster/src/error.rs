//! `ApiError`: every way an HTTP request can fail, each answered with its status and a JSON body
//! `{"error": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered to an HTTP client. Client mistakes say what was wrong; internal errors are
/// logged in full and answered with a generic message so that nothing internal leaks.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (a missing or bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// No usable token: missing, malformed, expired, badly signed, or of another algorithm.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that does not grant what was asked.
    #[error("{0}")]
    Forbidden(String),
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is already stored (an id reused for something else).
    #[error("{0}")]
    Conflict(String),
    /// The body, or a part of it, is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not of the media type the endpoint reads (JSON).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request is well-formed but its content is not acceptable (for example empty).
    #[error("{0}")]
    Unprocessable(String),
    /// The client sends faster than allowed; it may try again after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The server cannot take this request now (capacity, or the database is unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps an unexpected failure.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(error.into())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %chain(&**cause), "internal error answering a request");
        }
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// An error and its sources on one line (`db error: ERROR: terminating connection ...`):
/// several drivers say little more than "db error" at the top.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let error = ApiError::internal("password authentication failed for user secret_admin");
        assert_eq!(error.to_string(), "internal error");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn client_errors_map_to_their_status() {
        let cases = [
            (ApiError::BadRequest("x".into()), StatusCode::BAD_REQUEST),
            (ApiError::Unauthorized("x".into()), StatusCode::UNAUTHORIZED),
            (ApiError::Forbidden("x".into()), StatusCode::FORBIDDEN),
            (ApiError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (ApiError::Conflict("x".into()), StatusCode::CONFLICT),
            (
                ApiError::PayloadTooLarge("x".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                ApiError::Unprocessable("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                ApiError::TooManyRequests {
                    message: "x".into(),
                    retry_after_secs: 1,
                },
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                ApiError::Unavailable("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.into_response().status(), status);
        }
    }
}
