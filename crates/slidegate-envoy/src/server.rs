//! The gRPC server Envoy calls: the rate-limit service, the standard health service (SERVING while the replica is ready) and server reflection.

use std::future::Future;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use slidegate_core::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::reflection;
use crate::service::RlsService;

/// Why the gRPC server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `bind` and serves until `shutdown` completes (then stops taking
/// connections and lets calls in flight finish).
///
/// `ready` is what the gRPC health service answers, for the server as a
/// whole (`""`) and for `envoy.service.ratelimit.v3.RateLimitService`:
/// `SERVING` while it holds `true`, `NOT_SERVING` while `false`, so a
/// health-checking Envoy or Kubernetes' gRPC probe sees what `/health/ready`
/// says. A sender dropped leaves the last answer in place.
///
/// # Errors
/// [`ServeError`] when the address cannot be bound or the server fails.
pub async fn serve<S: Store>(
    bind: SocketAddr,
    service: RlsService<S>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    serve_on(listener, service, ready, shutdown).await
}

/// As [`serve`], on a listener already bound (tests bind port 0 and read
/// the address first).
///
/// # Errors
/// [`ServeError`] when the server fails.
pub async fn serve_on<S: Store>(
    listener: TcpListener,
    service: RlsService<S>,
    mut ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let answer = async move |serving: bool| {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health.set_service_status(RATE_LIMIT_SERVICE, status).await;
    };
    let first = *ready.borrow_and_update();
    answer(first).await;
    // Ends with the server: the health service it feeds is dropped then.
    let following = tokio::spawn(async move {
        while ready.changed().await.is_ok() {
            let serving = *ready.borrow_and_update();
            answer(serving).await;
        }
    });
    let reflection = reflection::service()?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(address = %local, "envoy rate limit service listening");
    }
    // Nagle's delay would add up to 40 ms to small answers Envoy waits on.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    following.abort();
    served?;
    Ok(())
}

/// The rate-limit service's name in the gRPC health service.
pub const RATE_LIMIT_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
