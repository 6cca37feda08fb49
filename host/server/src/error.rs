//! The one place errors become HTTP responses: `{"error": {"code", "message", ...details}}`.
//!
//! Internal detail never reaches the client: a 5xx is logged with the request's span (which
//! carries the request id) and answered with a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401: missing or bad credentials.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 401 on login: unknown user or wrong password (the same answer for both).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// 403: authenticated, not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 403 `policy_denied`: the provider's quota rule refuses the request.
    #[error("refused by policy: {0}")]
    PolicyDenied(String),
    /// 400 `invalid_module`: an uploaded component is not a valid policy.
    #[error("{0}")]
    InvalidModule(String),
    /// 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the route exists, the method does not.
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// 409: a conflicting resource or a request still running.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: understood but not processable (e.g. an idempotency key reused with another body).
    #[error("{0}")]
    Unprocessable(String),
    /// 429 `rate_limit_exceeded`.
    #[error("rate limit exceeded: retry in {retry_after_ms} ms")]
    RateLimited {
        /// The exact wait.
        retry_after_ms: u64,
        /// Extra fields for the body and headers.
        details: Map<String, Value>,
    },
    /// 429 `insufficient_quota`, naming the exhausted scope.
    #[error("{scope} quota exhausted")]
    InsufficientQuota {
        /// `user` or `org`.
        scope: &'static str,
        /// Extra fields for the body.
        details: Map<String, Value>,
    },
    /// 429 for too many login attempts.
    #[error("too many login attempts: retry in {retry_after_ms} ms")]
    TooManyAttempts {
        /// The wait.
        retry_after_ms: u64,
    },
    /// 503: a backend is unavailable.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 500: logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<leaky_store::StoreError> for ApiError {
    fn from(err: leaky_store::StoreError) -> Self {
        match err {
            leaky_store::StoreError::Conflict(what) => Self::Conflict(format!("{what} is already taken")),
            leaky_store::StoreError::WriterGone => Self::Unavailable("the service is shutting down"),
            // Every connection stayed busy for the pool's whole wait: overload, not a fault.
            leaky_store::StoreError::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("no database connection came free in time");
                Self::Unavailable("the database is busy; nothing was changed, retry")
            }
            leaky_store::StoreError::CommitFailed(reason) => {
                tracing::error!(%reason, "group commit failed");
                Self::Unavailable("the ledger could not commit; nothing was spent, retry")
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<crate::services::policies::PolicyError> for ApiError {
    fn from(err: crate::services::policies::PolicyError) -> Self {
        use crate::services::policies::PolicyError;
        match err {
            PolicyError::InvalidModule(reason) => Self::InvalidModule(reason),
            PolicyError::InvalidBinding(reason) => Self::InvalidRequest(reason),
            PolicyError::NotFound(what) => Self::NotFound(what),
            PolicyError::Conflict(reason) => Self::Conflict(reason),
            PolicyError::Store(err) => err.into(),
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PolicyDenied(_) => (StatusCode::FORBIDDEN, "policy_denied"),
            Self::InvalidModule(_) => (StatusCode::BAD_REQUEST, "invalid_module"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
            Self::InsufficientQuota { .. } => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
            Self::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                "internal error; the request id identifies it in the logs".to_string()
            }
            other => other.to_string(),
        };
        let mut error = Map::new();
        error.insert("code".into(), json!(code));
        error.insert("message".into(), json!(message));
        let mut retry_after = None;
        match self {
            Self::RateLimited { retry_after_ms, details } => {
                error.insert("retryAfterMs".into(), json!(retry_after_ms));
                error.extend(details);
                retry_after = Some(retry_after_ms);
            }
            Self::InsufficientQuota { scope, details } => {
                error.insert("scope".into(), json!(scope));
                error.extend(details);
            }
            Self::TooManyAttempts { retry_after_ms } => {
                error.insert("retryAfterMs".into(), json!(retry_after_ms));
                retry_after = Some(retry_after_ms);
            }
            _ => {}
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if let Some(ms) = retry_after.filter(|ms| *ms > 0) {
            let seconds = ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"leaky-tokens\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_too_busy_to_lend_a_connection_is_503_and_other_faults_500() {
        let busy: ApiError = leaky_store::StoreError::Database(sqlx::Error::PoolTimedOut).into();
        assert_eq!(busy.parts(), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        let broken: ApiError = leaky_store::StoreError::Corrupt("a row".into()).into();
        assert_eq!(broken.parts(), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }
}
