//! Starting the service on a port of its own, and building requests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use slidegate_core::{FakeClock, Limiter, MemoryStore, Store, unobserved};
use slidegate_envoy::{Engine, RlsService, RuleSet, rules};
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

pub struct Rls<S> {
    pub addr: SocketAddr,
    pub client: RateLimitServiceClient<Channel>,
    pub engine: Arc<Engine<S>>,
    pub clock: FakeClock,
    pub dir: tempfile::TempDir,
    pub rules_path: PathBuf,
    /// What the gRPC health service answers (the replica's readiness).
    pub ready: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl<S> Drop for Rls<S> {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The service on the embedded store, with `rules` as its one rule file.
pub async fn spawn(rules: &str) -> Rls<MemoryStore> {
    spawn_with(rules, false).await
}

pub async fn spawn_with(rules: &str, response_headers: bool) -> Rls<MemoryStore> {
    let clock = FakeClock::default();
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let limiter = Limiter::awaiting_bundle(store, unobserved());
    spawn_on(rules, response_headers, clock, limiter).await
}

/// The service over `limiter`, whose store runs on `clock`.
pub async fn spawn_on<S: Store>(
    rules: &str,
    response_headers: bool,
    clock: FakeClock,
    limiter: Limiter<S>,
) -> Rls<S> {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, rules).unwrap();
    let set: RuleSet = rules::load(&rules_path).unwrap();
    let engine = Arc::new(Engine::new(limiter, set));
    let service = RlsService::new(Arc::clone(&engine), response_headers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let (ready, readiness) = watch::channel(true);
    let server = tokio::spawn(async move {
        slidegate_envoy::serve_on(listener, service, readiness, async {
            let _ = stop.await;
        })
        .await
        .unwrap();
    });
    let client = RateLimitServiceClient::new(channel(addr).await);
    Rls {
        addr,
        client,
        engine,
        clock,
        dir,
        rules_path,
        ready,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    // The listener is bound before the server task runs, so connecting
    // succeeds at once (the connection waits in the backlog).
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A descriptor of `(key, value)` entries.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

pub fn with_hits(mut descriptor: RateLimitDescriptor, hits: u64) -> RateLimitDescriptor {
    descriptor.hits_addend = Some(UInt64Value { value: hits });
    descriptor
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

impl<S> Rls<S> {
    pub async fn call(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, tonic::Status> {
        self.client
            .clone()
            .should_rate_limit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn ok(&self, request: RateLimitRequest) -> RateLimitResponse {
        self.call(request).await.expect("the call succeeds")
    }
}

/// Waits until `condition` holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub const OK: i32 = 1;
pub const OVER_LIMIT: i32 = 2;
