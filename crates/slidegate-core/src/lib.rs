//! slidegate's core: policies, the three algorithms, the `Store` trait, failover and the limiter — no HTTP, Redis, Postgres or Prometheus.
//!
//! A tour, in the order a check travels:
//!
//! - A front end (the server's HTTP handlers, later gRPC) hands the
//!   [`Limiter`] a policy name, a key and a cost. Forward-auth first matches
//!   the request against [`rules`] to find the policies and keys.
//! - The [`Limiter`] finds the [`Policy`] in its snapshot (swapped without a
//!   lock when policies change), validates key ([`key`]) and cost, and asks
//!   its [`Store`] for one atomic decision ([`decision`]). The algorithms
//!   ([`algorithms`]) have one semantics, run in-process by [`memory`] and as
//!   Lua scripts by the Redis store (crate `slidegate-redis`). Time comes
//!   from an injectable [`Clock`].
//! - In front of a shared store, [`failover`] decides what happens when the
//!   store cannot answer: a deny cache ([`deny_cache`]), a circuit breaker
//!   ([`breaker`]), and each policy's failure mode (closed, open, local).
//! - What the limiter does is reported to an [`Observer`] ([`observe`]); the
//!   server's is Prometheus. [`probe`] keeps background health answers that
//!   readiness reads without waiting on a dependency.
//! - How front ends answer — shadow policies, several policies on one
//!   request, the rate-limit values clients read — is decided once, in [`answer`].
//! - A policy as people write it is a [`PolicySpec`] ([`spec`]), validated
//!   into a [`Policy`]; API keys resolve to tenants ([`tenant`]).

pub mod algorithms;
#[cfg(test)]
mod allocations;
pub mod answer;
pub mod breaker;
pub mod clock;
pub mod counters;
pub mod decision;
pub mod deny_cache;
pub mod failover;
pub mod key;
pub mod limiter;
pub mod memory;
pub mod observe;
pub mod policy;
pub mod probe;
pub mod rules;
pub mod settings;
pub mod spec;
pub mod store;
pub mod tenant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use answer::{AllMustAdmit, RateLimitValues};
pub use breaker::{BreakerOptions, BreakerState};
pub use clock::{Clock, FakeClock, Micros, MonotonicClock, SystemClock};
pub use counters::{CountersSnapshot, FailureCounters};
pub use decision::{Decision, Outcome};
pub use failover::{Failover, FailoverHealth, FailoverOptions};
pub use key::{KeyError, LimiterKey};
pub use limiter::{
    Bundle, CheckError, Checked, Limiter, LimiterHealth, MAX_COST, PolicyCheck, UnknownPolicy,
};
pub use memory::MemoryStore;
pub use observe::{Observer, PolicyRecorder, StoreErrorRecorder, Unobserved, unobserved};
pub use policy::{Algorithm, FailureMode, Policy, PolicyError, PolicyName, PolicySet, Window};
pub use settings::{BreakerSettings, InvalidSetting};
pub use spec::{MatchSpec, PolicySpec};
pub use store::{
    Check, ClusterStats, ClusterTopology, DependencyHealth, MasterHealth, MemoryStats, NodeStats,
    PoolHealth, PoolStats, Store, StoreError, StoreHealth,
};
pub use tenant::{
    ApiKeyDigest, InvalidTenant, MAX_PRESENTED_API_KEY_LEN, PresentedApiKey, TenantKey, TenantName,
};
