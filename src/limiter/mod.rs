//! The limiter core: picks the policy, validates the check, and asks a store for the decision.
//!
//! It knows nothing of HTTP and nothing of Redis: requests arrive as a policy
//! name, a key and a cost, and leave as a [`Decision`] or a [`CheckError`].
//! Storage sits behind the [`Store`] trait, implemented in [`crate::store`].
//! In front of a shared store, [`failover`] decides what happens when the
//! store cannot answer: a deny cache, a circuit breaker, and failure modes.

pub mod algorithms;
#[cfg(test)]
mod allocations;
pub mod breaker;
pub mod clock;
pub mod counters;
pub mod decision;
pub mod deny_cache;
pub mod failover;
pub mod key;
pub mod policy;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use breaker::{BreakerSettings, BreakerState};
pub use clock::{Clock, FakeClock, Micros, MonotonicClock, SystemClock};
pub use counters::{CountersSnapshot, FailureCounters};
pub use decision::{Decision, Outcome};
pub use failover::{Failover, FailoverHealth, FailoverSettings};
pub use key::{KeyError, LimiterKey};
pub use policy::{Algorithm, FailureMode, Policy, PolicyError, PolicyName, PolicySet, Window};

/// Largest cost a single check may carry; costs above a policy's limit are refused anyway.
pub const MAX_COST: u64 = policy::MAX_LIMIT;

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

    /// The store's own view of its health, for readiness.
    fn health(&self) -> impl Future<Output = StoreHealth> + Send;

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
    /// Not an answer from the store: the limiter did not ask it.
    #[error("not asked: the circuit breaker is open after repeated store failures")]
    CircuitOpen,
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
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolHealth {
    pub max_size: u32,
    pub connections: u32,
    pub idle: u32,
}

/// Why a check could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no policy named {0:?}")]
    UnknownPolicy(String),
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// Distinct from a denial: no amount of waiting admits this check.
    #[error("cost {cost} exceeds the policy's limit of {limit}, so it can never be admitted")]
    CostExceedsLimit { cost: u64, limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A decision together with the policy that made it (for headers and bodies).
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Arc<Policy>,
    pub decision: Decision,
}

/// Decides checks against a set of policies, backed by one store.
pub struct Limiter<S> {
    policies: PolicySet,
    store: S,
    /// Failure handling, for a store shared with other replicas (Redis). The
    /// embedded store cannot fail and has none.
    failover: Option<Failover>,
}

/// Whether a replica should receive traffic, and why (see [`Limiter::health`]).
#[derive(Debug, Clone)]
pub struct LimiterHealth {
    /// The replica answers every check as its configuration says it should.
    pub ready: bool,
    /// The shared store cannot decide now (its breaker is open, or it did not
    /// answer readiness's probe): checks go to their failure modes.
    pub degraded: bool,
    pub policies: usize,
    pub store: StoreHealth,
    pub failover: Option<FailoverHealth>,
}

impl<S: Store> Limiter<S> {
    /// A limiter whose store cannot fail (the embedded store).
    pub fn new(policies: PolicySet, store: S) -> Self {
        Self {
            policies,
            store,
            failover: None,
        }
    }

    /// A limiter in front of a shared store that may fail, handled by `failover`.
    pub fn with_failover(policies: PolicySet, store: S, failover: Failover) -> Self {
        Self {
            policies,
            store,
            failover: Some(failover),
        }
    }

    /// Checks `cost` units (the policy's default cost when `None`) of `key` against `policy`.
    ///
    /// # Errors
    /// Unknown policy, invalid key, a cost above the limit, or a store failure.
    /// A denial is `Ok` with `decision.allowed == false`.
    pub async fn check(
        &self,
        policy: &str,
        key: &str,
        cost: Option<u64>,
    ) -> Result<Checked, CheckError> {
        let policy = self.policies.get(policy).ok_or_else(|| {
            // Echo short names only: a long one cannot exist and need not be logged back.
            let shown = if policy.len() <= policy::MAX_POLICY_NAME_LEN {
                policy.to_owned()
            } else {
                let mut shown: String = policy.chars().take(policy::MAX_POLICY_NAME_LEN).collect();
                shown.push('…');
                shown
            };
            CheckError::UnknownPolicy(shown)
        })?;
        let key = LimiterKey::parse(key)?;
        let cost = cost.unwrap_or(policy.default_cost());
        if cost > policy.limit() {
            return Err(CheckError::CostExceedsLimit {
                cost,
                limit: policy.limit(),
            });
        }
        let decision = match &self.failover {
            Some(failover) => failover.decide(&self.store, policy, key, cost).await?,
            None => {
                Decision::from_outcome(self.store.check(policy, key, cost).await?, policy.limit())
            }
        };
        Ok(Checked {
            policy: Arc::clone(policy),
            decision,
        })
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn failover(&self) -> Option<&Failover> {
        self.failover.as_ref()
    }

    /// One heartbeat to the shared store (nothing without one).
    pub async fn heartbeat(&self) {
        if let Some(failover) = &self.failover {
            failover.heartbeat(&self.store).await;
        }
    }

    /// Readiness. `ready` means: at least one policy is loaded, and either the
    /// shared store can decide (it answered a probe and its breaker is not
    /// open), or no policy fails closed, so every check still gets the answer
    /// its configuration asks for (`open` admits, `local` decides locally).
    /// A replica whose `closed` policies would answer 503 is not ready.
    pub async fn health(&self) -> LimiterHealth {
        let store = self.store.health().await;
        let policies = self.policies.len();
        let failover = self
            .failover
            .as_ref()
            .map(|failover| failover.health(&self.policies));
        let breaker_open = failover
            .as_ref()
            .is_some_and(|failover| failover.breaker.state == BreakerState::Open);
        let degraded = !store.ok || breaker_open;
        let no_policy_fails_closed = self
            .policies
            .iter_sorted()
            .iter()
            .all(|policy| policy.failure_mode() != FailureMode::Closed);
        LimiterHealth {
            ready: policies > 0 && (!degraded || no_policy_fails_closed),
            degraded,
            policies,
            store,
            failover,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::store::MemoryStore;

    fn limiter_with_failover() -> (Limiter<MemoryStore>, FakeClock) {
        let clock = FakeClock::default();
        let policy = Policy::new(
            PolicyName::parse("p").unwrap(),
            Algorithm::SlidingLog,
            3,
            Window::parse("10s").unwrap(),
            1,
        )
        .unwrap();
        let settings = FailoverSettings {
            default_mode: FailureMode::Closed,
            breaker: BreakerSettings::default(),
            deny_cache_max_keys: Some(100),
            heartbeat_interval: Duration::from_secs(1),
        };
        let limiter = Limiter::with_failover(
            PolicySet::new([policy]).unwrap(),
            MemoryStore::new(Arc::new(clock.clone())),
            Failover::new(settings, Arc::new(clock.clone())),
        );
        (limiter, clock)
    }

    /// Checks whose futures finish without waiting (the embedded store never waits).
    fn check_now(limiter: &Limiter<MemoryStore>, key: &str, cost: Option<u64>) -> Decision {
        limiter
            .check("p", key, cost)
            .now_or_never()
            .expect("nothing to wait for")
            .expect("a decision")
            .decision
    }

    #[test]
    fn the_hot_path_through_a_closed_breaker_and_the_deny_cache_allocates_nothing() {
        let (limiter, clock) = limiter_with_failover();
        assert!(check_now(&limiter, "hot", None).allowed, "warm the buffers");
        let before = allocations::on_this_thread();
        assert!(check_now(&limiter, "hot", None).allowed);
        assert!(check_now(&limiter, "hot", None).allowed);
        assert_eq!(allocations::on_this_thread(), before, "allowed checks");

        let denied = check_now(&limiter, "hot", None);
        assert!(!denied.allowed);
        let failover = limiter.failover().unwrap();
        assert_eq!(failover.deny_cache().unwrap().len(), 1);
        let before = allocations::on_this_thread();
        for _ in 0..100 {
            clock.advance(Duration::from_millis(10));
            assert!(!check_now(&limiter, "hot", Some(0)).allowed);
        }
        assert_eq!(allocations::on_this_thread(), before, "deny cache hits");
        assert_eq!(failover.counters().deny_cache_hits(), 100);
        assert_eq!(failover.counters().store_calls(), 4);
    }

    #[test]
    fn a_cached_denial_ends_at_its_retry_time_and_larger_costs_bypass_it() {
        let (limiter, clock) = limiter_with_failover();
        for _ in 0..3 {
            assert!(check_now(&limiter, "k", None).allowed);
        }
        let denied = check_now(&limiter, "k", None);
        assert_eq!(denied.retry_after, Duration::from_secs(10));
        let counters = limiter.failover().unwrap().counters();
        assert!(!check_now(&limiter, "k", Some(2)).allowed);
        assert_eq!(counters.deny_cache_hits(), 0, "cost 2 asks the store");
        clock.advance(Duration::from_millis(9_999));
        let cached = check_now(&limiter, "k", None);
        assert_eq!(cached.retry_after, Duration::from_millis(1));
        assert_eq!(counters.deny_cache_hits(), 1);
        clock.advance(Duration::from_millis(1));
        assert!(check_now(&limiter, "k", None).allowed);
    }
}
