//! The `Store` trait every place limiter state can live implements, its errors, and what it reports for readiness and metrics.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::{Algorithm, LimiterKey, Outcome, Policy};

/// Storage for limiter state: one atomic read-decide-write per check.
///
/// Implementations must apply the algorithm of `policy` exactly as the Lua
/// scripts in `lua/` do, and must consume `cost` units entirely or not at all.
pub trait Store: Send + Sync + 'static {
    /// Decides one check of `cost` units (0 = peek) against `policy` for `key`.
    ///
    /// # Errors
    /// [`StoreError`] when the state cannot be read or written; a denial is not an error.
    fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;

    /// Decides `checks` as one request, **all or nothing**: the request is
    /// admitted iff every enforced check admits it, and then every check that
    /// admitted consumes its cost (a shadow check that denied consumes
    /// nothing and refuses nothing); if any enforced check denies, **none**
    /// consumes anything. One outcome per check, in order: a check that
    /// denied has its denial; a check that admitted but was not consumed
    /// (because another denied) reports `allowed` with what the key holds
    /// without this request. Checks may name the same key more than once:
    /// they are judged one after the other, each seeing the ones before it.
    ///
    /// What "all or nothing" means against concurrent checks is each store's
    /// guarantee, documented on its implementation: one Redis decides the
    /// whole request in one script (atomic); the embedded store and a Redis
    /// Cluster reserve each check and release the reservations of a refused
    /// request, which never admits more than any limit allows but may, for
    /// the instant a reservation is held, deny a concurrent check of the same
    /// key that would have fitted.
    ///
    /// # Errors
    /// [`StoreError`] when the state cannot be read or written; nothing is
    /// consumed then, except where a store documents otherwise.
    fn check_all(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send;

    /// The store's own view of its health, for readiness.
    fn health(&self) -> impl Future<Output = StoreHealth> + Send;

    /// `"redis"` or `"memory"`: a label for metrics and spans.
    fn kind(&self) -> &'static str;

    /// The connection pools behind the store, read when metrics are scraped.
    fn pools(&self) -> Vec<PoolStats> {
        Vec::new()
    }

    /// For a store that keeps its state in this process: its size, bound and
    /// evictions, read when metrics are scraped.
    fn memory_stats(&self) -> Option<MemoryStats> {
        None
    }

    /// For a store of several nodes (a Redis Cluster): per-node counters and
    /// how often its topology changed, read when metrics are scraped.
    fn cluster_stats(&self) -> Option<ClusterStats> {
        None
    }

    /// Which independent part of the store decides `key` under `policy`, in
    /// `0..`[`FAILURE_DOMAINS`](crate::failover::FAILURE_DOMAINS): the
    /// failover keeps a circuit breaker per part, so one part failing (a
    /// Redis Cluster master) sends only its own keys to their failure modes.
    /// Called on every check: it must be cheap and must not wait. A store
    /// that fails as one answers 0.
    fn failure_domain(&self, policy: &Policy, key: LimiterKey<'_>) -> usize {
        let _ = (policy, key);
        0
    }

    /// Records that `replica` is alive and returns how many replicas share
    /// this store: those that recorded themselves within `stale_after`,
    /// judged by the store's clock. A store private to one process answers 1.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached in time.
    fn heartbeat(
        &self,
        replica: &str,
        stale_after: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A shared store is still one store: two limiters (the HTTP front end's and
/// the Envoy front end's) deciding on one `Arc` share its pools, breakers'
/// failure domains and counts.
impl<S: Store> Store for std::sync::Arc<S> {
    fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send {
        (**self).check(policy, key, cost)
    }

    fn check_all(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send {
        (**self).check_all(checks)
    }

    fn health(&self) -> impl Future<Output = StoreHealth> + Send {
        (**self).health()
    }

    fn kind(&self) -> &'static str {
        (**self).kind()
    }

    fn pools(&self) -> Vec<PoolStats> {
        (**self).pools()
    }

    fn memory_stats(&self) -> Option<MemoryStats> {
        (**self).memory_stats()
    }

    fn cluster_stats(&self) -> Option<ClusterStats> {
        (**self).cluster_stats()
    }

    fn failure_domain(&self, policy: &Policy, key: LimiterKey<'_>) -> usize {
        (**self).failure_domain(policy, key)
    }

    fn heartbeat(
        &self,
        replica: &str,
        stale_after: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).heartbeat(replica, stale_after)
    }
}

/// One check of several decided together by [`Store::check_all`].
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub policy: &'a Policy,
    pub key: LimiterKey<'a>,
    /// Units to consume, at most the policy's limit; 0 is a peek.
    pub cost: u64,
    /// Whether its denial refuses the request. `false` for a shadow
    /// policy: counted when it admits, never refusing.
    pub enforced: bool,
}

/// The store could not decide. Never carries secrets: connection URLs are not part of it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out after {after:?} while {operation}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store replied with something the limiter cannot read: {0}")]
    InvalidReply(String),
    /// The store answers, but is not what this build can use (a Redis Cluster
    /// node answering `MOVED`): an operator must fix the deployment.
    #[error("store misconfigured: {0}")]
    Misconfigured(String),
    /// Not an answer from the store: the limiter did not ask it.
    #[error("not asked: the circuit breaker is open after repeated store failures")]
    CircuitOpen,
}

impl StoreError {
    /// A short, fixed name of the failure, for metrics labels and `error.type` in spans.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout { .. } => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::InvalidReply(_) => "invalid_reply",
            StoreError::Misconfigured(_) => "misconfigured",
            StoreError::CircuitOpen => "circuit_open",
        }
    }
}

/// Readiness of a store and the dependencies behind it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    /// `"redis"` or `"memory"`.
    pub store: &'static str,
    /// Whether the store can decide checks now.
    pub ok: bool,
    /// One entry per external dependency (empty for the embedded store).
    pub dependencies: Vec<DependencyHealth>,
    /// Script SHA1 per algorithm, where the store runs scripts.
    pub scripts: Vec<(Algorithm, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DependencyHealth {
    pub name: &'static str,
    pub ok: bool,
    /// Round-trip time of the health probe.
    pub latency_ms: Option<f64>,
    /// What went wrong, without secrets.
    pub error: Option<String>,
    pub pool: Option<PoolHealth>,
    /// For a Redis Cluster: its state and masters, as the probe found them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<ClusterTopology>,
}

/// A Redis Cluster as readiness reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterTopology {
    /// `cluster_state` from `CLUSTER INFO` (`ok`, `fail`), if it answered.
    pub cluster_state: Option<String>,
    /// Slots with a master, of 16,384.
    pub covered_slots: u32,
    pub masters: Vec<MasterHealth>,
}

/// One master of a Redis Cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MasterHealth {
    /// `host:port`.
    pub address: String,
    /// It answered the probe's `PING`.
    pub reachable: bool,
    /// Slots it serves.
    pub slots: u32,
    /// `MOVED` replies it has sent, to every client, since it started
    /// (`INFO errorstats`): a client routing by a stale slot map.
    pub moved_replies: u64,
    /// `ASK` replies likewise: keys asked for while their slot migrates.
    pub ask_replies: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolHealth {
    pub max_size: u32,
    pub connections: u32,
    pub idle: u32,
}

/// A connection pool as metrics see it: its size now and what happened to it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `"redis"` (later also `"postgres"`).
    pub name: &'static str,
    pub max_size: u32,
    pub connections: u32,
    pub idle: u32,
    /// Checks waiting for a connection now.
    pub waiting: u64,
    /// Waits for a connection that ran out of time, since start.
    pub timeouts_total: u64,
    /// Connections opened since start; more than `max_size` means reconnects.
    pub opened_total: u64,
    /// Connections dropped because a command failed at the connection level.
    pub closed_broken_total: u64,
}

/// An in-process store (the embedded one, or the `local` failure mode's) as
/// metrics see it: its size now, its bound, and what it forgot to stay within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// `embedded` or `local`.
    pub name: &'static str,
    pub keys: u64,
    pub max_keys: u64,
    /// Idle keys removed to make room (lossless), since start.
    pub evicted_idle: u64,
    /// Keys still counting removed to make room (each may be admitted early), since start.
    pub evicted_active: u64,
}

/// What a store of several nodes counted, for metrics. Labels are nodes
/// (bounded by the failure domains), never keys.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// Times the slot map the store routes by changed (a failover, a reshard).
    pub topology_changes: u64,
    pub nodes: Vec<NodeStats>,
    /// Each master as the last background probe found it, with the
    /// redirections it has answered.
    pub masters: Vec<MasterHealth>,
}

/// One node's checks, as the store that sent them counted them.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// `host:port` of the master that serves this node's failure domain now.
    pub node: String,
    pub decided: u64,
    pub timeouts: u64,
    /// Failed otherwise: refused, dropped, or the cluster down for the key.
    pub failed: u64,
    /// Time spent on the checks above, in microseconds.
    pub latency_micros: u64,
}
