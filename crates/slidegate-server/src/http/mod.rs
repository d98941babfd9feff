//! The HTTP API: routes, extraction of checks from requests, and responses. Knows the limiter, never a store's internals.

pub mod admin;
pub mod check;
pub mod documents;
pub mod error;
pub mod forward_auth;
pub mod health;
pub mod sampling;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::{HttpResponse, web};

use crate::metrics::{self, Metrics};
use slidegate_catalog::Catalog;
use slidegate_core::probe::Probes;
use slidegate_core::{Limiter, Store};

pub use error::ApiError;
pub use forward_auth::ForwardAuth;
pub use sampling::SampledTracing;

/// What every handler shares: the limiter, its metrics, request-size limits,
/// forward-auth's rules, whether the replica is draining, and the catalog and
/// admin token when Postgres is configured.
pub struct HttpState<S> {
    pub limiter: Limiter<S>,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub forward_auth: ForwardAuth,
    /// Set on SIGTERM/SIGINT: readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    pub catalog: Option<Arc<Catalog>>,
    /// `None`: the admin API is off.
    pub admin_token: Option<admin::AdminToken>,
    /// The dependencies' last probe answers, which readiness reports.
    pub probes: Probes,
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The only listener (no `server.admin_bind`): every route.
    All,
    /// The public side next to an admin listener: checks, forward-auth and
    /// health; the admin API and `/metrics` answer 404 here.
    Public,
    /// The operators' side (`server.admin_bind`): the admin API, `/metrics`
    /// and health; checks answer 404 here.
    Admin,
}

impl Listener {
    fn serves_checks(self) -> bool {
        self != Listener::Admin
    }

    fn serves_operators(self) -> bool {
        self != Listener::Public
    }
}

/// Middleware (`App::wrap_fn`): while the replica drains, every response
/// closes its connection.
///
/// A proxy that keeps connections to replicas alive (the shipped nginx does)
/// would otherwise go on sending over them until the replica closes them at
/// shutdown, and a check written to a connection at the moment it closes
/// fails without being retried (nginx never resends a POST it has sent).
/// Closed by our response instead, the connection is dropped by the proxy
/// before it is reused, and the next check opens a new one, refused and
/// retried elsewhere once the listener is closed.
///
/// Judged when the response is ready, so a request that began before the
/// drain and ends during it closes its connection too.
pub fn close_connections_while_draining<T>(
    draining: &Arc<AtomicBool>,
    request: ServiceRequest,
    service: &T,
) -> impl Future<Output = Result<ServiceResponse, actix_web::Error>> + use<T>
where
    T: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
{
    let draining = Arc::clone(draining);
    let response = service.call(request);
    async move {
        let mut response = response.await?;
        if draining.load(Ordering::Relaxed) {
            response
                .response_mut()
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        Ok(response)
    }
}

/// Registers the routes `listener` serves (anything else is 404
/// `not_found`); the store type is fixed by the caller (see `startup`).
pub fn routes<S: Store>(listener: Listener, config: &mut web::ServiceConfig) {
    if listener.serves_checks() {
        config
            .service(
                web::resource("/v1/check")
                    .route(web::post().to(check::check::<S>))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource([
                    forward_auth::PATH.to_owned(),
                    format!("{}/{{tail:.*}}", forward_auth::PATH),
                ])
                .route(web::route().to(forward_auth::forward_auth::<S>)),
            );
    }
    config
        .service(
            web::resource("/health/live")
                .route(web::get().to(health::live))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/health/ready")
                .route(web::get().to(health::ready::<S>))
                .default_service(web::to(method_not_allowed)),
        );
    if listener.serves_operators() {
        config.configure(admin::routes::<S>).service(
            web::resource("/metrics")
                .route(web::get().to(scrape::<S>))
                .default_service(web::to(method_not_allowed)),
        );
    }
    config.default_service(web::to(not_found));
}

/// `GET /metrics`: every metric in the Prometheus text format.
async fn scrape<S: Store>(state: web::Data<HttpState<S>>) -> HttpResponse {
    let mut pools = state.limiter.store().pools();
    if let Some(catalog) = &state.catalog {
        pools.push(catalog.pool_stats());
    }
    let catalog = state
        .catalog
        .as_ref()
        .map(|catalog| (catalog.synced(), catalog.stats()));
    let body = state.metrics.render(
        &pools,
        state.limiter.failover(),
        catalog,
        &state.limiter.memory_stats(),
        state.limiter.store().cluster_stats().as_ref(),
    );
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(body)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub(crate) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
