//! Counts of everything the failure handling does, kept in atomics so any part of the request path can add to them cheaply.
//!
//! Readiness shows a [`CountersSnapshot`]; a metrics exporter can read the
//! same values through the getters. Every counter only grows.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Declares the counters once: the struct of atomics, a getter per counter,
/// and a plain snapshot with the same fields.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Counters of the shared store's failures and how they were answered.
        #[derive(Debug, Default)]
        pub struct FailureCounters {
            $($(#[doc = $doc])+ pub(crate) $name: AtomicU64,)+
        }

        impl FailureCounters {
            $($(#[doc = $doc])+ pub fn $name(&self) -> u64 {
                self.$name.load(Ordering::Relaxed)
            })+

            /// Every counter at (about) one instant; counters are read one by one, without a lock.
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name(),)+ }
            }
        }

        /// Plain values of [`FailureCounters`], for readiness and exporters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct CountersSnapshot {
            $($(#[doc = $doc])+ pub $name: u64,)+
        }
    };
}

counters! {
    /// Checks sent to the shared store (including breaker probes), counted
    /// when they end: answered, failed, or cancelled.
    store_calls,
    /// Checks the shared store failed to decide, timeouts included (not invalid replies).
    store_failures,
    /// Checks whose reply from the shared store could not be read: a bug,
    /// answered by the failure mode, and not a failure for the breaker.
    invalid_replies,
    /// Of `store_failures`, those that ran out of time (pool checkout or command).
    store_timeouts,
    /// Checks not sent to the shared store because the breaker was open.
    short_circuited,
    /// Breaker transitions to open.
    breaker_opened,
    /// Breaker transitions to half-open (cool-down over, probing).
    breaker_half_opened,
    /// Breaker transitions back to closed.
    breaker_closed,
    /// Checks answered 429 from the deny cache, without a round-trip.
    deny_cache_hits,
    /// Denials not cached because the cache held its maximum number of keys.
    deny_cache_full,
    /// Checks admitted by the `open` failure mode.
    fail_open,
    /// Checks refused with 503 by the `closed` failure mode.
    fail_closed,
    /// Checks decided by the `local` failure mode's in-process limiter.
    fail_local,
    /// Heartbeats that reached the shared store.
    heartbeats,
    /// Heartbeats that failed (the live replica count kept its last value).
    heartbeat_failures,
}

/// Adds one. Relaxed: counters order nothing, they are only read for reports.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Lets a repeated log line through at most once per `every`, without a lock:
/// for conditions that can recur on every request (a bug on a hot key, a
/// full store) and would otherwise flood the log.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: u64,
    /// When a line last went through (clock micros; 0: never).
    last: AtomicU64,
    /// Occurrences held back since then.
    held_back: AtomicU64,
}

impl LogThrottle {
    pub(crate) fn new(every: std::time::Duration) -> Self {
        Self {
            every: every.as_micros() as u64,
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when this occurrence may be
    /// logged at `now`; `None` (and counted as held back) otherwise.
    pub(crate) fn allow(&self, now: super::clock::Micros) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every;
        if due
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_every_counter() {
        let counters = FailureCounters::default();
        bump(&counters.fail_open);
        bump(&counters.fail_open);
        bump(&counters.heartbeat_failures);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.fail_open, 2);
        assert_eq!(snapshot.heartbeat_failures, 1);
        assert_eq!(counters.fail_open(), 2);
        assert_eq!(snapshot.store_calls, 0);
    }

    #[test]
    fn a_throttled_line_goes_through_once_per_period_and_says_how_many_it_held_back() {
        let throttle = LogThrottle::new(std::time::Duration::from_secs(60));
        let t0 = 1_767_225_600_000_000;
        assert_eq!(throttle.allow(t0), Some(0), "the first one");
        for second in 1..60 {
            assert_eq!(throttle.allow(t0 + second * 1_000_000), None);
        }
        assert_eq!(throttle.allow(t0 + 60_000_000), Some(59));
        assert_eq!(throttle.allow(t0 + 60_000_001), None);
    }
}
