//! What the limiter does in front of a shared store that may fail: the deny cache, the circuit breaker, and each policy's failure mode.
//!
//! A check against a shared store goes, in order:
//! 1. to the [`DenyCache`]: a key the store denied, checked again at judged
//!    cost 1 before its retry time, is answered 429 with no round-trip;
//! 2. through the [`CircuitBreaker`]: while it is open the store is not asked;
//! 3. to the store, within the store's own timeouts;
//! 4. if the store could not decide (an error, a timeout, an open breaker),
//!    to the policy's [`FailureMode`]: `closed` refuses with the store error
//!    (503), `open` admits, `local` decides in process.
//!
//! The `local` mode enforces `floor(limit / live replicas)`, at least 1, in
//! an in-process [`MemoryStore`] per replica. Rounding down keeps the fleet
//! at or under the limit (`live × floor(limit / live) ≤ limit`), except when
//! there are more live replicas than the limit allows units: then each still
//! admits 1 and the fleet admits up to `live` per window. The live count
//! comes from heartbeats every replica keeps in the shared store (see
//! [`Store::heartbeat`]); during an outage the last count seen is used, and a
//! replica that has never seen one counts itself alone. The in-process state
//! starts empty, so units the shared store admitted before the outage are not
//! known locally (keys it had denied still are, through the deny cache).
//!
//! Every decision not made by the store is counted in [`FailureCounters`].

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::breaker::{BreakerOptions, BreakerState, CircuitBreaker, Permit};
use super::clock::Clock;
use super::counters::{CountersSnapshot, FailureCounters, LogThrottle, bump};
use super::decision::{Decision, Outcome};
use super::deny_cache::{DenyCache, Remembered};
use super::key::LimiterKey;
use super::policy::{FailureMode, Policy, PolicySet};
use super::{Check, MemoryStats, Store, StoreError};
use crate::memory::MemoryStore;

/// How a replica handles a shared store that fails.
#[derive(Debug, Clone, Copy)]
pub struct FailoverOptions {
    /// The failure mode of policies that name none (shown in readiness).
    pub default_mode: FailureMode,
    pub breaker: BreakerOptions,
    /// Largest number of keys in the deny cache; `None` turns the cache off.
    pub deny_cache_max_keys: Option<usize>,
    /// Largest number of keys the `local` mode's in-process limiter holds.
    pub local_max_keys: usize,
    /// How often this replica announces itself in the shared store. A replica
    /// not heard from for [`STALE_AFTER_HEARTBEATS`] periods is no longer counted.
    pub heartbeat_interval: Duration,
}

/// Circuit breakers one replica keeps, one per failure domain of its store
/// (see [`Store::failure_domain`]): a store that fails as one uses the first
/// only; a Redis Cluster maps each master to one, so a failed master opens
/// the circuit for its own keys. More masters than this share breakers.
pub const FAILURE_DOMAINS: usize = 16;

/// Heartbeat periods after which a silent replica stops counting as live.
pub const STALE_AFTER_HEARTBEATS: u32 = 3;

/// Invalid store replies are logged at most this often (each is counted).
pub const INVALID_REPLY_LOG_EVERY: Duration = Duration::from_secs(10);

/// The per-replica share of `limit` in the `local` failure mode:
/// `floor(limit / live_replicas)`, at least 1 (see the module documentation).
pub fn local_share(limit: u64, live_replicas: u64) -> u64 {
    (limit / live_replicas.max(1)).max(1)
}

/// The failure handling of one replica in front of its shared store.
pub struct Failover {
    settings: FailoverOptions,
    clock: Arc<dyn Clock>,
    counters: Arc<FailureCounters>,
    /// One per failure domain; [`Failover::decide`] uses the check's.
    breakers: Vec<CircuitBreaker>,
    deny_cache: Option<DenyCache>,
    /// The in-process limiter of the `local` mode.
    local: MemoryStore,
    /// Last live replica count the shared store reported (1 until it reports one).
    live_replicas: AtomicU64,
    replica_id: String,
    invalid_reply_log: LogThrottle,
}

impl Failover {
    pub fn new(settings: FailoverOptions, clock: Arc<dyn Clock>) -> Self {
        let counters = Arc::new(FailureCounters::default());
        Self {
            breakers: (0..FAILURE_DOMAINS)
                .map(|_| {
                    CircuitBreaker::new(settings.breaker, Arc::clone(&clock), counters.clone())
                })
                .collect(),
            deny_cache: settings.deny_cache_max_keys.map(DenyCache::new),
            local: MemoryStore::bounded(Arc::clone(&clock), settings.local_max_keys, "local"),
            live_replicas: AtomicU64::new(1),
            replica_id: new_replica_id(),
            invalid_reply_log: LogThrottle::new(INVALID_REPLY_LOG_EVERY),
            settings,
            clock,
            counters,
        }
    }

    /// The failure mode of policies that name none.
    pub fn default_mode(&self) -> FailureMode {
        self.settings.default_mode
    }

    /// Decides one validated check: from the deny cache, the store, or the
    /// policy's failure mode, in that order. `generation` is that of the
    /// limiter snapshot the check started on: the deny cache answers only
    /// denials judged under the same one.
    ///
    /// # Errors
    /// The store's error (or [`StoreError::CircuitOpen`]) when the store could
    /// not decide and the policy fails closed.
    pub(super) async fn decide<S: Store>(
        &self,
        store: &S,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
        generation: u64,
    ) -> Result<Decision, StoreError> {
        if let Some(cache) = &self.deny_cache
            && let Some(outcome) = cache.lookup(policy, key, cost, self.clock.now(), generation)
        {
            bump(&self.counters.deny_cache_hits);
            return Ok(Decision::from_outcome(outcome, policy.limit()));
        }
        let breaker = &self.breakers[store.failure_domain(policy, key) % FAILURE_DOMAINS];
        let Some(permit) = breaker.try_acquire() else {
            return self.fall_back(policy, key, cost, StoreError::CircuitOpen);
        };
        match store.check(policy, key, cost).await {
            Ok(outcome) => {
                self.succeeded(permit);
                if let Some(cache) = &self.deny_cache
                    && !outcome.allowed
                    && cache.remember(policy, key, cost, &outcome, self.clock.now(), generation)
                        == Remembered::Full
                {
                    bump(&self.counters.deny_cache_full);
                }
                Ok(Decision::from_outcome(outcome, policy.limit()))
            }
            Err(error @ StoreError::InvalidReply(_)) => {
                // The store answered, so it is up: this is a bug (in a
                // script, or in how its reply is read), and it belongs to
                // this key. Counted as a failure it could open the breaker
                // for every key of the replica.
                self.succeeded(permit);
                self.invalid_reply(policy, &error);
                self.fall_back(policy, key, cost, error)
            }
            Err(error) => {
                if matches!(error, StoreError::Timeout { .. }) {
                    bump(&self.counters.store_timeouts);
                }
                let _ = permit.failed();
                self.fall_back(policy, key, cost, error)
            }
        }
    }

    /// Decides several validated checks as one request, all or nothing
    /// ([`Store::check_all`]): through the breakers of every failure domain
    /// the checks touch, then the store; when the store cannot decide, each
    /// check goes to its policy's failure mode (see `fall_back_all`).
    ///
    /// The deny cache is fed by the denials this finds, but not read: a
    /// cached denial of one check would refuse the request without telling
    /// what the others hold, which their answers must say. A request of
    /// several limits therefore always asks the store.
    ///
    /// # Errors
    /// As [`Failover::decide`], when any check's policy fails closed.
    pub(super) async fn decide_all<S: Store>(
        &self,
        store: &S,
        checks: &[Check<'_>],
        generation: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        // One permit per failure domain touched: a request spanning two
        // masters of a cluster needs both to be trusted.
        let mut touched = 0u32;
        let mut permits = Vec::with_capacity(1);
        for check in checks {
            let domain = store.failure_domain(check.policy, check.key) % FAILURE_DOMAINS;
            if touched & (1 << domain) != 0 {
                continue;
            }
            touched |= 1 << domain;
            match self.breakers[domain].try_acquire() {
                Some(permit) => permits.push(permit),
                None => return self.fall_back_all(checks, StoreError::CircuitOpen),
            }
        }
        match store.check_all(checks).await {
            Ok(outcomes) if outcomes.len() == checks.len() => {
                for permit in permits {
                    self.succeeded(permit);
                }
                let now = self.clock.now();
                Ok(checks
                    .iter()
                    .zip(outcomes)
                    .map(|(check, outcome)| {
                        if let Some(cache) = &self.deny_cache
                            && !outcome.allowed
                            && cache.remember(
                                check.policy,
                                check.key,
                                check.cost,
                                &outcome,
                                now,
                                generation,
                            ) == Remembered::Full
                        {
                            bump(&self.counters.deny_cache_full);
                        }
                        Decision::from_outcome(outcome, check.policy.limit())
                    })
                    .collect())
            }
            Ok(outcomes) => {
                let error = StoreError::InvalidReply(format!(
                    "{} outcomes for {} checks",
                    outcomes.len(),
                    checks.len()
                ));
                self.answered_unreadably(permits, checks, error)
            }
            Err(error @ StoreError::InvalidReply(_)) => {
                self.answered_unreadably(permits, checks, error)
            }
            Err(error) => {
                if matches!(error, StoreError::Timeout { .. }) {
                    bump(&self.counters.store_timeouts);
                }
                for permit in permits {
                    let _ = permit.failed();
                }
                self.fall_back_all(checks, error)
            }
        }
    }

    /// The store answered a request with something unreadable: up, and a bug
    /// belonging to these keys (see [`Failover::decide`]).
    fn answered_unreadably(
        &self,
        permits: Vec<Permit<'_>>,
        checks: &[Check<'_>],
        error: StoreError,
    ) -> Result<Vec<Decision>, StoreError> {
        for permit in permits {
            self.succeeded(permit);
        }
        if let Some(first) = checks.first() {
            self.invalid_reply(first.policy, &error);
        }
        self.fall_back_all(checks, error)
    }

    /// A request the store could not decide: if any of its policies fails
    /// closed, the request fails (nothing was consumed: one cannot be half
    /// decided); otherwise `open` checks admit, and the `local` ones are
    /// decided together in process, all or nothing among themselves, each at
    /// this replica's share of its limit.
    fn fall_back_all(
        &self,
        checks: &[Check<'_>],
        error: StoreError,
    ) -> Result<Vec<Decision>, StoreError> {
        if checks
            .iter()
            .any(|check| check.policy.failure_mode() == FailureMode::Closed)
        {
            bump(&self.counters.fail_closed);
            return Err(error);
        }
        let live = self.live_replicas();
        let shares: Vec<Policy> = checks
            .iter()
            .map(|check| {
                check
                    .policy
                    .with_local_share(local_share(check.policy.limit(), live))
            })
            .collect();
        let is_local = |check: &Check<'_>| check.policy.failure_mode() == FailureMode::Local;
        // More than a share can never fit locally, and the algorithms assume
        // cost <= limit: such a check is looked at (cost 0) and denied; when
        // it is enforced the request is refused before anything is counted,
        // so every local check only looks.
        let too_large = |check: &Check<'_>, share: &Policy| check.cost > share.limit();
        let refused_by_size = checks
            .iter()
            .zip(&shares)
            .any(|(check, share)| check.enforced && is_local(check) && too_large(check, share));
        let local: Vec<Check<'_>> = checks
            .iter()
            .zip(&shares)
            .filter(|(check, _)| is_local(check))
            .map(|(check, share)| Check {
                policy: share,
                cost: if refused_by_size || too_large(check, share) {
                    0
                } else {
                    check.cost
                },
                ..*check
            })
            .collect();
        let mut outcomes = self.local.decide_all(&local).into_iter();
        let decisions = checks
            .iter()
            .zip(&shares)
            .map(|(check, share)| match check.policy.failure_mode() {
                FailureMode::Local => {
                    bump(&self.counters.fail_local);
                    let mut outcome = outcomes.next().unwrap_or(Outcome {
                        allowed: false,
                        remaining: 0,
                        reset_after_us: 0,
                        retry_after_us: check.policy.window().as_micros(),
                    });
                    if too_large(check, share) {
                        outcome.allowed = false;
                        outcome.retry_after_us = check.policy.window().as_micros();
                    }
                    Decision {
                        fallback: Some(FailureMode::Local),
                        ..Decision::from_outcome(outcome, share.limit())
                    }
                }
                _ => {
                    bump(&self.counters.fail_open);
                    Decision {
                        allowed: true,
                        limit: check.policy.limit(),
                        remaining: check.policy.limit(),
                        reset_after: Duration::ZERO,
                        retry_after: Duration::ZERO,
                        fallback: Some(FailureMode::Open),
                    }
                }
            })
            .collect();
        Ok(decisions)
    }

    /// Reports a call the store answered; when that closes the breaker,
    /// forgets the denials remembered before the outage (the store may have
    /// lost its state in it, a restart).
    fn succeeded(&self, permit: Permit<'_>) {
        if permit.succeeded() == Some(BreakerState::Closed)
            && let Some(cache) = &self.deny_cache
        {
            cache.clear();
        }
    }

    /// Counts a reply the store gave that cannot be read, and logs it at
    /// error, at most once per [`INVALID_REPLY_LOG_EVERY`] with the number
    /// left unlogged: a bug on a hot key would otherwise log thousands of
    /// lines a second. The metric counts every one.
    fn invalid_reply(&self, policy: &Policy, error: &StoreError) {
        bump(&self.counters.invalid_replies);
        if let Some(unlogged) = self.invalid_reply_log.allow(self.clock.now()) {
            tracing::error!(
                policy = policy.name().as_str(),
                algorithm = policy.algorithm().as_str(),
                %error,
                unlogged_since_last = unlogged,
                "the store's reply to a check cannot be read; answered by the policy's failure mode (a bug, not an outage: the breaker ignores it)"
            );
        }
    }

    /// With the breaker probing (open past its cool-down, or half-open), a
    /// probe for readiness's own round-trip to the store; report its result
    /// with [`Failover::readiness_probed`]. A replica a load balancer took
    /// out of rotation gets no checks to probe with: without this, its
    /// breaker, and so its readiness, would wait for traffic that is not sent.
    ///
    /// One probe per breaker that is probing: readiness's round-trip covers
    /// the whole store (every master of a cluster answered, or not).
    pub fn readiness_probe(&self) -> Vec<Permit<'_>> {
        self.breakers
            .iter()
            .filter_map(CircuitBreaker::try_probe_for_readiness)
            .collect()
    }

    /// The result of a readiness probe: whether the store answered it.
    pub fn readiness_probed(&self, permits: Vec<Permit<'_>>, answered: bool) {
        for permit in permits {
            if answered {
                self.succeeded(permit);
            } else {
                let _ = permit.failed();
            }
        }
    }

    fn fall_back(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
        error: StoreError,
    ) -> Result<Decision, StoreError> {
        match policy.failure_mode() {
            FailureMode::Closed => {
                bump(&self.counters.fail_closed);
                Err(error)
            }
            FailureMode::Open => {
                bump(&self.counters.fail_open);
                // Nothing was counted anywhere, so nothing is used up.
                Ok(Decision {
                    allowed: true,
                    limit: policy.limit(),
                    remaining: policy.limit(),
                    reset_after: Duration::ZERO,
                    retry_after: Duration::ZERO,
                    fallback: Some(FailureMode::Open),
                })
            }
            FailureMode::Local => {
                bump(&self.counters.fail_local);
                Ok(self.decide_locally(policy, key, cost))
            }
        }
    }

    /// The `local` mode: this replica's share of the limit, decided in process.
    /// The decision reports the share as its limit, since that is what applies.
    fn decide_locally(&self, policy: &Policy, key: LimiterKey<'_>, cost: u64) -> Decision {
        let share = local_share(policy.limit(), self.live_replicas());
        let local = policy.with_local_share(share);
        let outcome = if cost <= share {
            self.local.decide(&local, key, cost)
        } else {
            // More than this replica's share can never fit locally; the
            // algorithms assume cost <= limit, so answer without asking them.
            Outcome {
                allowed: false,
                retry_after_us: policy.window().as_micros(),
                ..self.local.decide(&local, key, 0)
            }
        };
        Decision {
            fallback: Some(FailureMode::Local),
            ..Decision::from_outcome(outcome, share)
        }
    }

    /// Announces this replica to the shared store and learns the live count.
    /// A failure keeps the last count: that is the count the `local` mode
    /// should use during an outage.
    pub async fn heartbeat<S: Store>(&self, store: &S) {
        let stale_after = self.settings.heartbeat_interval * STALE_AFTER_HEARTBEATS;
        match store.heartbeat(&self.replica_id, stale_after).await {
            Ok(live) => {
                bump(&self.counters.heartbeats);
                let live = live.max(1);
                let before = self.live_replicas.swap(live, Ordering::Relaxed);
                if before != live {
                    tracing::info!(
                        before,
                        live,
                        "live replica count changed (local failure mode shares limits by it)"
                    );
                }
            }
            Err(error) => {
                bump(&self.counters.heartbeat_failures);
                tracing::debug!(%error, "heartbeat failed; keeping the last live replica count");
            }
        }
    }

    /// Drops expired deny-cache entries and idle local-mode state.
    pub fn sweep(&self) {
        if let Some(cache) = &self.deny_cache {
            cache.sweep(self.clock.now());
        }
        self.local.evict_idle();
    }

    /// The `local` mode's in-process limiter: size, bound, evictions.
    pub fn local_stats(&self) -> MemoryStats {
        self.local.stats()
    }

    /// The circuit breakers' state now: the worst of them (open, then
    /// half-open), so a replica is degraded while any part of its store is.
    pub fn breaker_state(&self) -> BreakerState {
        self.breakers
            .iter()
            .map(CircuitBreaker::state)
            .max_by_key(|state| match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            })
            .unwrap_or(BreakerState::Closed)
    }

    /// How many failure domains' breakers are not closed.
    pub fn breakers_not_closed(&self) -> usize {
        self.breakers
            .iter()
            .filter(|breaker| breaker.state() != BreakerState::Closed)
            .count()
    }

    pub fn live_replicas(&self) -> u64 {
        self.live_replicas.load(Ordering::Relaxed)
    }

    /// For a metrics exporter, and tests.
    pub fn counters(&self) -> &FailureCounters {
        &self.counters
    }

    pub fn deny_cache(&self) -> Option<&DenyCache> {
        self.deny_cache.as_ref()
    }

    pub fn health(&self, policies: &PolicySet) -> FailoverHealth {
        let mut failure_modes: BTreeMap<&'static str, usize> = FailureMode::ALL
            .into_iter()
            .map(|mode| (mode.as_str(), 0))
            .collect();
        for policy in policies.iter_sorted() {
            *failure_modes
                .entry(policy.failure_mode().as_str())
                .or_default() += 1;
        }
        FailoverHealth {
            failure_mode: self.settings.default_mode,
            failure_modes,
            breaker: BreakerHealth {
                state: self.breaker_state(),
                cool_down_remaining_ms: self
                    .breakers
                    .iter()
                    .filter_map(CircuitBreaker::cool_down_remaining)
                    .max()
                    .map(|left| left.as_millis() as u64),
                not_closed: self.breakers_not_closed(),
            },
            replica_id: self.replica_id.clone(),
            live_replicas: self.live_replicas(),
            deny_cache: DenyCacheHealth {
                enabled: self.deny_cache.is_some(),
                size: self.deny_cache.as_ref().map_or(0, DenyCache::len),
                max_size: self.deny_cache.as_ref().map_or(0, DenyCache::max_keys),
            },
            counters: self.counters.snapshot(),
        }
    }
}

/// A replica id unique enough for a fleet: random 64 bits from the standard
/// library's per-process hash keys (no extra dependency for randomness).
fn new_replica_id() -> String {
    let random = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{random:016x}")
}

/// The failure-handling part of readiness.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverHealth {
    /// The failure mode of policies that name none.
    pub failure_mode: FailureMode,
    /// How many policies use each failure mode.
    pub failure_modes: BTreeMap<&'static str, usize>,
    pub breaker: BreakerHealth,
    pub replica_id: String,
    /// Last count of live replicas seen in the shared store.
    pub live_replicas: u64,
    pub deny_cache: DenyCacheHealth,
    pub counters: CountersSnapshot,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BreakerHealth {
    /// The worst of the breakers (one per failure domain of the store).
    pub state: BreakerState,
    /// While one is open: the longest time until its probes may start.
    pub cool_down_remaining_ms: Option<u64>,
    /// Breakers not closed: with a Redis Cluster, masters whose keys go to
    /// their failure modes; with one Redis, 0 or 1.
    pub not_closed: usize,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DenyCacheHealth {
    pub enabled: bool,
    pub size: usize,
    pub max_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_share_rounds_down_and_never_reaches_zero() {
        assert_eq!(local_share(30, 3), 10);
        assert_eq!(local_share(10, 3), 3, "9 for the fleet, not 12");
        assert_eq!(local_share(2, 3), 1, "3 for the fleet: one each");
        assert_eq!(local_share(10, 0), 10, "no count yet: alone");
        for limit in 1..200 {
            for live in 1..20 {
                let fleet = live * local_share(limit, live);
                assert!(fleet <= limit.max(live), "{limit} over {live}: {fleet}");
            }
        }
    }
}
