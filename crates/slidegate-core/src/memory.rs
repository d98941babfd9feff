//! The embedded store: limiter state in this process, for trying slidegate out and for single-replica use.
//!
//! State is sharded (a `DashMap`: one lock per shard, not one for the map), so
//! concurrent checks of different keys rarely contend. Each entry remembers
//! when it is fully replenished; a sweep removes entries past that instant,
//! which is lossless (an idle key and a missing key decide alike) and keeps
//! memory proportional to the keys active within their windows, not to every
//! key ever seen.
//!
//! Memory is bounded too: the store holds at most `max_keys` keys, also
//! while many are inserted at once. A counter of keys held *plus keys being
//! inserted* is raised before every insert and never passes the bound, so the
//! map cannot either. When a new key finds the store full, one caller makes
//! room in one pass over the map, down to 90% of the bound, so the cost is
//! amortised over the next tenth of the bound's new keys: idle keys go first
//! (lossless), then the keys closest to being fully replenished, whose
//! forgotten state admits the fewest units early. A check of a key the store
//! already holds takes no new lock and never scans.
//!
//! Limits here are per process. For one limit across replicas use Redis.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::algorithms::{Gcra, SlidingLog, SlidingWindow};
use crate::counters::LogThrottle;
use crate::key::with_composite_key;
use crate::{
    Algorithm, Check, Clock, LimiterKey, MemoryStats, Micros, Outcome, Policy, Store, StoreError,
    StoreHealth,
};

/// Keys held by default: with typical keys a few hundred bytes each, tens of
/// megabytes at most, which fits a small container.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How often "the store is full" is logged at most (each eviction is counted).
pub const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Entries read to choose which keys a full store forgets (see `evict`).
const EVICTION_SAMPLE: usize = 2048;

#[derive(Debug)]
enum State {
    SlidingLog(SlidingLog),
    SlidingWindow(SlidingWindow),
    Gcra(Gcra),
}

impl State {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::SlidingLog => State::SlidingLog(SlidingLog::default()),
            Algorithm::SlidingWindow => State::SlidingWindow(SlidingWindow::default()),
            Algorithm::Gcra => State::Gcra(Gcra::default()),
        }
    }

    fn decide(&mut self, now: Micros, policy: &Policy, cost: u64) -> Outcome {
        self.reserve(now, policy, cost).0
    }

    /// As `decide`, and what `release` needs to give the units back (the
    /// instant or fixed window they were counted at).
    fn reserve(&mut self, now: Micros, policy: &Policy, cost: u64) -> (Outcome, u64) {
        let (window, limit) = (policy.window().as_micros(), policy.limit());
        match self {
            State::SlidingLog(log) => log.reserve(now, window, limit, cost),
            State::SlidingWindow(counters) => counters.reserve(now, window, limit, cost),
            State::Gcra(bucket) => bucket.reserve(now, window, limit, cost),
        }
    }

    fn release(&mut self, now: Micros, cost: u64, token: u64) {
        match self {
            State::SlidingLog(log) => log.release(token, cost),
            State::SlidingWindow(counters) => counters.release(token, cost),
            State::Gcra(bucket) => bucket.release(now, token, cost),
        }
    }
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// From this instant on the entry decides exactly like a missing one.
    idle_from: Micros,
}

/// In-process limiter state, shared by all workers of one replica.
pub struct MemoryStore {
    entries: DashMap<Box<str>, Entry>,
    clock: Arc<dyn Clock>,
    /// What metrics and logs call this store: `embedded` or `local`.
    name: &'static str,
    max_keys: usize,
    /// Keys held plus keys being inserted: raised before an insert, lowered
    /// after a removal, never above `max_keys`.
    reserved: AtomicUsize,
    /// One caller makes room at a time; the others wait for it, and only
    /// when the store is full.
    making_room: Mutex<()>,
    /// Keys removed to make room: idle ones (lossless), and ones still counting.
    evicted_idle: AtomicU64,
    evicted_active: AtomicU64,
    full_log: LogThrottle,
}

impl MemoryStore {
    /// The embedded store, holding at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::bounded(clock, DEFAULT_MAX_KEYS, "embedded")
    }

    /// A store holding at most `max_keys` keys (at least 1), called `name`
    /// in metrics and logs.
    pub fn bounded(clock: Arc<dyn Clock>, max_keys: usize, name: &'static str) -> Self {
        Self {
            entries: DashMap::new(),
            clock,
            name,
            max_keys: max_keys.max(1),
            reserved: AtomicUsize::new(0),
            making_room: Mutex::new(()),
            evicted_idle: AtomicU64::new(0),
            evicted_active: AtomicU64::new(0),
            full_log: LogThrottle::new(FULL_LOG_EVERY),
        }
    }

    /// Removes every entry that is fully replenished; returns how many went.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now();
        let mut removed = 0;
        self.entries.retain(|_, entry| {
            let keep = entry.idle_from > now;
            removed += usize::from(!keep);
            keep
        });
        self.reserved.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Number of keys held (active or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Size, bound and evictions, for metrics.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            name: self.name,
            keys: self.entries.len() as u64,
            max_keys: self.max_keys as u64,
            evicted_idle: self.evicted_idle.load(Ordering::Relaxed),
            evicted_active: self.evicted_active.load(Ordering::Relaxed),
        }
    }

    /// Decides one check synchronously; [`Store::check`] wraps this. Public for benchmarks.
    pub fn decide(&self, policy: &Policy, key: LimiterKey<'_>, cost: u64) -> Outcome {
        self.reserve(policy, key, cost).0
    }

    /// Decides several checks as one request, all or nothing
    /// ([`Store::check_all`] wraps this): each check is decided (its units
    /// reserved) in order; if an enforced one denied, the units of those
    /// that admitted are given back, newest first, and each reports what
    /// its key holds then.
    ///
    /// The guarantee against concurrent checks: a key's lock is held for
    /// its own check only, so another check of the same key between the
    /// reservation and its release (microseconds) sees the reserved units:
    /// it may be denied although the request that held them is refused,
    /// never admitted beyond the limit.
    pub fn decide_all(&self, checks: &[Check<'_>]) -> Vec<Outcome> {
        let mut decided: Vec<(Outcome, u64)> = checks
            .iter()
            .map(|check| self.reserve(check.policy, check.key, check.cost))
            .collect();
        let refused = checks
            .iter()
            .zip(&decided)
            .any(|(check, (outcome, _))| check.enforced && !outcome.allowed);
        if refused {
            for (check, (outcome, token)) in checks.iter().zip(decided.iter_mut()).rev() {
                if outcome.allowed && check.cost > 0 {
                    *outcome = self.release(check.policy, check.key, check.cost, *token);
                }
            }
        }
        decided.into_iter().map(|(outcome, _)| outcome).collect()
    }

    /// Gives back `cost` units that [`MemoryStore::reserve`] admitted with
    /// `token`, and answers what the key holds then, as an admission that
    /// consumed nothing. A key forgotten meanwhile (swept, evicted) has
    /// nothing to give back.
    fn release(&self, policy: &Policy, key: LimiterKey<'_>, cost: u64, token: u64) -> Outcome {
        let now = self.clock.now();
        let parts = composite_parts(policy, key);
        let peek = with_composite_key(&parts, |composite| match self.entries.get_mut(composite) {
            Some(mut entry) => {
                entry.state.release(now, cost, token);
                entry.state.decide(now, policy, 0)
            }
            None => State::new(policy.algorithm()).decide(now, policy, 0),
        });
        Outcome {
            allowed: true,
            retry_after_us: 0,
            ..peek
        }
    }

    /// As [`MemoryStore::decide`], and what [`State::release`] needs to give
    /// the units back.
    fn reserve(&self, policy: &Policy, key: LimiterKey<'_>, cost: u64) -> (Outcome, u64) {
        let now = self.clock.now();
        // The key is built in a reused buffer: a check of a known key
        // allocates nothing.
        let parts = composite_parts(policy, key);
        with_composite_key(&parts, |composite| {
            if let Some(mut entry) = self.entries.get_mut(composite) {
                let (outcome, token) = entry.state.reserve(now, policy, cost);
                // Denials and peeks move it too: after a lowered limit a gcra
                // bucket drains slower than when it was filled. Never earlier:
                // keeping an entry longer is lossless, dropping it early is not.
                entry.idle_from = entry
                    .idle_from
                    .max(now.saturating_add(outcome.reset_after_us));
                return (outcome, token);
            }

            if cost == 0 {
                // A peek of a key with no state writes nothing, as in Redis.
                return State::new(policy.algorithm()).reserve(now, policy, 0);
            }
            // No shard lock is held here: making room takes them all in turn.
            self.reserve_one(now);
            // Another worker may insert the same key between the lookup above
            // and this one; deciding under the entry's shard lock keeps its units.
            let mut inserted = false;
            let outcome = {
                let mut entry = self.entries.entry(composite.into()).or_insert_with(|| {
                    inserted = true;
                    Entry {
                        state: State::new(policy.algorithm()),
                        idle_from: now,
                    }
                });
                let (outcome, token) = entry.state.reserve(now, policy, cost);
                if outcome.allowed {
                    entry.idle_from = now + outcome.reset_after_us;
                }
                (outcome, token)
            };
            if !inserted {
                // That other worker's reservation holds the key's place.
                self.reserved.fetch_sub(1, Ordering::AcqRel);
            }
            outcome
        })
    }

    /// Takes one place for a new key, making room first when there is none.
    fn reserve_one(&self, now: Micros) {
        loop {
            let held = self.reserved.load(Ordering::Acquire);
            if held < self.max_keys {
                if self
                    .reserved
                    .compare_exchange_weak(held, held + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            self.make_room(now);
        }
    }

    /// Evicts down to 90% of the bound (at least one key): idle keys first,
    /// then those closest to being fully replenished.
    fn make_room(&self, now: Micros) {
        // A poisoned lock guards no data.
        let _one_at_a_time = self
            .making_room
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.reserved.load(Ordering::Acquire) < self.max_keys {
            // Someone made room while this caller waited.
            return;
        }
        let target = (self.max_keys - self.max_keys / 10).min(self.max_keys - 1);
        let excess = self.entries.len().saturating_sub(target);
        if excess == 0 {
            // Full of places reserved by inserts still under way: they finish
            // at once, and then there is something to evict.
            std::thread::yield_now();
            return;
        }
        let (idle, active) = self.evict(excess, now);
        let (idle, active) = if idle + active == 0 {
            // Every key chosen was checked again meanwhile (and so moved
            // away from replenishment): any key will do, to make progress.
            (0, self.evict_any(excess))
        } else {
            (idle, active)
        };
        self.evicted_idle.fetch_add(idle as u64, Ordering::Relaxed);
        self.evicted_active
            .fetch_add(active as u64, Ordering::Relaxed);
        if let Some(unlogged) = self.full_log.allow(now) {
            tracing::warn!(
                store = self.name,
                max_keys = self.max_keys,
                evicted_idle = idle,
                evicted_active = active,
                times_full_unlogged = unlogged,
                "in-process limiter store full: forgot keys to make room (idle first, then those closest to replenished); a forgotten key that was still counting may be admitted early"
            );
        }
    }

    /// Removes about `excess` keys (at least as many, if it can): every idle
    /// key, then the active keys replenished soonest. Returns (idle, active)
    /// removed.
    ///
    /// Which keys are "replenished soonest" is judged from a sample: the map
    /// is sharded by hash, so the first [`EVICTION_SAMPLE`] entries it yields
    /// are a random sample of its keys, and the share to evict is cut at the
    /// same quantile of the sample. One pass over the map then removes them,
    /// instead of two passes and a sort of every entry.
    fn evict(&self, excess: usize, now: Micros) -> (usize, usize) {
        let held = self.entries.len().max(1);
        let mut sample: Vec<Micros> = self
            .entries
            .iter()
            .take(EVICTION_SAMPLE)
            .map(|entry| entry.idle_from)
            .collect();
        if sample.is_empty() {
            return (0, 0);
        }
        let share = excess.min(held) as f64 / held as f64;
        let nth = ((sample.len() as f64 * share).ceil() as usize).clamp(1, sample.len()) - 1;
        // Idle keys cost nothing to forget: all of them go, however many.
        let threshold = (*sample.select_nth_unstable(nth).1).max(now);
        let (mut idle, mut active) = (0, 0);
        self.entries.retain(|_, entry| {
            let forget = entry.idle_from <= now
                || entry.idle_from < threshold
                // Keys at the cut itself only while the count is short.
                || (entry.idle_from == threshold && idle + active < excess);
            if forget {
                if entry.idle_from <= now {
                    idle += 1;
                } else {
                    active += 1;
                }
            }
            !forget
        });
        self.reserved.fetch_sub(idle + active, Ordering::AcqRel);
        (idle, active)
    }

    /// Removes `excess` keys, whichever come first.
    fn evict_any(&self, excess: usize) -> usize {
        let mut left = excess;
        self.entries.retain(|_, _| {
            let forget = left > 0;
            left -= usize::from(forget);
            !forget
        });
        let removed = excess - left;
        self.reserved.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Keys held plus keys being inserted (tests check the bound on it).
    #[cfg(test)]
    fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }
}

/// The map key of `key` under `policy`. The algorithm is part of it so that
/// changing a policy's algorithm starts from fresh state instead of a
/// mismatch; the tenant (empty when unscoped; tenant names are never empty)
/// keeps a tenant's keys apart from everyone else's.
fn composite_parts<'a>(policy: &'a Policy, key: LimiterKey<'a>) -> [&'a str; 4] {
    [
        policy.name().as_str(),
        key.tenant().unwrap_or(""),
        policy.algorithm().as_str(),
        key.as_str(),
    ]
}

impl Store for MemoryStore {
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        Ok(self.decide(policy, key, cost))
    }

    /// See [`MemoryStore::decide_all`] for the guarantee.
    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.decide_all(checks))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.stats())
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth {
            store: "memory",
            ok: true,
            dependencies: Vec::new(),
            scripts: Vec::new(),
        }
    }

    /// This store is private to its process: one replica, always.
    async fn heartbeat(&self, _replica: &str, _stale_after: Duration) -> Result<u64, StoreError> {
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeClock, PolicyName, Window};

    fn policy(algorithm: Algorithm, limit: u64, window: &str) -> Policy {
        Policy::new(
            PolicyName::parse(&format!("{algorithm}-{window}")).unwrap(),
            algorithm,
            limit,
            Window::parse(window).unwrap(),
            1,
        )
        .unwrap()
    }

    #[test]
    fn idle_keys_are_evicted_and_memory_returns_to_empty() {
        let clock = FakeClock::default();
        let store = MemoryStore::new(Arc::new(clock.clone()));
        for algorithm in Algorithm::ALL {
            let policy = policy(algorithm, 5, "1s");
            for user in 0..20_000 {
                let key = format!("user-{user}");
                assert!(
                    store
                        .decide(&policy, LimiterKey::parse(&key).unwrap(), 1)
                        .allowed
                );
            }
        }
        assert_eq!(store.len(), 60_000);
        assert_eq!(store.evict_idle(), 0, "nothing is idle within the window");

        // The two-counter window keeps its count for one more window.
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.evict_idle(), 60_000);
        assert!(store.is_empty());
    }

    #[test]
    fn eviction_keeps_keys_that_still_count() {
        let clock = FakeClock::default();
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let short = policy(Algorithm::SlidingLog, 5, "1s");
        let long = policy(Algorithm::SlidingLog, 5, "1h");
        let key = LimiterKey::parse("k").unwrap();
        store.decide(&short, key, 1);
        store.decide(&long, key, 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.evict_idle(), 1);
        assert_eq!(store.decide(&long, key, 0).remaining, 4);
    }

    #[test]
    fn a_tenants_key_never_shares_state_with_an_unscoped_key() {
        let store = MemoryStore::new(Arc::new(FakeClock::default()));
        let policy = policy(Algorithm::SlidingLog, 1, "1h");
        let scoped = LimiterKey::parse("bob").unwrap().scoped("acme");
        assert!(store.decide(&policy, scoped, 1).allowed);
        assert!(!store.decide(&policy, scoped, 1).allowed);
        for unscoped in ["bob", "acme/bob", "@acme:bob", "acme@bob"] {
            let key = LimiterKey::parse(unscoped).unwrap();
            assert!(store.decide(&policy, key, 1).allowed, "{unscoped:?}");
        }
        // The composite map key joins its parts with NUL, which no key can hold.
        for forged in ["@acme\0bob", "acme\0bob"] {
            assert!(LimiterKey::parse(forged).is_err(), "{forged:?}");
        }
        let other_tenant = LimiterKey::parse("bob").unwrap().scoped("acme2");
        assert!(store.decide(&policy, other_tenant, 1).allowed);
    }

    #[test]
    fn peeks_and_denials_of_unknown_keys_store_nothing() {
        let store = MemoryStore::new(Arc::new(FakeClock::default()));
        let policy = policy(Algorithm::Gcra, 5, "1s");
        store.decide(&policy, LimiterKey::parse("peek").unwrap(), 0);
        assert!(store.is_empty());
    }

    /// A peek (cost 0) says whether the store still holds `key`'s units.
    fn holds(store: &MemoryStore, policy: &Policy, key: &str) -> bool {
        let outcome = store.decide(policy, LimiterKey::parse(key).unwrap(), 0);
        outcome.remaining < policy.limit()
    }

    #[test]
    fn a_full_store_forgets_idle_keys_first_then_those_closest_to_replenished() {
        let clock = FakeClock::default();
        let store = MemoryStore::bounded(Arc::new(clock.clone()), 10, "embedded");
        let short = policy(Algorithm::SlidingLog, 5, "1s");
        let long = policy(Algorithm::Gcra, 100, "1h");
        let decide = |policy: &Policy, key: &str, cost: u64| {
            store.decide(policy, LimiterKey::parse(key).unwrap(), cost)
        };
        for key in ["s1", "s2", "s3"] {
            decide(&short, key, 1);
        }
        // Same instant: "light" took 1 of 100 units, "heavy" 50, so light is
        // replenished after 36 s and heavy after 30 minutes.
        decide(&long, "light", 1);
        decide(&long, "heavy", 50);
        for key in ["l1", "l2", "l3", "l4", "l5"] {
            clock.advance(Duration::from_secs(1));
            decide(&long, key, 10);
        }
        assert_eq!(store.len(), 10);
        // The short keys are idle now: the eleventh key makes room with them
        // alone, all three of them, although one would have been enough.
        decide(&long, "new-1", 10);
        assert_eq!(store.len(), 8);
        assert_eq!(store.stats().evicted_idle, 3);
        assert_eq!(store.stats().evicted_active, 0);
        decide(&long, "new-2", 10);
        decide(&long, "new-3", 10);
        // Full again, nothing idle: the key closest to replenished goes.
        assert!(holds(&store, &long, "light"));
        decide(&long, "new-4", 10);
        assert_eq!(store.len(), 10);
        assert_eq!(store.stats().evicted_active, 1);
        assert!(!holds(&store, &long, "light"), "1 unit forgotten");
        assert!(holds(&store, &long, "heavy"), "50 units kept");
        for key in ["l1", "l5", "new-1", "new-4"] {
            assert!(holds(&store, &long, key), "{key}");
        }
    }

    #[test]
    fn a_million_distinct_keys_from_two_threads_never_push_the_store_past_ten_thousand() {
        const BOUND: usize = 10_000;
        const PER_THREAD: u32 = 500_000;
        let clock = FakeClock::default();
        let store = MemoryStore::bounded(Arc::new(clock.clone()), BOUND, "embedded");
        let policy = policy(Algorithm::Gcra, 5, "1h");
        // One thread per core: the inserts race each other and the evictions.
        std::thread::scope(|scope| {
            for thread in 0..2 {
                let (store, policy, clock) = (&store, &policy, &clock);
                scope.spawn(move || {
                    let mut key = String::with_capacity(24);
                    for user in 0..PER_THREAD {
                        clock.advance(Duration::from_micros(1));
                        key.clear();
                        std::fmt::Write::write_fmt(&mut key, format_args!("t{thread}-{user}"))
                            .unwrap();
                        let outcome = store.decide(policy, LimiterKey::parse(&key).unwrap(), 1);
                        assert!(outcome.allowed);
                        // Keys held plus keys being inserted: the map holds no more.
                        let reserved = store.reserved();
                        assert!(reserved <= BOUND, "{reserved} after {key}");
                    }
                });
            }
        });
        let held = store.len();
        assert!((BOUND * 8 / 10..=BOUND).contains(&held), "{held}");
        assert_eq!(store.reserved(), held, "every place taken is a key held");
        let stats = store.stats();
        assert_eq!(
            stats.evicted_active + stats.evicted_idle,
            1_000_000 - held as u64
        );
    }

    #[test]
    fn a_full_store_forgets_the_oldest_of_many_equal_keys_and_keeps_the_newest() {
        const BOUND: usize = 10_000;
        let clock = FakeClock::default();
        let store = MemoryStore::bounded(Arc::new(clock.clone()), BOUND, "embedded");
        let policy = policy(Algorithm::SlidingLog, 5, "1h");
        for user in 0..100_000u32 {
            clock.advance(Duration::from_micros(1));
            let key = format!("user-{user}");
            assert!(
                store
                    .decide(&policy, LimiterKey::parse(&key).unwrap(), 1)
                    .allowed
            );
        }
        let held = store.len();
        assert!((BOUND * 8 / 10..=BOUND).contains(&held), "{held}");
        // What was forgotten is what was replenished soonest: the oldest
        // keys. The cut is judged from a sample, so allow it some slack.
        for user in (100_000 - BOUND * 8 / 10)..100_000 {
            assert!(
                holds(&store, &policy, &format!("user-{user}")),
                "user-{user}"
            );
        }
        for user in 0..80_000 {
            assert!(
                !holds(&store, &policy, &format!("user-{user}")),
                "user-{user}"
            );
        }
    }

    #[test]
    fn concurrent_inserts_of_the_same_keys_never_push_the_store_past_its_bound() {
        const BOUND: usize = 1_000;
        let store = MemoryStore::bounded(Arc::new(FakeClock::default()), BOUND, "local");
        let policy = policy(Algorithm::Gcra, 5, "1h");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (store, policy) = (&store, &policy);
                scope.spawn(move || {
                    // Every thread inserts the same keys, racing for each one.
                    for user in 0..20_000 {
                        let key = format!("shared-{user}");
                        store.decide(policy, LimiterKey::parse(&key).unwrap(), 1);
                        let reserved = store.reserved();
                        assert!(reserved <= BOUND, "{reserved} keys held or being inserted");
                    }
                });
            }
        });
        assert!(store.len() <= BOUND);
        assert_eq!(store.reserved(), store.len());
    }

    #[test]
    fn the_periodic_sweep_frees_places_for_new_keys() {
        let clock = FakeClock::default();
        let store = MemoryStore::bounded(Arc::new(clock.clone()), 3, "embedded");
        let policy = policy(Algorithm::SlidingLog, 5, "1s");
        for key in ["a", "b", "c"] {
            store.decide(&policy, LimiterKey::parse(key).unwrap(), 1);
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.evict_idle(), 3);
        assert_eq!(store.reserved(), 0);
        for key in ["d", "e", "f"] {
            store.decide(&policy, LimiterKey::parse(key).unwrap(), 1);
        }
        assert_eq!(store.stats().evicted_idle + store.stats().evicted_active, 0);
    }
}
