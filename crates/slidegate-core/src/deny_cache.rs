//! The local deny cache: keys the shared store denied are answered 429 in process until their retry time, where that is exact.
//!
//! Why it is exact: when the store denies a check of judged cost 1 (a cost of
//! 1, or a peek), it reports `remaining` 0 and a `retry_after`. For all three
//! algorithms capacity only comes back with time, and while a key is denied
//! for one unit nobody can consume any (every check needs at least one), so
//! the key's state does not change until `retry_after` has passed: every check
//! of judged cost 1 in between would be denied too, with the same reset
//! instant and the same retry instant. Caching *key → (now + retry_after,
//! now + reset_after)* and answering only checks of judged cost 1 from it
//! therefore gives the answer the store would give.
//!
//! Two honest caveats:
//! - "now" is when the reply *arrives*, a little after the store decided,
//!   so the cache errs towards denying for up to the reply's network delay
//!   longer (a fraction of a millisecond on a LAN), never towards admitting.
//! - A store that loses its state (a restart, `FLUSHALL`) would admit the key
//!   at once, but the cache keeps denying until the retry time it was told.
//!   The limiter clears the cache whenever its circuit breaker closes after
//!   an outage, which covers restarts it noticed.
//!
//! A third: limits change. Each entry remembers the *generation* of the
//! limiter's snapshot (its policies, bumped on every catalog swap) that the
//! check it came from started on, and is only answered to checks on that
//! same generation. Clearing the cache on a swap is not enough by itself: a
//! check that began on the old snapshot and is still waiting for the store
//! would put its stale denial back right after the clear.
//!
//! Checks of larger costs are neither cached nor answered from the cache: a
//! denial of cost 5 says nothing exact about when cost 5 fits relative to
//! other replicas' traffic, and a denial of cost 1 says nothing about cost 5's
//! retry time.
//!
//! Memory is bounded: at most `max_keys` entries (further denials are not
//! cached, and counted), and [`DenyCache::sweep`] drops expired ones.

use dashmap::DashMap;

use super::algorithms::judged_cost;
use super::clock::Micros;
use super::decision::Outcome;
use super::key::{LimiterKey, with_composite_key};
use super::policy::Policy;

/// When a denied key may be admitted again, and when it is fully replenished.
#[derive(Debug, Clone, Copy)]
struct Denial {
    retry_at: Micros,
    reset_at: Micros,
    /// The snapshot generation the denial was judged under.
    generation: u64,
}

/// What [`DenyCache::remember`] did with an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    Cached,
    /// Allowed, or a cost above 1: caching it would not be exact.
    NotCacheable,
    /// The cache holds `max_keys` entries already.
    Full,
}

pub struct DenyCache {
    entries: DashMap<Box<str>, Denial>,
    max_keys: usize,
}

impl DenyCache {
    pub fn new(max_keys: usize) -> Self {
        Self {
            entries: DashMap::new(),
            max_keys,
        }
    }

    /// The store's answer to this check, if the cache knows it exactly: a
    /// denial judged under the same snapshot `generation` whose retry time
    /// has not come. A hit allocates nothing.
    pub fn lookup(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
        now: Micros,
        generation: u64,
    ) -> Option<Outcome> {
        if judged_cost(cost) != 1 {
            return None;
        }
        let denial = with_composite_key(
            &[
                policy.name().as_str(),
                key.tenant().unwrap_or(""),
                key.as_str(),
            ],
            |composite| self.entries.get(composite).map(|entry| *entry),
        )?;
        (now < denial.retry_at && denial.generation == generation).then(|| Outcome {
            allowed: false,
            remaining: 0,
            reset_after_us: denial.reset_at.saturating_sub(now),
            retry_after_us: denial.retry_at - now,
        })
    }

    /// Remembers `outcome`, the store's answer at `now` to a check that
    /// started on snapshot `generation`, when it is a denial of judged cost 1.
    pub fn remember(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
        outcome: &Outcome,
        now: Micros,
        generation: u64,
    ) -> Remembered {
        if outcome.allowed || judged_cost(cost) != 1 || outcome.retry_after_us == 0 {
            return Remembered::NotCacheable;
        }
        if self.entries.len() >= self.max_keys {
            return Remembered::Full;
        }
        let denial = Denial {
            retry_at: now + outcome.retry_after_us,
            reset_at: now + outcome.reset_after_us,
            generation,
        };
        with_composite_key(
            &[
                policy.name().as_str(),
                key.tenant().unwrap_or(""),
                key.as_str(),
            ],
            |composite| {
                self.entries.insert(composite.into(), denial);
            },
        );
        Remembered::Cached
    }

    /// Drops every entry whose retry time has come; returns how many went.
    pub fn sweep(&self, now: Micros) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, denial| denial.retry_at > now);
        before.saturating_sub(self.entries.len())
    }

    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::algorithms::{Gcra, SlidingLog, SlidingWindow};
    use crate::{Algorithm, PolicyName, Window};

    const SECOND: u64 = 1_000_000;
    const T0: u64 = 1_767_225_600 * SECOND;

    fn policy(limit: u64) -> Policy {
        Policy::new(
            PolicyName::parse("p").unwrap(),
            Algorithm::SlidingLog,
            limit,
            Window::parse("10s").unwrap(),
            1,
        )
        .unwrap()
    }

    fn denied(retry_after_us: u64, reset_after_us: u64) -> Outcome {
        Outcome {
            allowed: false,
            remaining: 0,
            reset_after_us,
            retry_after_us,
        }
    }

    #[test]
    fn a_denial_of_one_unit_is_answered_until_its_retry_time_and_not_after() {
        let cache = DenyCache::new(10);
        let (policy, key) = (policy(3), LimiterKey::parse("k").unwrap());
        assert_eq!(
            cache.remember(&policy, key, 1, &denied(SECOND, 5 * SECOND), T0, 0),
            Remembered::Cached
        );
        let later = T0 + SECOND / 4;
        assert_eq!(
            cache.lookup(&policy, key, 1, later, 0),
            Some(denied(3 * SECOND / 4, 5 * SECOND - SECOND / 4))
        );
        assert!(cache.lookup(&policy, key, 0, later, 0).is_some(), "a peek");
        assert!(cache.lookup(&policy, key, 2, later, 0).is_none(), "cost 2");
        assert!(cache.lookup(&policy, key, 1, T0 + SECOND, 0).is_none());
        let other = LimiterKey::parse("other").unwrap();
        assert!(cache.lookup(&policy, other, 1, later, 0).is_none());
    }

    #[test]
    fn a_denial_is_answered_only_to_checks_on_the_snapshot_generation_it_was_judged_under() {
        let cache = DenyCache::new(10);
        let (policy, key) = (policy(3), LimiterKey::parse("k").unwrap());
        // A check that began on generation 1 comes back after the swap to 2.
        cache.remember(&policy, key, 1, &denied(SECOND, SECOND), T0, 1);
        assert!(
            cache.lookup(&policy, key, 1, T0, 2).is_none(),
            "a newer snapshot"
        );
        assert!(cache.lookup(&policy, key, 1, T0, 1).is_some(), "its own");
        // The store's answer under generation 2 replaces it.
        cache.remember(&policy, key, 1, &denied(SECOND, SECOND), T0, 2);
        assert!(cache.lookup(&policy, key, 1, T0, 2).is_some());
    }

    #[test]
    fn only_denials_of_judged_cost_one_are_cached() {
        let cache = DenyCache::new(10);
        let (policy, key) = (policy(3), LimiterKey::parse("k").unwrap());
        let allowed = Outcome {
            allowed: true,
            ..denied(0, SECOND)
        };
        assert_eq!(
            cache.remember(&policy, key, 1, &allowed, T0, 0),
            Remembered::NotCacheable
        );
        assert_eq!(
            cache.remember(&policy, key, 2, &denied(SECOND, SECOND), T0, 0),
            Remembered::NotCacheable
        );
        assert_eq!(
            cache.remember(&policy, key, 0, &denied(SECOND, SECOND), T0, 0),
            Remembered::Cached
        );
    }

    #[test]
    fn the_cache_is_bounded_and_sweeping_drops_expired_entries() {
        let cache = DenyCache::new(2);
        let policy = policy(3);
        for (name, retry) in [("a", SECOND), ("b", 3 * SECOND), ("c", SECOND)] {
            let outcome = denied(retry, retry);
            let remembered = cache.remember(
                &policy,
                LimiterKey::parse(name).unwrap(),
                1,
                &outcome,
                T0,
                0,
            );
            let expected = if name == "c" {
                Remembered::Full
            } else {
                Remembered::Cached
            };
            assert_eq!(remembered, expected, "{name}");
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.sweep(T0 + SECOND), 1);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    /// One algorithm's state, as the shared store would hold it.
    #[derive(Debug, Clone)]
    enum State {
        Log(SlidingLog),
        Window(SlidingWindow),
        Bucket(Gcra),
    }

    impl State {
        fn decide(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
            match self {
                State::Log(s) => s.decide(now, window, limit, cost),
                State::Window(s) => s.decide(now, window, limit, cost),
                State::Bucket(s) => s.decide(now, window, limit, cost),
            }
        }
    }

    fn algorithm() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::Log(SlidingLog::default())),
            Just(State::Window(SlidingWindow::default())),
            Just(State::Bucket(Gcra::default())),
        ]
    }

    proptest! {
        /// A store behind the cache answers every check of cost 0 or 1 as
        /// the same store asked directly, on the same traffic (with zero
        /// network delay, which is what makes it exact rather than conservative).
        #[test]
        fn answers_from_the_cache_are_the_answers_the_store_would_give(
            state in algorithm(),
            limit in 1u64..8,
            window_ms in 1u64..2_000,
            steps in proptest::collection::vec((0u64..400_000, 0u64..3), 1..300),
        ) {
            let window = window_ms * 1000;
            let policy = policy(limit);
            let key = LimiterKey::parse("k").unwrap();
            let cache = DenyCache::new(16);
            let (mut direct, mut behind) = (state.clone(), state);
            let mut now = T0;
            for (gap, cost) in steps {
                now += gap;
                let cost = cost.min(limit);
                let expected = direct.decide(now, window, limit, cost);
                let answered = match cache.lookup(&policy, key, cost, now, 0) {
                    Some(cached) => cached,
                    None => {
                        let outcome = behind.decide(now, window, limit, cost);
                        cache.remember(&policy, key, cost, &outcome, now, 0);
                        outcome
                    }
                };
                prop_assert_eq!(answered.allowed, expected.allowed, "at +{}us, cost {}", now - T0, cost);
                prop_assert_eq!(answered.remaining, expected.remaining);
                // `gcra` and `sliding_window` compute these durations in
                // floating point and round them up, so "the same instant" seen
                // from two moments can differ by the rounding: one microsecond.
                prop_assert!(answered.retry_after_us.abs_diff(expected.retry_after_us) <= 1,
                    "retry after {} vs {}", answered.retry_after_us, expected.retry_after_us);
                prop_assert!(answered.reset_after_us.abs_diff(expected.reset_after_us) <= 1,
                    "reset after {} vs {}", answered.reset_after_us, expected.reset_after_us);
            }
        }
    }

    #[test]
    fn a_hit_allocates_nothing() {
        let cache = DenyCache::new(10);
        let (policy, key) = (policy(3), LimiterKey::parse("hot").unwrap());
        cache.remember(&policy, key, 1, &denied(SECOND, SECOND), T0, 0);
        assert!(
            cache.lookup(&policy, key, 1, T0, 0).is_some(),
            "warm the buffer"
        );
        let before = crate::allocations::on_this_thread();
        for step in 0..1000 {
            assert!(cache.lookup(&policy, key, 1, T0 + step, 0).is_some());
        }
        assert_eq!(crate::allocations::on_this_thread(), before);
    }
}
