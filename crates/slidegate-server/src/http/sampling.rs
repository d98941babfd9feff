//! The tracing middleware that decides first: a request not traced builds no span at all; a traced one gets a lean root span that continues the caller's `traceparent`.
//!
//! At a production sample ratio nearly every request is not traced, so the
//! decision comes before anything is built
//! ([`crate::telemetry::request_is_traced`]: the caller's `traceparent`,
//! else the ratio) and is recorded for the request's task
//! ([`slidegate_core::observe::traced_as`], which the OpenTelemetry layer
//! reads). An untraced request goes straight to the app.
//!
//! A traced request gets the root span built here rather than by
//! `tracing-actix-web`, whose root span has 17 fields (host, client IP, user
//! agent, target, a fresh request id…) formatted on every request: measured
//! with `tests/load/instructions.sh`, building and exporting it was the
//! largest single cost of a traced check. This one carries what a trace of a
//! rate-limit check is read for: method, route, status, error type. It never
//! carries the target or query (they can hold the limiter key) or the
//! client's address.

use std::rc::Rc;

use actix_web::Error;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::HeaderMap;
use futures_util::future::{Either, LocalBoxFuture, Ready, ready};
use tokio::task::futures::TaskLocalFuture;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::ApiError;

/// Wraps an app when tracing is on; `sample_ratio` as `tracing.sample_ratio`.
#[derive(Debug, Clone, Copy)]
pub struct SampledTracing {
    pub sample_ratio: f64,
}

pub struct SampledTracingMiddleware<S> {
    service: Rc<S>,
    sample_ratio: f64,
}

impl<S, B> Transform<S, ServiceRequest> for SampledTracing
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = SampledTracingMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    /// Once per worker, not per request.
    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SampledTracingMiddleware {
            service: Rc::new(service),
            sample_ratio: self.sample_ratio,
        }))
    }
}

type Served<B> = Result<ServiceResponse<B>, Error>;

impl<S, B> Service<ServiceRequest> for SampledTracingMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    /// Untraced: the app's own future, nothing added. Traced: boxed, one
    /// allocation next to the spans it already builds.
    type Future = TaskLocalFuture<bool, Either<LocalBoxFuture<'static, Served<B>>, S::Future>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let traceparent = request
            .headers()
            .get("traceparent")
            .map(|value| value.as_bytes());
        let traced = crate::telemetry::request_is_traced(traceparent, self.sample_ratio);
        // Handlers and extractors may build spans in `call` itself, before
        // any future runs: the decision must be in scope for that too.
        let serving = slidegate_core::observe::traced_while(traced, || {
            if !traced {
                return Either::Right(self.service.call(request));
            }
            let span = root_span(&request);
            let serving = span.in_scope(|| self.service.call(request));
            Either::Left(Box::pin(async move {
                let served = serving.instrument(span.clone()).await;
                record_outcome(&span, &served);
                served
            }) as LocalBoxFuture<'static, Served<B>>)
        });
        slidegate_core::observe::traced_as(traced, serving)
    }
}

/// The server span of one traced request, child of the caller's span when
/// the request carries a `traceparent`. Probes and scrapes get none: they
/// arrive every few seconds from every load balancer and Prometheus, and
/// their traces would bury those of checks.
fn root_span(request: &ServiceRequest) -> Span {
    let path = request.path();
    if path.starts_with("/health/") || path == "/metrics" {
        return Span::none();
    }
    let method = request.method().as_str();
    let route = request.match_pattern();
    let route = route.as_deref().unwrap_or("default");
    // Debug level, like the limiter's spans: the log layer (at info) never
    // formats its fields, while log lines still carry the trace and span
    // ids, which is what correlating needs. The field names are the ones
    // `tracing-actix-web` used, so dashboards built on them keep working.
    let name = span_name(method, route);
    let span = tracing::debug_span!(
        "HTTP request",
        otel.name = name.as_ref(),
        otel.kind = "server",
        http.method = method,
        http.route = route,
        http.status_code = Empty,
        otel.status_code = Empty,
        error.type = Empty,
        // A single check's decision, recorded by the limiter
        // (`slidegate_core::observe::record_decision`): the check has no
        // span of its own, which saves a span per traced request.
        slidegate.policy = Empty,
        slidegate.algorithm = Empty,
        slidegate.cost = Empty,
        slidegate.outcome = Empty,
        slidegate.remaining = Empty,
        slidegate.fallback = Empty,
        slidegate.store_error = Empty,
    );
    if request.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        // Fails only for a span already started or not recorded; neither is
        // a reason to refuse the request.
        let _ = span.set_parent(parent);
    }
    span
}

/// `"{method} {route}"`, as OpenTelemetry names server spans; not
/// formatted for `POST /v1/check`, the route of nearly every traced request.
fn span_name(method: &str, route: &str) -> std::borrow::Cow<'static, str> {
    match (method, route) {
        ("POST", "/v1/check") => "POST /v1/check".into(),
        _ => format!("{method} {route}").into(),
    }
}

/// Status, error type and verdict, recorded as the response is ready.
fn record_outcome<B>(span: &Span, served: &Served<B>) {
    if span.is_disabled() {
        return;
    }
    let (status, error) = match served {
        Ok(response) => (response.status(), response.response().error()),
        Err(error) => (error.as_response_error().status_code(), Some(error)),
    };
    // An i64: `tracing-opentelemetry` would export a u16 as a formatted string.
    span.record("http.status_code", i64::from(status.as_u16()));
    if let Some(error) = error {
        // The stable code, not the message: messages can echo what the
        // client sent, and that may be the key.
        let code = error
            .as_error::<ApiError>()
            .map_or("internal", ApiError::code);
        span.record("error.type", code);
    }
    // A 4xx is the client's doing: the request was served as designed.
    let verdict = if status.is_server_error() {
        "ERROR"
    } else {
        "OK"
    };
    span.record("otel.status_code", verdict);
}

/// Reads request headers as OpenTelemetry's propagators read a carrier.
struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
