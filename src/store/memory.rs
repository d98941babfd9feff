//! The embedded store: limiter state in this process, for trying slidegate out and for single-replica use.
//!
//! State is sharded (a `DashMap`: one lock per shard, not one for the map), so
//! concurrent checks of different keys rarely contend. Each entry remembers
//! when it is fully replenished; a sweep removes entries past that instant,
//! which is lossless (an idle key and a missing key decide alike) and keeps
//! memory proportional to the keys active within their windows, not to every
//! key ever seen.
//!
//! Limits here are per process. For one limit across replicas use Redis.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::limiter::algorithms::{Gcra, SlidingLog, SlidingWindow};
use crate::limiter::key::with_composite_key;
use crate::limiter::{
    Algorithm, Clock, LimiterKey, Micros, Outcome, Policy, Store, StoreError, StoreHealth,
};

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
        let (window, limit) = (policy.window().as_micros(), policy.limit());
        match self {
            State::SlidingLog(log) => log.decide(now, window, limit, cost),
            State::SlidingWindow(counters) => counters.decide(now, window, limit, cost),
            State::Gcra(bucket) => bucket.decide(now, window, limit, cost),
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
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: DashMap::new(),
            clock,
        }
    }

    /// Removes every entry that is fully replenished; returns how many went.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now();
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.idle_from > now);
        before.saturating_sub(self.entries.len())
    }

    /// Number of keys held (active or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides one check synchronously; [`Store::check`] wraps this. Public for benchmarks.
    pub fn decide(&self, policy: &Policy, key: LimiterKey<'_>, cost: u64) -> Outcome {
        let now = self.clock.now();
        // The algorithm is part of the map key so that changing a policy's
        // algorithm starts from fresh state instead of a mismatch; the tenant
        // (empty when unscoped; tenant names are never empty) keeps a tenant's
        // keys apart from everyone else's. The key is built in a reused
        // buffer: a check of a known key allocates nothing.
        let parts = [
            policy.name().as_str(),
            key.tenant().unwrap_or(""),
            policy.algorithm().as_str(),
            key.as_str(),
        ];
        with_composite_key(&parts, |composite| {
            if let Some(mut entry) = self.entries.get_mut(composite) {
                let outcome = entry.state.decide(now, policy, cost);
                if outcome.allowed && cost > 0 {
                    entry.idle_from = now + outcome.reset_after_us;
                }
                return outcome;
            }

            if cost == 0 {
                // A peek of a key with no state writes nothing, as in Redis.
                return State::new(policy.algorithm()).decide(now, policy, 0);
            }
            // Another worker may insert the same key between the lookup above
            // and this one; deciding under the entry's shard lock keeps its units.
            let mut entry = self
                .entries
                .entry(composite.into())
                .or_insert_with(|| Entry {
                    state: State::new(policy.algorithm()),
                    idle_from: now,
                });
            let outcome = entry.state.decide(now, policy, cost);
            if outcome.allowed {
                entry.idle_from = now + outcome.reset_after_us;
            }
            outcome
        })
    }
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

    fn kind(&self) -> &'static str {
        "memory"
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
    use crate::limiter::{FakeClock, PolicyName, Window};

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
}
