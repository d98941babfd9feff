//! The gRPC server Envoy calls: the rate-limit service, the standard health service (SERVING while it runs) and server reflection.

use std::future::Future;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use slidegate_core::Store;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

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
/// # Errors
/// [`ServeError`] when the address cannot be bound or the server fails.
pub async fn serve<S: Store>(
    bind: SocketAddr,
    service: RlsService<S>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    serve_on(listener, service, shutdown).await
}

/// As [`serve`], on a listener already bound (tests bind port 0 and read
/// the address first).
///
/// # Errors
/// [`ServeError`] when the server fails.
pub async fn serve_on<S: Store>(
    listener: TcpListener,
    service: RlsService<S>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RlsService<S>>>()
        .await;
    let reflection = reflection::service()?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(address = %local, "envoy rate limit service listening");
    }
    // Nagle's delay would add up to 40 ms to small answers Envoy waits on.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
