//! The store a replica runs on, chosen at start-up: in this process (the core's [`MemoryStore`]) or in Redis ([`RedisStore`]).

pub use slidegate_core::memory::{self, MemoryStore};
pub use slidegate_redis::{ClusterStore, RedisOptions, RedisStore, RedisTls, TlsError};

use std::time::Duration;

use slidegate_core::{
    Check, ClusterStats, LimiterKey, MemoryStats, Outcome, Policy, PoolStats, Store, StoreError,
    StoreHealth,
};

/// The store a replica runs on, chosen by configuration at start-up.
///
/// An enum rather than a boxed trait object: the hot path dispatches with a
/// `match` and awaits the store's future in place, with no allocation per check.
pub enum AnyStore {
    Memory(MemoryStore),
    /// Boxed: its per-thread pool table is about 1 KB inline, and the
    /// embedded store should not pay for it.
    Redis(Box<RedisStore>),
    /// A Redis Cluster (`redis.mode = "cluster"`).
    Cluster(Box<ClusterStore>),
}

impl Store for AnyStore {
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        match self {
            AnyStore::Memory(store) => store.check(policy, key, cost).await,
            AnyStore::Redis(store) => store.check(policy, key, cost).await,
            AnyStore::Cluster(store) => store.check(policy, key, cost).await,
        }
    }

    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.check_all(checks).await,
            AnyStore::Redis(store) => store.check_all(checks).await,
            AnyStore::Cluster(store) => store.check_all(checks).await,
        }
    }

    async fn health(&self) -> StoreHealth {
        match self {
            AnyStore::Memory(store) => store.health().await,
            AnyStore::Redis(store) => store.health().await,
            AnyStore::Cluster(store) => store.health().await,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            AnyStore::Memory(store) => store.kind(),
            AnyStore::Redis(store) => store.kind(),
            AnyStore::Cluster(store) => store.kind(),
        }
    }

    fn pools(&self) -> Vec<PoolStats> {
        match self {
            AnyStore::Memory(store) => store.pools(),
            AnyStore::Redis(store) => store.pools(),
            AnyStore::Cluster(store) => store.pools(),
        }
    }

    fn memory_stats(&self) -> Option<MemoryStats> {
        match self {
            AnyStore::Memory(store) => store.memory_stats(),
            AnyStore::Redis(store) => store.memory_stats(),
            AnyStore::Cluster(store) => store.memory_stats(),
        }
    }

    fn cluster_stats(&self) -> Option<ClusterStats> {
        match self {
            AnyStore::Memory(_) | AnyStore::Redis(_) => None,
            AnyStore::Cluster(store) => store.cluster_stats(),
        }
    }

    fn failure_domain(&self, policy: &Policy, key: LimiterKey<'_>) -> usize {
        match self {
            AnyStore::Memory(_) | AnyStore::Redis(_) => 0,
            AnyStore::Cluster(store) => store.failure_domain(policy, key),
        }
    }

    async fn heartbeat(&self, replica: &str, stale_after: Duration) -> Result<u64, StoreError> {
        match self {
            AnyStore::Memory(store) => store.heartbeat(replica, stale_after).await,
            AnyStore::Redis(store) => store.heartbeat(replica, stale_after).await,
            AnyStore::Cluster(store) => store.heartbeat(replica, stale_after).await,
        }
    }
}
