//! `POST /v1/check`: one decision, with the JSON body and rate-limit headers clients rely on.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::HttpState;
use super::error::ApiError;
use slidegate_core::{ApiKeyDigest, CheckError, Checked, FailureMode, PresentedApiKey, Store};

/// Header carrying what a shadow policy would have decided: `allowed` or `denied`.
pub const SHADOW_HEADER: &str = "slidegate-shadow-decision";

/// The message every denial carries, as clients of the system we replace expect it.
pub const DENIED_MESSAGE: &str = "Rate limit exceeded. Please try again later.";

/// Marks a decision the shared store did not make: its value is the failure
/// mode that made it (`open` or `local`). Absent on every other decision.
pub const FALLBACK_HEADER: &str = "slidegate-fallback";

/// The body of a check. Strings borrow from the request body where they can,
/// so parsing a typical check allocates nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest<'a> {
    #[serde(borrow)]
    policy: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    cost: Option<u64>,
}

#[derive(Serialize)]
struct DecisionBody<'a> {
    allowed: bool,
    policy: &'a str,
    limit: u64,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    /// Only for a policy in shadow mode: what it would have decided. The
    /// check itself is always admitted then.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_decision: Option<&'static str>,
    /// As [`FALLBACK_HEADER`].
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<FailureMode>,
}

pub async fn check<S: Store>(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    require_json(&request)?;
    let limit = state.max_body_bytes;
    let bytes = body
        .to_bytes_limited(limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?
        .map_err(|_| ApiError::UnreadableBody)?;
    let parsed: CheckRequest<'_> = serde_json::from_slice(&bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::InvalidRequest(error.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(error.to_string())
            }
        }
    })?;
    let api_key =
        presented_api_key(&request).inspect_err(|_| state.metrics.auth_failure("check"))?;
    let checked = state
        .limiter
        .check_as(api_key.as_ref(), &parsed.policy, &parsed.key, parsed.cost)
        .await
        .inspect_err(|error| {
            if matches!(error, CheckError::UnknownApiKey) {
                state.metrics.auth_failure("check");
            }
        })?;
    Ok(decision_response(&checked))
}

/// The digest of the API key the request presents, read by the core's one
/// rule ([`PresentedApiKey::read`]); a credential header without a usable
/// key is refused (401). The key itself goes no further than this function.
fn presented_api_key(request: &HttpRequest) -> Result<Option<ApiKeyDigest>, ApiError> {
    let headers = request.headers();
    let presented = PresentedApiKey::read(
        headers.get("x-api-key").map(HeaderValue::as_bytes),
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    match presented {
        PresentedApiKey::Absent => Ok(None),
        PresentedApiKey::Key(key) => Ok(Some(ApiKeyDigest::of(key))),
        PresentedApiKey::Malformed => Err(CheckError::UnknownApiKey.into()),
    }
}

pub(super) fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// 200 or 429 with the decision as JSON and headers in two dialects:
/// `RateLimit-Policy`/`RateLimit` from draft-ietf-httpapi-ratelimit-headers,
/// and the older `X-RateLimit-*` that many clients still read. What goes in
/// them (shadow, rounding, when to say `Retry-After`) is the core's
/// [`Checked::rate_limit`]; this only spells it in HTTP.
pub fn decision_response(checked: &Checked) -> HttpResponse {
    let values = checked.rate_limit();
    let name = values.policy;
    let status = if values.admitted {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = HttpResponse::build(status);
    // Policy names are [A-Za-z0-9_.-], so they are valid inside a quoted header string.
    if let Ok(value) = HeaderValue::try_from(format!(
        "\"{name}\";q={};w={}",
        values.limit, values.window_secs
    )) {
        response.insert_header((HeaderName::from_static("ratelimit-policy"), value));
    }
    if let Ok(value) = HeaderValue::try_from(format!(
        "\"{name}\";r={};t={}",
        values.remaining, values.reset_secs
    )) {
        response.insert_header((HeaderName::from_static("ratelimit"), value));
    }
    response
        .insert_header((
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(values.limit),
        ))
        .insert_header((
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(values.remaining),
        ))
        .insert_header((
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(values.reset_secs),
        ));
    if let Some(verdict) = values.shadow_decision {
        response.insert_header((HeaderName::from_static(SHADOW_HEADER), verdict));
    }
    if let Some(seconds) = values.retry_after_secs {
        response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
    }
    if let Some(mode) = values.fallback {
        response.insert_header((
            HeaderName::from_static(FALLBACK_HEADER),
            HeaderValue::from_static(mode.as_str()),
        ));
    }
    response.json(DecisionBody {
        allowed: values.admitted,
        policy: name,
        limit: values.limit,
        remaining: values.remaining,
        reset_after_ms: values.reset_after_ms,
        retry_after_ms: values.retry_after_ms,
        message: (!values.admitted).then_some(DENIED_MESSAGE),
        shadow_decision: values.shadow_decision,
        fallback: values.fallback,
    })
}
