//! The root span of each traced request: OpenTelemetry HTTP field names, the caller's `traceparent` continued.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::field::Empty;
use tracing::{Level, Span};
use tracing_actix_web::RootSpanBuilder;

use super::ApiError;

/// Used with `tracing_actix_web::TracingLogger`, installed only when tracing is on.
pub struct RootSpan;

impl RootSpanBuilder for RootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        // Probes and scrapes arrive every few seconds from every load balancer
        // and Prometheus; their traces would bury those of checks.
        let path = request.path();
        if path.starts_with("/health/") || path == "/metrics" {
            return Span::none();
        }
        // `http.method`, `http.route`, `http.target`, `otel.kind = server`…,
        // and the parent taken from `traceparent` by the global propagator.
        // Debug level, like the limiter's spans: the log layer (at info) then
        // never formats its fields for every request, while log lines still
        // carry the trace and span ids, which is what correlating needs.
        tracing_actix_web::root_span!(level = Level::DEBUG, request, error.type = Empty)
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if span.is_disabled() {
            return;
        }
        let (status, error) = match outcome {
            Ok(response) => (response.status(), response.response().error()),
            Err(error) => (error.as_response_error().status_code(), Some(error)),
        };
        span.record("http.status_code", status.as_u16());
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
}
