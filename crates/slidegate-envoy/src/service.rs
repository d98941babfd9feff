//! The tonic `RateLimitService`: Envoy's request in, the engine's answers spelled as Envoy's `RateLimitResponse` (codes, current limits, remaining, resets, optional headers).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ProtoUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use slidegate_core::{AllMustAdmit, Checked, RateLimitValues, Store};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::engine::{DescriptorAnswer, Engine, RlsError};
use crate::rules::Unit;

/// `Slidegate-Shadow-Decision`, as the HTTP API names it.
pub const SHADOW_HEADER: &str = "slidegate-shadow-decision";
/// `Slidegate-Fallback`, as the HTTP API names it.
pub const FALLBACK_HEADER: &str = "slidegate-fallback";

/// How calls are traced, from their metadata: the server's telemetry knows
/// the propagation format and the sample ratio, this crate does not.
pub trait CallTracing: Send + Sync + 'static {
    /// Whether this call is traced (its `traceparent`, else the ratio),
    /// decided before any span is built: a call not traced builds none
    /// (see [`slidegate_core::observe::traced_as`]).
    fn traced(&self, metadata: &MetadataMap) -> bool;

    /// Makes `span` a child of the caller's span named in `metadata`.
    fn continue_trace(&self, metadata: &MetadataMap, span: &Span);
}

/// Envoy's rate-limit service over an [`Engine`].
pub struct RlsService<S> {
    engine: Arc<Engine<S>>,
    response_headers: bool,
    tracing: Option<Arc<dyn CallTracing>>,
}

impl<S> Clone for RlsService<S> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            response_headers: self.response_headers,
            tracing: self.tracing.clone(),
        }
    }
}

impl<S: Store> RlsService<S> {
    /// `response_headers`: add the HTTP API's rate-limit headers to
    /// `response_headers_to_add` (`[envoy_rls] response_headers`).
    pub fn new(engine: Arc<Engine<S>>, response_headers: bool) -> Self {
        Self {
            engine,
            response_headers,
            tracing: None,
        }
    }

    /// Calls are traced as `tracing` decides, each span continuing the caller's trace.
    pub fn with_tracing(mut self, tracing: Arc<dyn CallTracing>) -> Self {
        self.tracing = Some(tracing);
        self
    }

    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }

    /// Decides `request` and spells the answer (the gRPC method without the transport).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a malformed request, `UNAVAILABLE` when a rule
    /// failing closed could not be decided, `INTERNAL` for a bug.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let answers = self
            .engine
            .decide_descriptors(request)
            .await
            .map_err(|error| match &error {
                RlsError::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
                RlsError::Unavailable(_) => {
                    tracing::warn!(error = %error, domain = %request.domain, "rate limit store could not decide");
                    Status::unavailable(error.to_string())
                }
                RlsError::Internal(_) => {
                    tracing::error!(error = %error, domain = %request.domain, "rate limit request failed");
                    Status::internal(error.to_string())
                }
            })?;
        let over = answers.iter().any(DescriptorAnswer::is_enforced_over);
        let response_headers_to_add = if self.response_headers {
            answering(&answers)
                .map(|checked| headers(&checked.rate_limit()))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses: answers.iter().map(status).collect(),
            response_headers_to_add,
            ..RateLimitResponse::default()
        })
    }
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for RlsService<S> {
    /// Traced as one server span (debug level, as the HTTP API's root
    /// spans: a replica that neither traces nor logs at debug skips it),
    /// named as OpenTelemetry names gRPC calls, around the limiter's own
    /// spans. The domain is recorded; descriptor values (which may identify
    /// people) are not.
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let call = async {
            let span = tracing::debug_span!(
                "ShouldRateLimit",
                otel.name = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = "envoy.service.ratelimit.v3.RateLimitService",
                rpc.method = "ShouldRateLimit",
                rpc.grpc.status_code = Empty,
                slidegate.rls.domain = Empty,
                slidegate.outcome = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                // A call of one descriptor makes one check, whose decision
                // the limiter records here (`observe::record_decision`);
                // `slidegate.outcome` stays the call's overall code.
                slidegate.policy = Empty,
                slidegate.algorithm = Empty,
                slidegate.cost = Empty,
                slidegate.remaining = Empty,
                slidegate.fallback = Empty,
                slidegate.store_error = Empty,
            );
            if !span.is_disabled() {
                if let Some(tracing) = &self.tracing {
                    tracing.continue_trace(request.metadata(), &span);
                }
                span.record("slidegate.rls.domain", request.get_ref().domain.as_str());
            }
            let answered = self
                .decide(request.get_ref())
                .instrument(span.clone())
                .await;
            if !span.is_disabled() {
                match &answered {
                    Ok(response) => {
                        span.record("rpc.grpc.status_code", 0);
                        let over = response.overall_code == Code::OverLimit as i32;
                        span.record("slidegate.outcome", if over { "over_limit" } else { "ok" });
                        span.record("otel.status_code", "OK");
                    }
                    Err(status) => {
                        span.record("rpc.grpc.status_code", status.code() as i32);
                        span.record("error.type", format!("{:?}", status.code()).as_str());
                        // A refused request is the caller's doing, as a 4xx is.
                        let verdict = if status.code() == tonic::Code::InvalidArgument {
                            "OK"
                        } else {
                            "ERROR"
                        };
                        span.record("otel.status_code", verdict);
                    }
                }
            }
            answered
        };
        let answered = match &self.tracing {
            Some(tracing) => {
                slidegate_core::observe::traced_as(tracing.traced(request.metadata()), call).await
            }
            None => call.await,
        };
        answered.map(Response::new)
    }
}

fn status(answer: &DescriptorAnswer) -> DescriptorStatus {
    match answer {
        DescriptorAnswer::NoLimit => DescriptorStatus {
            code: Code::Ok as i32,
            ..DescriptorStatus::default()
        },
        // As envoyproxy/ratelimit answers an unlimited descriptor.
        DescriptorAnswer::Unlimited => DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..DescriptorStatus::default()
        },
        DescriptorAnswer::Limited {
            rule,
            checked,
            over,
        } => DescriptorStatus {
            code: if *over && !rule.is_shadow() {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            current_limit: Some(RateLimit {
                name: rule.name().unwrap_or_default().to_owned(),
                requests_per_unit: u32::try_from(rule.requests_per_unit()).unwrap_or(u32::MAX),
                unit: rule.unit().map_or(ProtoUnit::Unknown, proto_unit) as i32,
            }),
            limit_remaining: u32::try_from(checked.decision.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(proto_duration(checked.decision.reset_after)),
            ..DescriptorStatus::default()
        },
    }
}

fn proto_unit(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
    }
}

fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// The descriptor whose values the headers show, chosen as the HTTP API
/// chooses among several policies (the core's `AllMustAdmit`): the first
/// enforced one over its limit, else the tightest.
fn answering(answers: &[DescriptorAnswer]) -> Option<Checked> {
    let mut all = AllMustAdmit::new();
    for answer in answers {
        let DescriptorAnswer::Limited { checked, over, .. } = answer else {
            continue;
        };
        let mut checked = checked.clone();
        if *over && checked.decision.allowed {
            // Over by a peek (after an earlier denial, or a cost above the
            // limit): answer as the denial it is, waiting at least the reset.
            checked.decision.allowed = false;
            checked.decision.retry_after = checked.decision.reset_after;
        }
        if let ControlFlow::Break(denial) = all.add(checked) {
            return Some(denial);
        }
    }
    all.answer()
}

/// The HTTP API's rate-limit headers, with the same names and values
/// (`RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`, `Retry-After` on an
/// enforced denial, and slidegate's shadow and fallback markers).
pub fn headers(values: &RateLimitValues<'_>) -> Vec<HeaderValue> {
    let name = values.policy;
    let mut headers = vec![
        (
            "ratelimit-policy",
            format!("\"{name}\";q={};w={}", values.limit, values.window_secs),
        ),
        (
            "ratelimit",
            format!("\"{name}\";r={};t={}", values.remaining, values.reset_secs),
        ),
        ("x-ratelimit-limit", values.limit.to_string()),
        ("x-ratelimit-remaining", values.remaining.to_string()),
        ("x-ratelimit-reset", values.reset_secs.to_string()),
    ];
    if let Some(verdict) = values.shadow_decision {
        headers.push((SHADOW_HEADER, verdict.to_owned()));
    }
    if let Some(seconds) = values.retry_after_secs {
        headers.push(("retry-after", seconds.to_string()));
    }
    if let Some(mode) = values.fallback {
        headers.push((FALLBACK_HEADER, mode.as_str().to_owned()));
    }
    headers
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key: key.to_owned(),
            value,
            ..HeaderValue::default()
        })
        .collect()
}
