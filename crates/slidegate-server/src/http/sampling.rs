//! The tracing middleware that decides first: a request not traced skips the root span, its request id and every span below it.
//!
//! `tracing_actix_web::TracingLogger` builds a root span for every request
//! (request id, user agent, route, target…) whether or not the trace is
//! sampled later. At a production sample ratio nearly every request is not,
//! so this middleware decides before anything is built
//! ([`crate::telemetry::request_is_traced`]: the caller's `traceparent`,
//! else the ratio), records the decision for the request's task
//! ([`slidegate_core::observe::traced_as`], which the OpenTelemetry layer
//! reads), and sends only traced requests through `TracingLogger`. The two
//! paths share the one inner service.

use std::rc::Rc;

use actix_web::Error;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use futures_util::future::{Either, LocalBoxFuture, MapOk, TryFutureExt};
use tokio::task::futures::TaskLocalFuture;
use tracing_actix_web::{StreamSpan, TracingLogger};

use super::RootSpan;

/// Wraps an app when tracing is on; `sample_ratio` as `tracing.sample_ratio`.
#[derive(Debug, Clone, Copy)]
pub struct SampledTracing {
    pub sample_ratio: f64,
}

/// The inner service, shared by the traced and the untraced path.
pub struct Shared<S>(Rc<S>);

impl<S, B> Service<ServiceRequest> for Shared<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, request: ServiceRequest) -> Self::Future {
        self.0.call(request)
    }
}

type Traced<S> = <TracingLogger<RootSpan> as Transform<Shared<S>, ServiceRequest>>::Transform;

/// `T`: the inner service behind `TracingLogger`; `S`: the inner service.
pub struct SampledTracingMiddleware<T, S> {
    traced: T,
    untraced: Shared<S>,
    sample_ratio: f64,
}

impl<S, B> Transform<S, ServiceRequest> for SampledTracing
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<StreamSpan<B>, B>>;
    type Error = Error;
    type Transform = SampledTracingMiddleware<Traced<S>, S>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Transform, Self::InitError>>;

    /// Once per worker, not per request.
    fn new_transform(&self, service: S) -> Self::Future {
        let shared = Rc::new(service);
        let sample_ratio = self.sample_ratio;
        let traced = TracingLogger::<RootSpan>::new().new_transform(Shared(Rc::clone(&shared)));
        Box::pin(async move {
            Ok(SampledTracingMiddleware {
                traced: traced.await?,
                untraced: Shared(shared),
                sample_ratio,
            })
        })
    }
}

type Wrapped<B> = ServiceResponse<EitherBody<StreamSpan<B>, B>>;

impl<T, S, B> Service<ServiceRequest> for SampledTracingMiddleware<T, S>
where
    T: Service<ServiceRequest, Response = ServiceResponse<StreamSpan<B>>, Error = Error>,
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = Wrapped<B>;
    type Error = Error;
    #[allow(clippy::type_complexity)]
    type Future = TaskLocalFuture<
        bool,
        Either<
            MapOk<T::Future, fn(ServiceResponse<StreamSpan<B>>) -> Wrapped<B>>,
            MapOk<S::Future, fn(ServiceResponse<B>) -> Wrapped<B>>,
        >,
    >;

    forward_ready!(untraced);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let traceparent = request
            .headers()
            .get("traceparent")
            .map(|value| value.as_bytes());
        let traced = crate::telemetry::request_is_traced(traceparent, self.sample_ratio);
        // `TracingLogger` builds its root span in `call` itself, before any
        // future runs: the decision must be in scope for that too.
        let serving = slidegate_core::observe::traced_while(traced, || {
            if traced {
                let left: fn(ServiceResponse<StreamSpan<B>>) -> Wrapped<B> =
                    |response| response.map_body(|_, body| EitherBody::left(body));
                Either::Left(self.traced.call(request).map_ok(left))
            } else {
                let right: fn(ServiceResponse<B>) -> Wrapped<B> =
                    |response| response.map_body(|_, body| EitherBody::right(body));
                Either::Right(self.untraced.call(request).map_ok(right))
            }
        });
        slidegate_core::observe::traced_as(traced, serving)
    }
}
