//! The limiter: finds the policy, validates the check, and asks its store for one atomic decision, through failover when the store is shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tracing::Instrument;
use tracing::field::Empty;

use crate::tenant::Tenant;
use crate::{
    ApiKeyDigest, BreakerState, Check, Decision, Failover, FailoverHealth, FailureMode, KeyError,
    LimiterKey, MemoryStats, Observer, Policy, PolicyRecorder, PolicySet, Store, StoreError,
    StoreErrorRecorder, StoreHealth, TenantKey, policy, rules,
};

/// Largest cost a single check may carry; costs above a policy's limit are refused anyway.
pub const MAX_COST: u64 = policy::MAX_LIMIT;

/// Why a check could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no policy named {0:?}")]
    UnknownPolicy(String),
    /// The API key is unknown or revoked. Says nothing about which.
    #[error("the API key is not valid")]
    UnknownApiKey,
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
            CheckError::UnknownApiKey => "invalid_api_key",
            CheckError::InvalidKey(_) => "invalid_key",
            CheckError::CostExceedsLimit { .. } => "cost_exceeds_limit",
            CheckError::Store(error) => error.kind(),
        }
    }
}

/// One of the checks of a request that several policies govern ([`Limiter::check_all`]).
#[derive(Debug, Clone, Copy)]
pub struct PolicyCheck<'a> {
    pub policy: &'a str,
    pub key: &'a str,
    /// The policy's default cost when `None`.
    pub cost: Option<u64>,
}

/// What [`Limiter::check_all`] does with a check that names no policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Fails the request ([`CheckError::UnknownPolicy`]).
    Refuse,
    /// The check does not apply: answered `None`.
    Skip,
}

/// A decision together with the policy that made it (for headers and bodies).
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Arc<Policy>,
    pub decision: Decision,
}

/// What the limiter decides with, put in force at once by [`Limiter::replace`]:
/// policies, the tenants their API keys resolve to, and forward-auth's rules.
/// Where it came from (a database, a file, a version) is its source's
/// business, not the limiter's.
#[derive(Debug, Default)]
pub struct Bundle {
    pub policies: PolicySet,
    pub tenants: Vec<TenantKey>,
    /// Forward-auth's match rules and key specs, one per policy that has a
    /// match rule, joined to `policies` by name.
    pub rules: Vec<rules::StoredRule>,
}

/// Decides checks against a set of policies, backed by one store.
///
/// The policies and API keys in force are one immutable `Snapshot` behind an
/// [`ArcSwap`]: a check loads it with one atomic operation and no lock, and a
/// resync builds a new one and swaps it in. A check that started on the old
/// snapshot finishes on it.
pub struct Limiter<S> {
    snapshot: ArcSwap<Snapshot>,
    store: S,
    store_errors: Arc<dyn StoreErrorRecorder>,
    observer: Arc<dyn Observer>,
    /// Failure handling, for a store shared with other replicas (Redis). The
    /// embedded store cannot fail and has none.
    failover: Option<Failover>,
    /// Held by [`Limiter::replace`] only (never by a check), so that two
    /// reloads finishing together compare versions and swap one at a time.
    replacing: std::sync::Mutex<()>,
}

/// Whether a replica should receive traffic, and why (see [`Limiter::health`]).
#[derive(Debug, Clone)]
pub struct LimiterHealth {
    /// The replica answers every check as its configuration says it should.
    pub ready: bool,
    /// The shared store cannot decide now (its breaker is open or half-open,
    /// or it did not answer readiness's probe): checks go to their failure modes.
    pub degraded: bool,
    pub policies: usize,
    pub store: StoreHealth,
    pub failover: Option<FailoverHealth>,
}

#[derive(Debug)]
struct Snapshot {
    policies: PolicySet,
    /// The same policies with their recorders, so one lookup per check finds both.
    entries: HashMap<Box<str>, Entry>,
    tenants: HashMap<ApiKeyDigest, Arc<Tenant>>,
    /// Forward-auth's rules when the policies come in bundles (joined to
    /// these very policies); `None` for fixed policies, whose rules
    /// forward-auth holds itself.
    rules: Option<Arc<rules::Rules>>,
    /// Whether there is anything to decide with: fixed policies exist, or a
    /// bundle was put in force once (even an empty one: a fresh deployment
    /// must be routable so its admin API can create the first policy).
    loaded: bool,
    /// One more than the snapshot it replaced (0 for the first). Not the
    /// catalog version, which config policies lack: what the deny cache
    /// needs is "judged under these very limits".
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    policy: Arc<Policy>,
    recorder: Arc<dyn PolicyRecorder>,
}

impl Snapshot {
    fn build(
        policies: PolicySet,
        tenants: &[TenantKey],
        rules: Option<&[rules::StoredRule]>,
        loaded: bool,
        observer: &dyn Observer,
        generation: u64,
    ) -> Self {
        let entries = policies
            .iter_sorted()
            .into_iter()
            .map(|policy| {
                let name = policy.name().as_str();
                let entry = Entry {
                    policy: Arc::clone(policy),
                    recorder: observer.policy(name),
                };
                (Box::from(name), entry)
            })
            .collect();
        let tenants = tenants
            .iter()
            .map(|key| (key.digest, Arc::new(Tenant::resolve(key, &policies))))
            .collect();
        let rules = rules.map(|stored| Arc::new(rules::Rules::from_stored(stored, &policies)));
        Self {
            policies,
            entries,
            tenants,
            rules,
            loaded,
            generation,
        }
    }
}

impl<S: Store> Limiter<S> {
    /// A limiter on fixed policies (from the configuration) reporting to
    /// `observer`; every recorder it can touch is asked for here.
    pub fn new(policies: PolicySet, store: S, observer: Arc<dyn Observer>) -> Self {
        let loaded = !policies.is_empty();
        Self::with_snapshot(policies, None, loaded, store, observer)
    }

    /// A limiter whose policies come in [`Bundle`]s (from the catalog): empty,
    /// and not ready, until the first [`Limiter::replace`].
    pub fn awaiting_bundle(store: S, observer: Arc<dyn Observer>) -> Self {
        Self::with_snapshot(PolicySet::default(), Some(&[]), false, store, observer)
    }

    fn with_snapshot(
        policies: PolicySet,
        rules: Option<&[rules::StoredRule]>,
        loaded: bool,
        store: S,
        observer: Arc<dyn Observer>,
    ) -> Self {
        observer.policies_loaded(policies.len());
        let snapshot = Snapshot::build(policies, &[], rules, loaded, &*observer, 0);
        let store_errors = observer.store_errors(store.kind());
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            store_errors,
            observer,
            failover: None,
            replacing: std::sync::Mutex::new(()),
        }
    }

    /// The same limiter in front of a shared store that may fail, handled by `failover`.
    pub fn with_failover(mut self, failover: Failover) -> Self {
        self.failover = Some(failover);
        self
    }

    /// Puts `bundle` in force: checks that start after this return decide
    /// with it; a check already running finishes on what it began with.
    /// Recorders are asked for new policy names and removed ones are
    /// reported, so the label set stays bounded by the policies that exist.
    /// Which of two bundles is newer is the caller's to judge (the catalog
    /// compares versions).
    pub fn replace(&self, bundle: Bundle) {
        // Held by replacements only, never by a check: two finishing together
        // compare against the snapshot each one replaces. A poisoned lock
        // guards no data: the snapshot is swapped atomically.
        let _replacing = self
            .replacing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        // Bundles carry no failure mode: their policies take the replica's
        // `limiter.failure_mode`, as file policies without one do.
        let policies = match &self.failover {
            Some(failover) => {
                let mode = failover.default_mode();
                PolicySet::new(
                    bundle
                        .policies
                        .iter_sorted()
                        .into_iter()
                        .map(|policy| (**policy).clone().with_failure_mode(mode)),
                )
                .unwrap_or(bundle.policies)
            }
            None => bundle.policies,
        };
        let next = Snapshot::build(
            policies,
            &bundle.tenants,
            Some(&bundle.rules),
            true,
            &*self.observer,
            previous.generation.wrapping_add(1),
        );
        for name in previous.entries.keys() {
            if !next.entries.contains_key(name) {
                self.observer.policy_removed(name);
            }
        }
        self.observer.policies_loaded(next.policies.len());
        self.snapshot.store(Arc::new(next));
        // A remembered denial was judged under the old limits: a raised limit
        // must admit at once, not after the old retry time. Clearing frees
        // the memory; what keeps a check still in flight on the old snapshot
        // from putting its denial back is the generation each entry carries.
        if let Some(cache) = self.failover.as_ref().and_then(Failover::deny_cache) {
            cache.clear();
        }
    }

    /// Forward-auth's rules from the bundle in force now, read without a
    /// lock; `None` when the policies are fixed (from the configuration,
    /// whose rules forward-auth holds). Empty until the first bundle.
    pub fn bundle_rules(&self) -> Option<Arc<rules::Rules>> {
        self.snapshot.load().rules.clone()
    }

    /// Checks `cost` units (the policy's default cost when `None`) of `key` against `policy`.
    ///
    /// Traces: no span of its own. The decision (policy, algorithm, cost,
    /// outcome, remaining; never the key, which may identify people) is
    /// recorded on the span of the request it serves, when that span declares
    /// the fields ([`crate::observe::record_decision`]); the store's client
    /// span, if it has one, is a child of that span.
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
        self.check_as(None, policy, key, cost).await
    }

    /// As [`Limiter::check`], for the holder of the API key with `api_key`
    /// as its digest: the key is counted for the key's tenant only, under the
    /// tenant's overridden limit where it has one. `None`: no API key.
    ///
    /// # Errors
    /// As [`Limiter::check`], and [`CheckError::UnknownApiKey`] for a key that
    /// is unknown or revoked.
    pub async fn check_as(
        &self,
        api_key: Option<&ApiKeyDigest>,
        policy: &str,
        key: &str,
        cost: Option<u64>,
    ) -> Result<Checked, CheckError> {
        let snapshot = self.snapshot.load();
        // No span of its own: matching is a map lookup that takes well under
        // a microsecond, and a span for it cost more than the match. A match
        // that fails is the request span's `error.type`.
        let (entry, policy, key, cost) = match_check(&snapshot, api_key, policy, key, cost)?;

        // No span of its own either: the decision is recorded on the
        // request's span (see `observe::record_decision`), and the store's
        // client span, if it has one, hangs from that.
        let started = Instant::now();
        let decided = match &self.failover {
            Some(failover) => {
                failover
                    .decide(&self.store, &policy, key, cost, snapshot.generation)
                    .await
            }
            None => self
                .store
                .check(&policy, key, cost)
                .await
                .map(|outcome| Decision::from_outcome(outcome, policy.limit())),
        };
        let elapsed = started.elapsed();
        let request = tracing::Span::current();
        crate::observe::record_decision(&request, &policy, cost, decided.as_ref());
        let decision = match decided {
            Ok(decision) => decision,
            Err(error) => {
                self.store_errors.failed(&error);
                return Err(error.into());
            }
        };
        // A shadow policy's denials are counted apart (`shadow`): that is
        // what operators watch before they enforce it.
        entry
            .recorder
            .decided(&decision, policy.is_shadow(), elapsed);
        Ok(Checked { policy, decision })
    }

    /// Checks every one of `checks` as one request that all their limits
    /// govern, **all or nothing**: it is admitted only if every enforced
    /// policy admits it, and then it is counted on every policy that
    /// admitted; if any enforced policy denies, no policy consumes anything
    /// (see [`Store::check_all`] for each store's guarantee against
    /// concurrent checks). Shadow policies are counted when they admit and
    /// never refuse. One answer per check, in order: the denials, and for
    /// the policies that admitted a refused request, what their keys hold
    /// without it (`allowed`, nothing consumed).
    ///
    /// A single check takes [`Limiter::check`]'s path, deny cache included;
    /// several always ask the store (see [`Failover`]'s `decide_all`). One
    /// `limiter.decide` span covers the store's call, with the number of
    /// checks as `slidegate.checks`.
    ///
    /// `unknown`: what a check naming no policy does — fails the request
    /// before anything is counted, or (forward-auth, whose catalog rules may
    /// name a policy deleted since) is skipped and answered `None`.
    ///
    /// # Errors
    /// As [`Limiter::check`], for the first check that cannot be decided;
    /// nothing is consumed then.
    pub async fn check_all(
        &self,
        checks: &[PolicyCheck<'_>],
        unknown: UnknownPolicy,
    ) -> Result<Vec<Option<Checked>>, CheckError> {
        if let [one] = checks {
            return match self.check(one.policy, one.key, one.cost).await {
                Ok(checked) => Ok(vec![Some(checked)]),
                Err(CheckError::UnknownPolicy(_)) if unknown == UnknownPolicy::Skip => {
                    Ok(vec![None])
                }
                Err(error) => Err(error),
            };
        }
        let snapshot = self.snapshot.load();
        let mut matched = Vec::with_capacity(checks.len());
        for check in checks {
            match match_check(&snapshot, None, check.policy, check.key, check.cost) {
                Ok(found) => matched.push(Some(found)),
                Err(CheckError::UnknownPolicy(_)) if unknown == UnknownPolicy::Skip => {
                    matched.push(None);
                }
                Err(error) => return Err(error),
            }
        }
        let to_decide: Vec<Check<'_>> = matched
            .iter()
            .flatten()
            .map(|(_, policy, key, cost)| Check {
                policy,
                key: *key,
                cost: *cost,
                enforced: !policy.is_shadow(),
            })
            .collect();
        if to_decide.is_empty() {
            return Ok(matched.iter().map(|_| None).collect());
        }

        let deciding = tracing::debug_span!(
            "limiter.decide",
            slidegate.checks = to_decide.len(),
            slidegate.store = self.store.kind(),
            slidegate.outcome = Empty,
            error.type = Empty,
            otel.status_code = Empty,
        );
        let started = Instant::now();
        let decided = async {
            match &self.failover {
                Some(failover) => {
                    failover
                        .decide_all(&self.store, &to_decide, snapshot.generation)
                        .await
                }
                None => self.store.check_all(&to_decide).await.map(|outcomes| {
                    outcomes
                        .into_iter()
                        .zip(&to_decide)
                        .map(|(outcome, check)| {
                            Decision::from_outcome(outcome, check.policy.limit())
                        })
                        .collect()
                }),
            }
        }
        .instrument(deciding.clone())
        .await;
        let elapsed = started.elapsed();
        let decisions = match decided {
            Ok(decisions) if decisions.len() == to_decide.len() => decisions,
            Ok(decisions) => {
                let error = StoreError::InvalidReply(format!(
                    "{} decisions for {} checks",
                    decisions.len(),
                    to_decide.len()
                ));
                return Err(self.store_failed(&deciding, error));
            }
            Err(error) => return Err(self.store_failed(&deciding, error)),
        };
        drop(to_decide);
        let mut decisions = decisions.into_iter();
        let mut refused = false;
        let answers: Vec<Option<Checked>> = matched
            .into_iter()
            .map(|found| {
                let (entry, policy, _, _) = found?;
                let decision = decisions.next()?;
                entry
                    .recorder
                    .decided(&decision, policy.is_shadow(), elapsed);
                refused |= !decision.allowed && !policy.is_shadow();
                Some(Checked { policy, decision })
            })
            .collect();
        if !deciding.is_disabled() {
            deciding.record(
                "slidegate.outcome",
                if refused { "denied" } else { "allowed" },
            );
        }
        Ok(answers)
    }

    /// Counts a store failure and marks the `limiter.decide` span with it.
    fn store_failed(&self, deciding: &tracing::Span, error: StoreError) -> CheckError {
        self.store_errors.failed(&error);
        if !deciding.is_disabled() {
            deciding.record("slidegate.outcome", "error");
            deciding.record("error.type", error.kind());
            deciding.record("otel.status_code", "ERROR");
        }
        error.into()
    }

    /// The policies in force now (a snapshot: later changes do not show in it).
    pub fn policies(&self) -> PolicySet {
        self.snapshot.load().policies.clone()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn failover(&self) -> Option<&Failover> {
        self.failover.as_ref()
    }

    /// The in-process stores' sizes and evictions: the embedded store's, and
    /// the `local` failure mode's when there is a shared store.
    pub fn memory_stats(&self) -> Vec<MemoryStats> {
        self.store
            .memory_stats()
            .into_iter()
            .chain(self.failover.as_ref().map(Failover::local_stats))
            .collect()
    }

    /// One heartbeat to the shared store (nothing without one).
    pub async fn heartbeat(&self) {
        if let Some(failover) = &self.failover {
            failover.heartbeat(&self.store).await;
        }
    }

    /// Readiness. `ready` means: the policies are loaded (from the file: at
    /// least one; from the catalog: loaded once, even empty), and either the
    /// shared store can decide (it answered a probe and its breaker is
    /// closed: open and half-open both send checks to their failure modes),
    /// or no policy fails closed, so every check still gets the answer its
    /// configuration asks for (`open` admits, `local` decides locally).
    /// A replica whose `closed` policies would answer 503 is not ready.
    ///
    /// While the breaker is probing, the store's health round-trip is one of
    /// its probes (see [`Failover::readiness_probe`]): a replica taken out of
    /// rotation still finds out that the store is back.
    pub async fn health(&self) -> LimiterHealth {
        self.health_given(self.probe_store().await)
    }

    /// One health round-trip to the store, as the background readiness probe
    /// makes it (see [`crate::probe`]). While the breaker is probing, the
    /// round-trip is one of its probes (see [`Failover::readiness_probe`]).
    pub async fn probe_store(&self) -> StoreHealth {
        let probes = self
            .failover
            .as_ref()
            .map(Failover::readiness_probe)
            .unwrap_or_default();
        let store = self.store.health().await;
        if let Some(failover) = &self.failover
            && !probes.is_empty()
        {
            failover.readiness_probed(probes, store.ok);
        }
        store
    }

    /// As [`Limiter::health`], with the store's health as a probe made
    /// elsewhere found it (readiness reads background probes, see
    /// [`crate::probe`]); the rest (policies, breaker) is read now.
    pub fn health_given(&self, store: StoreHealth) -> LimiterHealth {
        let snapshot = self.snapshot.load();
        let policies = snapshot.policies.len();
        let failover = self
            .failover
            .as_ref()
            .map(|failover| failover.health(&snapshot.policies));
        let breaker_not_closed = failover
            .as_ref()
            .is_some_and(|failover| failover.breaker.state != BreakerState::Closed);
        let degraded = !store.ok || breaker_not_closed;
        let no_policy_fails_closed = snapshot
            .policies
            .iter_sorted()
            .iter()
            .all(|policy| policy.failure_mode() != FailureMode::Closed);
        LimiterHealth {
            ready: snapshot.loaded && (!degraded || no_policy_fails_closed),
            degraded,
            policies,
            store,
            failover,
        }
    }
}

/// Finds the tenant and the policy, validates key and cost: everything a check
/// needs before the store. The policy is the tenant's override where it has one.
fn match_check<'a>(
    snapshot: &'a Snapshot,
    api_key: Option<&ApiKeyDigest>,
    policy: &str,
    key: &'a str,
    cost: Option<u64>,
) -> Result<(&'a Entry, Arc<Policy>, LimiterKey<'a>, u64), CheckError> {
    let tenant = match api_key {
        Some(digest) => Some(
            snapshot
                .tenants
                .get(digest)
                .ok_or(CheckError::UnknownApiKey)?,
        ),
        None => None,
    };
    let entry = snapshot.entries.get(policy).ok_or_else(|| {
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
    let mut key = LimiterKey::parse(key)?;
    let mut effective = &entry.policy;
    if let Some(tenant) = tenant {
        key = key.scoped(tenant.name.as_str());
        if let Some(overridden) = tenant.overrides.get(policy) {
            effective = overridden;
        }
    }
    let cost = cost.unwrap_or(effective.default_cost());
    if cost > effective.limit() {
        return Err(CheckError::CostExceedsLimit {
            cost,
            limit: effective.limit(),
        });
    }
    Ok((entry, Arc::clone(effective), key, cost))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::*;
    use std::time::Duration;

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
        let settings = FailoverOptions {
            default_mode: FailureMode::Closed,
            breaker: BreakerOptions::default(),
            deny_cache_max_keys: Some(100),
            local_max_keys: 1000,
            heartbeat_interval: Duration::from_secs(1),
        };
        let limiter = Limiter::new(
            PolicySet::new([policy]).unwrap(),
            MemoryStore::new(Arc::new(clock.clone())),
            unobserved(),
        )
        .with_failover(Failover::new(settings, Arc::new(clock.clone())));
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

/// A store double for the limiter's own tests: decides in memory, and for
/// keys a test names either answers a reply the store cannot read or holds
/// the answer until the test releases it.
#[cfg(test)]
mod scripted {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::memory::MemoryStore;
    use crate::*;
    use std::time::Duration;

    pub struct ScriptedStore {
        pub memory: MemoryStore,
        /// While set, every check fails as an unreachable store would, and health says so.
        pub down: std::sync::atomic::AtomicBool,
        /// Keys whose every check gets [`StoreError::InvalidReply`].
        pub invalid: Mutex<HashSet<String>>,
        /// A key whose next check is decided, then held until the gate has a permit.
        held: Mutex<Option<(String, Arc<Semaphore>)>>,
        /// Notified each time a held check has been decided and waits at the gate.
        pub reached_gate: Notify,
    }

    impl ScriptedStore {
        pub fn new(clock: &FakeClock) -> Self {
            Self {
                memory: MemoryStore::new(Arc::new(clock.clone())),
                down: std::sync::atomic::AtomicBool::new(false),
                invalid: Mutex::default(),
                held: Mutex::default(),
                reached_gate: Notify::new(),
            }
        }

        /// The next check of `key` waits after being decided until the returned gate gets a permit.
        pub fn hold(&self, key: &str) -> Arc<Semaphore> {
            let gate = Arc::new(Semaphore::new(0));
            *self.held.lock().unwrap() = Some((key.to_owned(), Arc::clone(&gate)));
            gate
        }
    }

    impl Store for ScriptedStore {
        async fn check(
            &self,
            policy: &Policy,
            key: LimiterKey<'_>,
            cost: u64,
        ) -> Result<Outcome, StoreError> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            if self.invalid.lock().unwrap().contains(key.as_str()) {
                return Err(StoreError::InvalidReply("negative value -1".into()));
            }
            let outcome = self.memory.decide(policy, key, cost);
            let gate = {
                let mut held = self.held.lock().unwrap();
                match held.take() {
                    Some((held_key, gate)) if held_key == key.as_str() => Some(gate),
                    other => {
                        *held = other;
                        None
                    }
                }
            };
            if let Some(gate) = gate {
                self.reached_gate.notify_one();
                gate.acquire().await.unwrap().forget();
            }
            Ok(outcome)
        }

        async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            Ok(self.memory.decide_all(checks))
        }

        async fn health(&self) -> StoreHealth {
            StoreHealth {
                ok: !self.down.load(std::sync::atomic::Ordering::Relaxed),
                ..self.memory.health().await
            }
        }

        fn kind(&self) -> &'static str {
            "scripted"
        }

        async fn heartbeat(&self, _: &str, _: Duration) -> Result<u64, StoreError> {
            Ok(1)
        }
    }
}

#[cfg(test)]
mod failover_tests {
    use super::scripted::ScriptedStore;
    use super::*;
    use crate::*;
    use std::time::Duration;

    fn policy(limit: u64, mode: FailureMode) -> Policy {
        Policy::new(
            PolicyName::parse("p").unwrap(),
            Algorithm::SlidingLog,
            limit,
            Window::parse("10s").unwrap(),
            1,
        )
        .unwrap()
        .with_failure_mode(mode)
    }

    fn settings() -> FailoverOptions {
        FailoverOptions {
            default_mode: FailureMode::Closed,
            breaker: BreakerOptions::default(),
            deny_cache_max_keys: Some(100),
            local_max_keys: 1000,
            heartbeat_interval: Duration::from_secs(1),
        }
    }

    /// A limiter on the scripted store with config policies `p` (fails
    /// closed) and `lenient` (fails open), both sliding_log 3 per 10 s.
    fn scripted_limiter() -> (Limiter<ScriptedStore>, FakeClock) {
        let clock = FakeClock::default();
        let lenient = Policy::new(
            PolicyName::parse("lenient").unwrap(),
            Algorithm::Gcra,
            3,
            Window::parse("10s").unwrap(),
            1,
        )
        .unwrap()
        .with_failure_mode(FailureMode::Open);
        let limiter = Limiter::new(
            PolicySet::new([policy(3, FailureMode::Closed), lenient]).unwrap(),
            ScriptedStore::new(&clock),
            unobserved(),
        )
        .with_failover(Failover::new(settings(), Arc::new(clock.clone())));
        (limiter, clock)
    }

    fn check_now(
        limiter: &Limiter<ScriptedStore>,
        policy: &str,
        key: &str,
    ) -> Result<Checked, CheckError> {
        use futures_util::FutureExt;
        limiter
            .check(policy, key, None)
            .now_or_never()
            .expect("the scripted store answers at once")
    }

    /// Every event logged while `f` runs on this thread: level and fields.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<(tracing::Level, String)>) {
        use std::fmt::Write;
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                let level = *event.metadata().level();
                self.0.lock().unwrap().push((level, fields.0));
            }
        }
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let result = tracing::subscriber::with_default(subscriber, f);
        let events = capture.0.lock().unwrap().clone();
        (result, events)
    }

    #[test]
    fn an_unreadable_reply_is_answered_by_the_failure_mode_logged_counted_and_never_opens_the_breaker()
     {
        let (limiter, _clock) = scripted_limiter();
        limiter.store().invalid.lock().unwrap().insert("bad".into());
        let (results, events) = logged(|| {
            (0..100)
                .map(|_| {
                    (
                        check_now(&limiter, "p", "bad"),
                        check_now(&limiter, "lenient", "bad"),
                    )
                })
                .collect::<Vec<_>>()
        });
        for (closed, open) in results {
            // `closed`: 503, with the error kind the metric counts.
            let error = closed.unwrap_err();
            assert_eq!(error.kind(), "invalid_reply", "{error}");
            // `open`: admitted, marked as not decided by the store.
            let open = open.unwrap().decision;
            assert!(open.allowed);
            assert_eq!(open.fallback, Some(FailureMode::Open));
        }
        let failover = limiter.failover().unwrap();
        let counters = failover.counters();
        assert_eq!(
            failover.breaker_state(),
            BreakerState::Closed,
            "200 in a row"
        );
        assert_eq!(counters.invalid_replies(), 200);
        assert_eq!(counters.store_failures(), 0);
        assert_eq!(counters.breaker_opened(), 0);
        assert_eq!((counters.fail_closed(), counters.fail_open()), (100, 100));
        // Other keys are decided by the store as ever.
        for _ in 0..3 {
            assert!(check_now(&limiter, "p", "good").unwrap().decision.allowed);
        }
        assert!(!check_now(&limiter, "p", "good").unwrap().decision.allowed);
        // One error line (the rest held back), naming policy and algorithm.
        let errors: Vec<_> = events
            .iter()
            .filter(|(level, _)| *level == tracing::Level::ERROR)
            .collect();
        assert_eq!(errors.len(), 1, "{events:?}");
        let line = &errors[0].1;
        for field in [
            "policy=\"p\"",
            "algorithm=\"sliding_log\"",
            "negative value -1",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        assert!(
            !line.contains("bad"),
            "the key stays out of the log: {line}"
        );
    }

    #[test]
    fn half_open_is_degraded_and_readiness_probes_close_the_breaker_without_any_check() {
        let (limiter, clock) = scripted_limiter();
        let store = limiter.store();
        store.down.store(true, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..5 {
            assert!(check_now(&limiter, "p", "k").is_err());
        }
        let health = || {
            use futures_util::FutureExt;
            limiter.health().now_or_never().unwrap()
        };
        let breaker = |health: &LimiterHealth| health.failover.as_ref().unwrap().breaker.state;
        let open = health();
        assert_eq!(breaker(&open), BreakerState::Open);
        assert!(
            open.degraded && !open.ready,
            "a closed policy would answer 503"
        );

        // The store is back and the cool-down over, but no check arrives (a
        // load balancer stopped routing here): readiness itself probes.
        store
            .down
            .store(false, std::sync::atomic::Ordering::Relaxed);
        clock.advance(Duration::from_secs(1));
        for probe in 1..3 {
            let probing = health();
            assert_eq!(breaker(&probing), BreakerState::HalfOpen, "probe {probe}");
            assert!(
                probing.degraded,
                "half-open still answers most checks by failure mode"
            );
            assert!(!probing.ready);
        }
        let closed = health();
        assert_eq!(breaker(&closed), BreakerState::Closed);
        assert!(closed.ready && !closed.degraded);
        assert!(check_now(&limiter, "p", "k").unwrap().decision.allowed);
        let counters = limiter.failover().unwrap().counters();
        assert_eq!(counters.store_calls(), 6, "readiness probes are not checks");
    }

    fn bundle(limit: u64) -> Bundle {
        Bundle {
            policies: PolicySet::new([policy(limit, FailureMode::Closed)]).unwrap(),
            ..Bundle::default()
        }
    }

    #[tokio::test]
    async fn a_denial_from_a_check_begun_before_a_limit_was_raised_is_not_answered_after_it() {
        let clock = FakeClock::default();
        let limiter = Arc::new(
            Limiter::awaiting_bundle(ScriptedStore::new(&clock), unobserved())
                .with_failover(Failover::new(settings(), Arc::new(clock.clone()))),
        );
        limiter.replace(bundle(1));
        assert!(
            limiter
                .check("p", "k", None)
                .await
                .unwrap()
                .decision
                .allowed
        );

        // The store denies the next check under limit 1, but its answer is
        // still on the way when the catalog raises the limit to 5.
        let gate = limiter.store().hold("k");
        let in_flight = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move { limiter.check("p", "k", None).await }
        });
        limiter.store().reached_gate.notified().await;
        limiter.replace(bundle(5));
        gate.add_permits(1);
        let stale = in_flight.await.unwrap().unwrap();
        assert!(!stale.decision.allowed, "judged under the old limit");
        assert_eq!(stale.decision.limit, 1);

        // The next check is judged under the raised limit: admitted, by the store.
        let next = limiter.check("p", "k", None).await.unwrap();
        assert!(next.decision.allowed, "{:?}", next.decision);
        assert_eq!(next.decision.limit, 5);
        let counters = limiter.failover().unwrap().counters();
        assert_eq!(counters.deny_cache_hits(), 0);
        assert_eq!(counters.store_calls(), 3);
    }
}

/// [`Limiter::check_all`]: several policies on one request, all or nothing.
#[cfg(test)]
mod all_or_nothing {
    use futures_util::FutureExt;

    use super::scripted::ScriptedStore;
    use super::*;
    use crate::*;
    use std::time::Duration;

    fn policy(name: &str, algorithm: Algorithm, limit: u64, mode: FailureMode) -> Policy {
        Policy::new(
            PolicyName::parse(name).unwrap(),
            algorithm,
            limit,
            Window::parse("10s").unwrap(),
            1,
        )
        .unwrap()
        .with_failure_mode(mode)
    }

    fn limiter(policies: Vec<Policy>) -> (Limiter<ScriptedStore>, FakeClock) {
        let clock = FakeClock::default();
        let options = FailoverOptions {
            default_mode: FailureMode::Closed,
            breaker: BreakerOptions::default(),
            deny_cache_max_keys: Some(100),
            local_max_keys: 1000,
            heartbeat_interval: Duration::from_secs(1),
        };
        let limiter = Limiter::new(
            PolicySet::new(policies).unwrap(),
            ScriptedStore::new(&clock),
            unobserved(),
        )
        .with_failover(Failover::new(options, Arc::new(clock.clone())));
        (limiter, clock)
    }

    /// Checks `(policy, key, cost)` as one request; the scripted store answers at once.
    fn request(
        limiter: &Limiter<ScriptedStore>,
        checks: &[(&str, &str, Option<u64>)],
    ) -> Result<Vec<Checked>, CheckError> {
        let checks: Vec<PolicyCheck<'_>> = checks
            .iter()
            .map(|&(policy, key, cost)| PolicyCheck { policy, key, cost })
            .collect();
        let answers = limiter
            .check_all(&checks, UnknownPolicy::Refuse)
            .now_or_never()
            .expect("nothing to wait for")?;
        Ok(answers.into_iter().map(Option::unwrap).collect())
    }

    /// What `key` holds under `policy`: a peek, counting nothing.
    fn remaining(limiter: &Limiter<ScriptedStore>, policy: &str, key: &str) -> u64 {
        limiter
            .check(policy, key, Some(0))
            .now_or_never()
            .unwrap()
            .unwrap()
            .decision
            .remaining
    }

    #[test]
    fn a_refused_request_consumes_nothing_on_any_of_its_limits() {
        for algorithm in Algorithm::ALL {
            let (limiter, _clock) = limiter(vec![
                policy("a", algorithm, 10, FailureMode::Closed),
                policy("b", algorithm, 3, FailureMode::Closed),
            ]);
            let mut admitted = 0;
            for _ in 0..10 {
                let answers = request(&limiter, &[("a", "k", None), ("b", "k", None)]).unwrap();
                if answers.iter().all(|checked| checked.decision.allowed) {
                    admitted += 1;
                    continue;
                }
                let (a, b) = (&answers[0], &answers[1]);
                assert!(!b.decision.allowed, "{algorithm}: b refuses");
                assert!(b.decision.retry_after > Duration::ZERO);
                assert!(a.decision.allowed, "{algorithm}: a would admit");
                assert_eq!(a.decision.remaining, 7, "{algorithm}: a without it");
            }
            assert_eq!(admitted, 3, "{algorithm}");
            assert_eq!(
                remaining(&limiter, "a", "k"),
                7,
                "{algorithm}: exactly 3 on a"
            );
            assert_eq!(remaining(&limiter, "b", "k"), 0, "{algorithm}");
        }
    }

    #[test]
    fn a_shadow_policy_is_counted_when_it_admits_and_never_refuses() {
        let (limiter, _clock) = limiter(vec![
            policy("a", Algorithm::SlidingLog, 10, FailureMode::Closed),
            policy("watch", Algorithm::SlidingLog, 1, FailureMode::Closed).with_shadow(true),
            policy("b", Algorithm::SlidingLog, 2, FailureMode::Closed),
        ]);
        for round in 0..2 {
            let answers = request(&limiter, &[("a", "k", None), ("watch", "k", None)]).unwrap();
            assert!(answers[0].decision.allowed);
            assert_eq!(
                answers[1].decision.allowed,
                round == 0,
                "the shadow denies once full"
            );
            assert!(answers[1].admitted(), "and never refuses");
        }
        assert_eq!(remaining(&limiter, "a", "k"), 8);

        // Refused by an enforced policy: the shadow's admission is not counted either.
        let fresh = [("b", "x", Some(2)), ("watch", "x", None), ("a", "x", None)];
        assert!(request(&limiter, &fresh).unwrap()[0].decision.allowed);
        let refused = request(&limiter, &fresh).unwrap();
        assert!(!refused[0].decision.allowed);
        assert_eq!(
            remaining(&limiter, "a", "x"),
            9,
            "only the admitted request"
        );
        assert_eq!(remaining(&limiter, "b", "x"), 0);
    }

    #[test]
    fn the_same_key_twice_in_a_request_sees_itself() {
        let (limiter, _clock) = limiter(vec![policy("a", Algorithm::Gcra, 3, FailureMode::Closed)]);
        let answers = request(&limiter, &[("a", "k", Some(2)), ("a", "k", Some(2))]).unwrap();
        assert!(answers[0].decision.allowed);
        assert!(!answers[1].decision.allowed, "2 + 2 > 3");
        assert_eq!(answers[0].decision.remaining, 3, "given back");
        assert_eq!(remaining(&limiter, "a", "k"), 3);
    }

    #[test]
    fn a_check_that_cannot_be_decided_fails_the_request_before_anything_is_counted() {
        let (limiter, _clock) = limiter(vec![policy(
            "a",
            Algorithm::SlidingLog,
            3,
            FailureMode::Closed,
        )]);
        let error = request(&limiter, &[("a", "k", None), ("gone", "k", None)]).unwrap_err();
        assert!(matches!(error, CheckError::UnknownPolicy(_)), "{error}");
        let error = request(&limiter, &[("a", "k", None), ("a", "k", Some(4))]).unwrap_err();
        assert!(
            matches!(error, CheckError::CostExceedsLimit { .. }),
            "{error}"
        );
        assert_eq!(remaining(&limiter, "a", "k"), 3);

        // Forward-auth's catalog rules may name a policy deleted since: skipped.
        let checks = [
            PolicyCheck {
                policy: "a",
                key: "k",
                cost: None,
            },
            PolicyCheck {
                policy: "gone",
                key: "k",
                cost: None,
            },
        ];
        let answers = limiter
            .check_all(&checks, UnknownPolicy::Skip)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(answers[0].as_ref().unwrap().decision.allowed);
        assert!(answers[1].is_none());
        assert_eq!(remaining(&limiter, "a", "k"), 2);
    }

    #[test]
    fn with_the_store_down_each_limit_takes_its_failure_mode_and_local_ones_decide_together() {
        let (limiter, _clock) = limiter(vec![
            policy("closed", Algorithm::SlidingLog, 10, FailureMode::Closed),
            policy("open", Algorithm::SlidingLog, 10, FailureMode::Open),
            policy("local-a", Algorithm::SlidingLog, 10, FailureMode::Local),
            policy("local-b", Algorithm::SlidingWindow, 3, FailureMode::Local),
        ]);
        limiter
            .store()
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);

        let error = request(&limiter, &[("open", "k", None), ("closed", "k", None)]).unwrap_err();
        assert!(
            matches!(error, CheckError::Store(_)),
            "one closed policy fails it: {error}"
        );

        let checks = [
            ("open", "k", None),
            ("local-a", "k", None),
            ("local-b", "k", None),
        ];
        let mut admitted = 0;
        for _ in 0..6 {
            let answers = request(&limiter, &checks).unwrap();
            assert_eq!(answers[0].decision.fallback, Some(FailureMode::Open));
            assert_eq!(answers[1].decision.fallback, Some(FailureMode::Local));
            admitted += usize::from(answers.iter().all(|checked| checked.decision.allowed));
        }
        assert_eq!(admitted, 3, "local-b's 3 (one replica: the whole limit)");
        let counters = limiter.failover().unwrap().counters();
        assert_eq!(counters.snapshot().fail_closed, 1);
        // local-a was counted on the admitted requests only.
        let local = limiter.failover().unwrap();
        assert_eq!(local.local_stats().keys, 2);
    }

    #[test]
    fn one_check_takes_the_single_path_and_its_deny_cache() {
        let (limiter, _clock) = limiter(vec![policy(
            "a",
            Algorithm::SlidingLog,
            1,
            FailureMode::Closed,
        )]);
        assert!(
            request(&limiter, &[("a", "k", None)]).unwrap()[0]
                .decision
                .allowed
        );
        assert!(
            !request(&limiter, &[("a", "k", None)]).unwrap()[0]
                .decision
                .allowed
        );
        assert!(
            !request(&limiter, &[("a", "k", None)]).unwrap()[0]
                .decision
                .allowed
        );
        let counters = limiter.failover().unwrap().counters();
        assert_eq!(counters.deny_cache_hits(), 1);
    }
}
