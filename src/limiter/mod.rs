//! The limiter core: picks the policy, validates the check, and asks a store for the decision.
//!
//! It knows nothing of HTTP and nothing of Redis: requests arrive as a policy
//! name, a key and a cost, and leave as a [`Decision`] or a [`CheckError`].
//! Storage sits behind the [`Store`] trait, implemented in [`crate::store`].

pub mod algorithms;
pub mod clock;
pub mod decision;
pub mod key;
pub mod policy;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;
use tracing::field::Empty;

use crate::metrics::{Metrics, PolicyMetrics, StoreErrorMetrics};

pub use clock::{Clock, FakeClock, Micros, SystemClock};
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

    /// `"redis"` or `"memory"`: a label for metrics and spans.
    fn kind(&self) -> &'static str;

    /// The connection pools behind the store, read when metrics are scraped.
    fn pools(&self) -> Vec<PoolStats> {
        Vec::new()
    }
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

impl StoreError {
    /// A short, fixed name of the failure, for metrics labels and `error.type` in spans.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout { .. } => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::InvalidReply(_) => "invalid_reply",
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

impl CheckError {
    /// A short, fixed name of the problem, for `error.type` in spans.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckError::UnknownPolicy(_) => "unknown_policy",
            CheckError::InvalidKey(_) => "invalid_key",
            CheckError::CostExceedsLimit { .. } => "cost_exceeds_limit",
            CheckError::Store(error) => error.kind(),
        }
    }
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
    /// The same policies with their metric handles, so one lookup per check finds both.
    entries: HashMap<Box<str>, Entry>,
    store: S,
    store_errors: StoreErrorMetrics,
}

#[derive(Debug)]
struct Entry {
    policy: Arc<Policy>,
    metrics: PolicyMetrics,
}

impl<S: Store> Limiter<S> {
    /// A limiter recording into `metrics`; every series it can touch is created here.
    pub fn new(policies: PolicySet, store: S, metrics: &Metrics) -> Self {
        let entries = policies
            .iter_sorted()
            .into_iter()
            .map(|policy| {
                let name = policy.name().as_str();
                let entry = Entry {
                    policy: Arc::clone(policy),
                    metrics: metrics.policy(name),
                };
                (Box::from(name), entry)
            })
            .collect();
        let store_errors = metrics.store_errors(store.kind());
        Self {
            policies,
            entries,
            store,
            store_errors,
        }
    }

    /// Checks `cost` units (the policy's default cost when `None`) of `key` against `policy`.
    ///
    /// Spans (created at debug level, so a replica that neither traces nor
    /// logs at debug skips them at the cost of one atomic load each):
    /// `policy.match`, then `limiter.decide` around the store's call. Neither
    /// records the key: keys may identify people.
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
        let matching = tracing::debug_span!(
            "policy.match",
            slidegate.policy = Empty,
            error.type = Empty,
        );
        let (entry, key, cost) = matching.in_scope(|| {
            let matched = self.match_check(policy, key, cost);
            if !matching.is_disabled() {
                match &matched {
                    Ok((entry, ..)) => {
                        matching.record("slidegate.policy", entry.policy.name().as_str());
                    }
                    Err(error) => {
                        matching.record("error.type", error.kind());
                    }
                }
            }
            matched
        })?;
        let policy = &entry.policy;

        let deciding = tracing::debug_span!(
            "limiter.decide",
            slidegate.policy = policy.name().as_str(),
            slidegate.algorithm = policy.algorithm().as_str(),
            slidegate.store = self.store.kind(),
            slidegate.cost = cost,
            slidegate.outcome = Empty,
            slidegate.remaining = Empty,
            error.type = Empty,
            otel.status_code = Empty,
        );
        let started = Instant::now();
        let outcome = self
            .store
            .check(policy, key, cost)
            .instrument(deciding.clone())
            .await;
        let elapsed = started.elapsed();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                match error {
                    StoreError::Timeout { .. } => self.store_errors.timeout(),
                    StoreError::Unavailable(_) => self.store_errors.unavailable(),
                    StoreError::InvalidReply(_) => self.store_errors.invalid_reply(),
                }
                if !deciding.is_disabled() {
                    deciding.record("slidegate.outcome", "error");
                    deciding.record("error.type", error.kind());
                    deciding.record("otel.status_code", "ERROR");
                }
                return Err(error.into());
            }
        };
        let decision = Decision::from_outcome(outcome, policy.limit());
        entry.metrics.record(decision.allowed, elapsed);
        if !deciding.is_disabled() {
            let verdict = if decision.allowed {
                "allowed"
            } else {
                "denied"
            };
            deciding.record("slidegate.outcome", verdict);
            deciding.record("slidegate.remaining", decision.remaining);
        }
        Ok(Checked {
            policy: Arc::clone(policy),
            decision,
        })
    }

    /// Finds the policy and validates key and cost: everything a check needs before the store.
    fn match_check<'k>(
        &self,
        policy: &str,
        key: &'k str,
        cost: Option<u64>,
    ) -> Result<(&Entry, LimiterKey<'k>, u64), CheckError> {
        let entry = self.entries.get(policy).ok_or_else(|| {
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
        let cost = cost.unwrap_or(entry.policy.default_cost());
        if cost > entry.policy.limit() {
            return Err(CheckError::CostExceedsLimit {
                cost,
                limit: entry.policy.limit(),
            });
        }
        Ok((entry, key, cost))
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
