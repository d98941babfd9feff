//! The limiter core: picks the policy, validates the check, and asks a store for the decision.
//!
//! It knows nothing of HTTP and nothing of Redis: requests arrive as a policy
//! name, a key and a cost, and leave as a [`Decision`] or a [`CheckError`].
//! Storage sits behind the [`Store`] trait, implemented in [`crate::store`].

pub mod algorithms;
#[cfg(test)]
mod allocations;
pub mod breaker;
pub mod clock;
pub mod counters;
pub mod decision;
pub mod deny_cache;
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
pub use key::{KeyError, LimiterKey};
pub use policy::{Algorithm, Policy, PolicyError, PolicyName, PolicySet, Window};

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
#[derive(Debug)]
pub struct Limiter<S> {
    policies: PolicySet,
    store: S,
}

impl<S: Store> Limiter<S> {
    pub fn new(policies: PolicySet, store: S) -> Self {
        Self { policies, store }
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
        let outcome = self.store.check(policy, key, cost).await?;
        Ok(Checked {
            policy: Arc::clone(policy),
            decision: Decision::from_outcome(outcome, policy.limit()),
        })
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub async fn health(&self) -> StoreHealth {
        self.store.health().await
    }
}
