//! Every error the HTTP API can answer, mapped to a status and a JSON body in this one place.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::limiter::{CheckError, StoreError};

/// An error answered to a client as `{"error": "<code>", "message": "<what is wrong>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read")]
    UnreadableBody,
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request is invalid: {0}")]
    InvalidRequest(String),
    #[error("no route for this path; see the README for the API")]
    NotFound,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error(transparent)]
    Check(#[from] CheckError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl ApiError {
    /// Stable, machine-readable code for clients to branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnreadableBody => "unreadable_body",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Check(CheckError::UnknownPolicy(_)) => "unknown_policy",
            ApiError::Check(CheckError::InvalidKey(_)) => "invalid_key",
            ApiError::Check(CheckError::CostExceedsLimit { .. }) => "cost_exceeds_limit",
            ApiError::Check(CheckError::Store(_)) => "limiter_unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnreadableBody | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Check(CheckError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Check(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            // The cause stays in the log; the client learns only that it is
            // not at fault and may retry.
            ApiError::Check(CheckError::Store(cause)) => {
                log_store_failure(cause);
                "the rate limiter cannot reach its store right now; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Check(CheckError::Store(_)) = self {
            // The store is expected back (a restart, a breaker cool-down of
            // about a second); a client that honours this does not hammer it.
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(1u32)));
        }
        response.json(ErrorBody {
            error: self.code(),
            message: &message,
        })
    }
}

fn log_store_failure(cause: &StoreError) {
    // Debug, not warn: during an outage this fires per request, and readiness
    // already reports the store's state once per probe.
    tracing::debug!(error = %cause, "check failed in the store");
}
