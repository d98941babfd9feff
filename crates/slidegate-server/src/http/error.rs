//! Every error the HTTP API can answer, mapped to a status and a JSON body in this one place.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use slidegate_catalog::CatalogError;
use slidegate_core::{CheckError, StoreError};

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
    #[error("forward-auth needs the protected request's path in X-Forwarded-Uri or X-Original-URI")]
    MissingForwardedUri,
    #[error("no policy covers this request, and forward_auth.no_match is deny")]
    NoMatchingPolicy,
    #[error("no route for this path; see the README for the API")]
    NotFound,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The admin token is missing or wrong. Says nothing about which.
    #[error("a valid admin token is required: Authorization: Bearer <token>")]
    Unauthorized,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    /// The invalid field, for validation errors of the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
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
            ApiError::MissingForwardedUri => "missing_forwarded_uri",
            ApiError::NoMatchingPolicy => "no_matching_policy",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Check(CheckError::UnknownPolicy(_)) => "unknown_policy",
            ApiError::Check(CheckError::UnknownApiKey) => "invalid_api_key",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Catalog(CatalogError::Unavailable(_) | CatalogError::SchemaTooNew { .. }) => {
                "catalog_unavailable"
            }
            ApiError::Catalog(CatalogError::NotFound(_)) => "not_found",
            ApiError::Catalog(CatalogError::Conflict(_)) => "conflict",
            ApiError::Catalog(CatalogError::Invalid(_)) => "invalid_policy",
            ApiError::Catalog(CatalogError::Database(_) | CatalogError::Url(_)) => "internal",
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
            ApiError::UnreadableBody
            | ApiError::MalformedJson(_)
            | ApiError::MissingForwardedUri => StatusCode::BAD_REQUEST,
            // 403, not 429: waiting will not help, and nginx's auth_request passes 403 on.
            ApiError::NoMatchingPolicy => StatusCode::FORBIDDEN,
            ApiError::InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Check(CheckError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Check(CheckError::UnknownApiKey) | ApiError::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Catalog(error) => match error {
                CatalogError::Unavailable(_) | CatalogError::SchemaTooNew { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
                CatalogError::Conflict(_) => StatusCode::CONFLICT,
                CatalogError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                CatalogError::Database(_) | CatalogError::Url(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
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
            ApiError::Catalog(cause @ (CatalogError::Database(_) | CatalogError::Url(_))) => {
                tracing::error!(error = %cause, "an admin request failed in the database");
                "the policy database failed; see the replica's log".to_owned()
            }
            ApiError::Catalog(CatalogError::Invalid(invalid)) => invalid.message.clone(),
            other => other.to_string(),
        };
        let field = match self {
            ApiError::Catalog(CatalogError::Invalid(invalid)) => Some(invalid.field.as_str()),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::Check(CheckError::Store(_)) = self {
            // The store is expected back (a restart, a breaker cool-down of
            // about a second); a client that honours this does not hammer it.
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(1u32)));
        }
        response.json(ErrorBody {
            error: self.code(),
            message: &message,
            field,
        })
    }
}

fn log_store_failure(cause: &StoreError) {
    // Debug, not warn: during an outage this fires per request, and readiness
    // already reports the store's state once per probe.
    tracing::debug!(error = %cause, "check failed in the store");
}
