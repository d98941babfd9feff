//! In-memory twins of the Lua scripts in `lua/`: each maps (state, now) to (outcome, new state).
//!
//! Every function here mirrors its script line for line, including the order
//! of floating-point operations, so the embedded store and Redis admit the same
//! traffic. Read the script headers for the semantics and worked examples; a
//! change to one side without the other is a bug (the shared store suite in
//! `tests/api/store_contract.rs` runs the same cases against both).
//!
//! All times are microseconds; `window` is at least 1000 (1 ms), `limit` at
//! least 1, and `cost` at most `limit` (the limiter checks before calling).
//! The limit may differ from one call to the next (a policy changed): a key
//! holding more than its limit is denied with `remaining` 0, never an
//! underflow. Arithmetic on stored counts saturates rather than wraps or panics.

use std::collections::VecDeque;

use super::clock::Micros;
use super::decision::Outcome;

/// A cost of 0 is a peek: judged as one unit, consuming nothing.
pub(crate) fn judged_cost(cost: u64) -> u64 {
    cost.max(1)
}

/// One entry of `sliding_log.lua`'s log: the units admitted at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    at: Micros,
    units: u64,
    /// The key's cumulative units up to and including this entry (its score in Redis).
    end: u64,
}

/// `sliding_log.lua`: one entry per admission instant, oldest first, carrying its units.
///
/// The script's only other input is the previous layout's log (one member
/// per unit), which the embedded store never had.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    log: VecDeque<Admission>,
}

impl SlidingLog {
    pub fn decide(&mut self, clock: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
        self.reserve(clock, window, limit, cost).0
    }

    /// As [`SlidingLog::decide`], and the instant its units were logged at:
    /// what [`SlidingLog::release`] needs to give them back.
    pub fn reserve(
        &mut self,
        clock: Micros,
        window: u64,
        limit: u64,
        cost: u64,
    ) -> (Outcome, Micros) {
        // The clock going back never admits on borrowed time: `now` is never
        // earlier than the newest entry, and the reply's durations are on `clock`.
        let now = self.log.back().map_or(clock, |newest| clock.max(newest.at));

        // Entries that left the window (t + window <= now) are all at the front.
        while self
            .log
            .front()
            .is_some_and(|first| first.at.saturating_add(window) <= now)
        {
            self.log.pop_front();
        }

        let (counted, top, mut newest_at) = match (self.log.front(), self.log.back()) {
            (Some(first), Some(newest)) => (
                newest
                    .end
                    .saturating_sub(first.end.saturating_sub(first.units)),
                newest.end,
                Some(newest.at),
            ),
            _ => (0, 0, None),
        };
        // The script adds the previous layout's live units here; this store has none.
        let mut held = counted;
        // When the newest unit leaves, as a duration on the clock (0 when nothing is held).
        let reset_after = |newest_at: Option<Micros>| {
            newest_at.map_or(0, |at| at.saturating_add(window).saturating_sub(clock))
        };

        let need = judged_cost(cost);
        if held.saturating_add(need) > limit {
            // Denied: wait until the window holds at most `limit - need` units,
            // i.e. until the entry holding unit number top - allowance leaves.
            let allowance = limit.saturating_sub(need);
            let fits = if counted <= allowance {
                now
            } else {
                let unit = top.saturating_sub(allowance);
                let index = self.log.partition_point(|entry| entry.end < unit);
                self.log
                    .get(index)
                    .map_or(now, |entry| entry.at.saturating_add(window))
            };
            let outcome = Outcome {
                allowed: false,
                remaining: limit.saturating_sub(held),
                reset_after_us: reset_after(newest_at),
                retry_after_us: fits.saturating_sub(clock),
            };
            return (outcome, now);
        }

        if cost > 0 {
            match self.log.back_mut() {
                // The same instant as the newest entry (or the clock went back): one entry for both.
                Some(newest) if newest_at == Some(now) => {
                    newest.units = newest.units.saturating_add(cost);
                    newest.end = newest.end.saturating_add(cost);
                }
                _ => self.log.push_back(Admission {
                    at: now,
                    units: cost,
                    end: top.saturating_add(cost),
                }),
            }
            newest_at = Some(now);
            held = held.saturating_add(cost);
        }
        let outcome = Outcome {
            allowed: true,
            remaining: limit.saturating_sub(held),
            reset_after_us: reset_after(newest_at),
            retry_after_us: 0,
        };
        (outcome, now)
    }

    /// Gives back `cost` units logged at `at` by [`SlidingLog::reserve`]
    /// (the script's `release`): the entry of that instant loses them, and
    /// every later entry's cumulative count with it. Units that have left
    /// the window meanwhile are gone already: nothing to give back.
    pub fn release(&mut self, at: Micros, cost: u64) {
        // Entries are in strictly increasing time: one instant, one entry.
        let index = self.log.partition_point(|entry| entry.at < at);
        let Some(entry) = self.log.get_mut(index).filter(|entry| entry.at == at) else {
            return;
        };
        let given = cost.min(entry.units);
        entry.units -= given;
        let emptied = entry.units == 0;
        for later in self.log.range_mut(index..) {
            later.end = later.end.saturating_sub(given);
        }
        if emptied {
            self.log.remove(index);
        }
    }
}

/// `sliding_window.lua`: two fixed-window counters weighted by overlap.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlidingWindow {
    index: Option<u64>,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    pub fn decide(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
        self.reserve(now, window, limit, cost).0
    }

    /// As [`SlidingWindow::decide`], and the index of the fixed window its
    /// units were counted in: what [`SlidingWindow::release`] needs.
    pub fn reserve(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> (Outcome, u64) {
        let mut index = now / window;
        let mut elapsed = now - index * window;
        let (mut current, mut previous) = (0, 0);
        // How far the window judged is ahead of the clock; 0 unless the clock went back.
        let mut lead = 0;
        match self.index {
            Some(stored) if stored == index => {
                current = self.current;
                previous = self.previous;
            }
            Some(stored) if stored.checked_add(1) == Some(index) => previous = self.current,
            Some(stored) if stored > index => {
                // The clock went back: stay in the stored window, weigh the previous fully.
                lead = stored.saturating_mul(window).saturating_sub(now);
                index = stored;
                elapsed = 0;
                current = self.current;
                previous = self.previous;
            }
            _ => {}
        }

        let (window_f, limit_f) = (window as f64, limit as f64);
        let (current_f, previous_f) = (current as f64, previous as f64);
        let weight = (window_f - elapsed as f64) / window_f;
        // Until the counts no longer weigh: the end of the next window while
        // this one has a count, of this window while only the previous one has.
        let reset_after = |current: u64| {
            let until = if current > 0 {
                2 * window - elapsed
            } else if previous > 0 {
                window - elapsed
            } else {
                return 0;
            };
            until.saturating_add(lead)
        };
        let need = judged_cost(cost);

        if previous_f * weight + current_f + need as f64 > limit_f {
            let retry_after = if previous > 0 && current.saturating_add(need) <= limit {
                let at = window_f - (limit_f - current_f - need as f64) * window_f / previous_f;
                (at - elapsed as f64).ceil()
            } else {
                let mut at = 0.0;
                if current > 0 {
                    at = window_f - (limit_f - need as f64) * window_f / current_f;
                    if at < 0.0 {
                        at = 0.0;
                    }
                }
                (window_f - elapsed as f64 + at).ceil()
            };
            let remaining = (limit_f - (previous_f * weight + current_f)).floor();
            let outcome = Outcome {
                allowed: false,
                remaining: remaining.max(0.0) as u64,
                reset_after_us: reset_after(current),
                retry_after_us: (retry_after.max(1.0) as u64).saturating_add(lead),
            };
            return (outcome, index);
        }

        if cost > 0 {
            current = current.saturating_add(cost);
            *self = Self {
                index: Some(index),
                current,
                previous,
            };
        }
        let remaining = (limit_f - (previous_f * weight + current as f64)).floor();
        let outcome = Outcome {
            allowed: true,
            remaining: remaining.max(0.0) as u64,
            reset_after_us: reset_after(current),
            retry_after_us: 0,
        };
        (outcome, index)
    }

    /// Gives back `cost` units counted in fixed window `index` by
    /// [`SlidingWindow::reserve`]: from the current count while that window
    /// is current, from the previous one in the window after; later, they
    /// no longer weigh and there is nothing to give back.
    pub fn release(&mut self, index: u64, cost: u64) {
        match self.index {
            Some(stored) if stored == index => self.current -= cost.min(self.current),
            Some(stored) if stored.checked_sub(1) == Some(index) => {
                self.previous -= cost.min(self.previous);
            }
            _ => {}
        }
    }
}

/// `gcra.lua`: GCRA in its continuous-state (leaky bucket) form.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    level: f64,
    /// When `level` was stored, and the limit and window it drains at; `None`: an empty bucket.
    stored: Option<Drain>,
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    at: Micros,
    limit: u64,
    window: u64,
}

impl Gcra {
    pub fn decide(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
        self.reserve(now, window, limit, cost).0
    }

    /// As [`Gcra::decide`], and the instant its units were added at: what
    /// [`Gcra::release`] needs.
    pub fn reserve(
        &mut self,
        now: Micros,
        window: u64,
        limit: u64,
        cost: u64,
    ) -> (Outcome, Micros) {
        let (window_f, limit_f) = (window as f64, limit as f64);
        let drain = self.stored.unwrap_or(Drain {
            at: now,
            limit,
            window,
        });
        // The clock going back drains nothing rather than admit on borrowed time.
        let elapsed = now.saturating_sub(drain.at);
        let mut level = self.level - elapsed as f64 * drain.limit as f64 / drain.window as f64;
        if level < 0.0 {
            level = 0.0;
        }
        // A bucket stored at another rate is rewritten at this one, whatever the decision.
        let rate_changed =
            self.stored.is_some() && (drain.limit != limit || drain.window != window);
        let mut store = |level: f64| {
            *self = Self {
                level,
                stored: Some(Drain {
                    at: now,
                    limit,
                    window,
                }),
            };
        };

        let need = judged_cost(cost) as f64;
        if level + need > limit_f {
            let retry_after = ((level + need - limit_f) * window_f / limit_f).ceil();
            let remaining = (limit_f - level).floor();
            if rate_changed {
                store(level);
            }
            let outcome = Outcome {
                allowed: false,
                remaining: remaining.max(0.0) as u64,
                reset_after_us: (level * window_f / limit_f).ceil() as u64,
                retry_after_us: retry_after.max(1.0) as u64,
            };
            return (outcome, now);
        }

        if cost > 0 || rate_changed {
            level += cost as f64;
            store(level);
        }
        let outcome = Outcome {
            allowed: true,
            remaining: (limit_f - level).floor() as u64,
            reset_after_us: (level * window_f / limit_f).ceil() as u64,
            retry_after_us: 0,
        };
        (outcome, now)
    }

    /// Gives back, at `now`, `cost` units added at `reserved_at` by
    /// [`Gcra::reserve`]. The bucket has drained since; the drained units
    /// are counted as the request's own first, so what is given back is
    /// `cost` less everything drained since, never more than is still held
    /// on the request's account (never admitting on units that already
    /// left). Within one instant that is exactly `cost`.
    pub fn release(&mut self, now: Micros, reserved_at: Micros, cost: u64) {
        let Some(drain) = self.stored else {
            return;
        };
        let rate = drain.limit as f64 / drain.window as f64;
        let ours = cost as f64 - now.saturating_sub(reserved_at) as f64 * rate;
        if ours <= 0.0 {
            return;
        }
        let at = now.max(drain.at);
        let level = self.level - (at - drain.at) as f64 * rate;
        self.level = (level - ours).max(0.0);
        self.stored = Some(Drain { at, ..drain });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    type NamedDecider = (&'static str, Box<dyn FnMut(u64, u64) -> Outcome>);
    const T0: u64 = 1_767_225_600 * SECOND;

    #[test]
    fn sliding_log_matches_the_worked_example_in_its_script() {
        let mut log = SlidingLog::default();
        let window = 10 * SECOND;
        for at in [0, 2, 5] {
            assert!(log.decide(T0 + at * SECOND, window, 3, 1).allowed);
        }
        let outcome = log.decide(T0 + 9 * SECOND, window, 3, 1);
        assert_eq!(
            outcome,
            Outcome {
                allowed: false,
                remaining: 0,
                reset_after_us: 6 * SECOND,
                retry_after_us: SECOND,
            }
        );
        // The same key with the limit lowered to 1: all but 0 units must leave.
        let lowered = log.decide(T0 + 9 * SECOND, window, 1, 1);
        assert_eq!(
            lowered,
            Outcome {
                allowed: false,
                remaining: 0,
                reset_after_us: 6 * SECOND,
                retry_after_us: 6 * SECOND,
            }
        );
    }

    #[test]
    fn sliding_window_matches_the_worked_example_in_its_script() {
        let window = 60 * SECOND;
        let mut counters = SlidingWindow {
            index: Some(T0 / window),
            current: 8,
            previous: 0,
        };
        // Three admissions early in the next window, where the 8 become the previous count.
        let now = T0 + window + 15 * SECOND;
        for _ in 0..3 {
            counters.decide(now - SECOND, window, 100, 1);
        }
        assert_eq!((counters.previous, counters.current), (8, 3));
        let outcome = counters.decide(now, window, 10, 1);
        assert!(outcome.allowed);
        assert_eq!(outcome.remaining, 0);
    }

    #[test]
    fn gcra_matches_the_worked_example_in_its_script() {
        let window = 10 * SECOND;
        let mut bucket = Gcra::default();
        assert!(bucket.decide(T0, window, 10, 10).allowed);
        let later = T0 + 2_500_000;
        let denied = bucket.decide(later, window, 10, 3);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, 500_000);
        let admitted = bucket.decide(later, window, 10, 2);
        assert!(admitted.allowed);
        assert_eq!(admitted.remaining, 0);
    }

    #[test]
    fn a_full_limit_fits_at_one_instant_and_not_one_more() {
        // Limits whose per-unit interval is not a whole microsecond are where
        // an absolute-time GCRA loses the last unit to rounding.
        for limit in [3, 7, 1000, 99_999] {
            let window = SECOND;
            let mut bucket = Gcra::default();
            let mut log = SlidingLog::default();
            let mut counters = SlidingWindow::default();
            for unit in 0..limit {
                assert!(bucket.decide(T0, window, limit, 1).allowed, "gcra {unit}");
                assert!(log.decide(T0, window, limit, 1).allowed, "log {unit}");
                assert!(counters.decide(T0, window, limit, 1).allowed, "sw {unit}");
            }
            assert!(!bucket.decide(T0, window, limit, 1).allowed);
            assert!(!log.decide(T0, window, limit, 1).allowed);
            assert!(!counters.decide(T0, window, limit, 1).allowed);
        }
    }

    #[test]
    fn a_peek_reports_without_consuming() {
        let window = SECOND;
        let mut log = SlidingLog::default();
        for _ in 0..5 {
            let peek = log.decide(T0, window, 2, 0);
            assert!(peek.allowed);
            assert_eq!(peek.remaining, 2);
        }
        log.decide(T0, window, 2, 2);
        let peek = log.decide(T0 + 10, window, 2, 0);
        assert!(!peek.allowed);
        assert_eq!(peek.retry_after_us, window - 10);
    }

    #[test]
    fn costs_are_all_or_nothing() {
        let window = SECOND;
        let mut log = SlidingLog::default();
        assert!(log.decide(T0, window, 10, 7).allowed);
        let denied = log.decide(T0, window, 10, 4);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 3);
        assert!(log.decide(T0, window, 10, 3).allowed);
    }

    #[test]
    fn denied_checks_are_admitted_exactly_at_retry_after() {
        let window = 10 * SECOND;
        let limit = 5;
        let deciders: [NamedDecider; 3] = [
            ("sliding_log", {
                let mut s = SlidingLog::default();
                Box::new(move |now, cost| s.decide(now, window, limit, cost))
            }),
            ("sliding_window", {
                let mut s = SlidingWindow::default();
                Box::new(move |now, cost| s.decide(now, window, limit, cost))
            }),
            ("gcra", {
                let mut s = Gcra::default();
                Box::new(move |now, cost| s.decide(now, window, limit, cost))
            }),
        ];
        for (name, mut decide) in deciders {
            let mut now = T0 + 3 * SECOND;
            for _ in 0..5 {
                assert!(decide(now, 1).allowed, "{name}");
                now += SECOND / 3;
            }
            let denied = decide(now, 2);
            assert!(!denied.allowed, "{name}");
            let retry = denied.retry_after_us;
            assert!(retry > 0 && retry <= 2 * window, "{name}: {retry}");
            // A peek of cost 2 just before retry_after is still denied;
            // at retry_after the same check is admitted.
            assert!(!decide(now + retry - 1, 2).allowed, "{name} early");
            assert!(decide(now + retry, 2).allowed, "{name} at retry_after");
        }
    }

    /// Each algorithm, one key: `held` units admitted at T0 under `old` (one
    /// check each), then the decider for checks at later times and any limit.
    fn used_key(
        name: &str,
        old: u64,
        held: u64,
        window: u64,
    ) -> Box<dyn FnMut(u64, u64, u64) -> Outcome> {
        fn boxed<S: 'static>(
            mut state: S,
            window: u64,
            decide: fn(&mut S, u64, u64, u64, u64) -> Outcome,
        ) -> Box<dyn FnMut(u64, u64, u64) -> Outcome> {
            Box::new(move |now, limit, cost| decide(&mut state, now, window, limit, cost))
        }
        let mut decider = match name {
            "sliding_log" => boxed(SlidingLog::default(), window, SlidingLog::decide),
            "sliding_window" => boxed(SlidingWindow::default(), window, SlidingWindow::decide),
            _ => boxed(Gcra::default(), window, Gcra::decide),
        };
        for _ in 0..held {
            assert!(decider(T0, old, 1).allowed, "{name}: filling");
        }
        decider
    }

    #[test]
    fn a_key_over_a_lowered_limit_is_denied_like_a_full_key_and_a_raised_limit_admits_it() {
        // 100 per hour, 50 held; the limit drops to 10.
        let window = 3600 * SECOND;
        for name in ["sliding_log", "sliding_window", "gcra"] {
            let mut decide = used_key(name, 100, 50, window);
            let later = T0 + SECOND;
            for cost in [0, 1, 10] {
                let denied = decide(later, 10, cost);
                assert!(!denied.allowed, "{name} cost {cost}");
                assert_eq!(denied.remaining, 0, "{name} cost {cost}");
                assert!(denied.retry_after_us >= 1, "{name} cost {cost}");
                assert!(
                    denied.reset_after_us >= denied.retry_after_us,
                    "{name} cost {cost}: {denied:?}"
                );
            }
            let raised = decide(later, 200, 1);
            assert!(raised.allowed, "{name}: a raised limit admits at once");
            assert_eq!(raised.remaining, 149, "{name}");
        }
    }

    #[test]
    fn retry_after_a_lowering_follows_the_new_limit() {
        let window = 100 * SECOND;
        // sliding_log: 50 units at T0 all leave together at T0 + window.
        let mut log = used_key("sliding_log", 100, 50, window);
        let denied = log(T0 + SECOND, 10, 1);
        assert_eq!(denied.retry_after_us, window - SECOND);
        assert_eq!(denied.reset_after_us, window - SECOND);
        assert!(!log(T0 + window - 1, 10, 1).allowed);
        assert!(log(T0 + window, 10, 1).allowed);

        // gcra: 50 units in the bucket, draining at the new 10 per 100 s (one
        // unit every 10 s) from the check that first sees the new limit; one
        // unit fits once the level is down to 9: 41 units later.
        let mut bucket = used_key("gcra", 100, 50, window);
        let denied = bucket(T0, 10, 1);
        assert_eq!(denied.retry_after_us, 41 * 10 * SECOND);
        assert_eq!(denied.reset_after_us, 50 * 10 * SECOND);
        assert!(!bucket(T0 + 410 * SECOND - 1, 10, 1).allowed);
        assert!(bucket(T0 + 410 * SECOND, 10, 1).allowed);
    }

    #[test]
    fn gcra_drains_at_the_rate_it_was_stored_with_until_a_check_sees_a_new_one() {
        let window = 100 * SECOND;
        let mut bucket = Gcra::default();
        assert!(bucket.decide(T0, window, 100, 50).allowed);
        // 20 s at 100 per 100 s drain 20 units, although the limit is 10 now:
        // the bucket (and its Redis hash, which expires when it is empty at
        // its stored rate) cannot know when the limit changed.
        let peek = bucket.decide(T0 + 20 * SECOND, window, 10, 0);
        assert!(!peek.allowed);
        assert_eq!(
            peek.reset_after_us,
            30 * 10 * SECOND,
            "30 units left at the new rate"
        );
        // The peek stored the new rate: 100 s later only 10 more have drained.
        let later = bucket.decide(T0 + 120 * SECOND, window, 10, 0);
        assert_eq!(later.reset_after_us, 20 * 10 * SECOND);
    }

    #[test]
    fn sliding_log_keeps_one_entry_per_admission_instant_whatever_the_cost() {
        let window = 3600 * SECOND;
        let mut log = SlidingLog::default();
        assert!(log.decide(T0, window, 100_000, 100_000).allowed);
        assert_eq!(log.log.len(), 1);
        let mut log = SlidingLog::default();
        for step in 0..10 {
            assert!(log.decide(T0 + step, window, 100, 3).allowed);
            assert!(log.decide(T0 + step, window, 100, 2).allowed);
        }
        assert_eq!(
            log.log.len(),
            10,
            "two checks at one instant share an entry"
        );
        assert_eq!(
            log.log.back().map(|entry| (entry.units, entry.end)),
            Some((5, 50))
        );
    }

    #[test]
    fn sliding_log_never_admits_on_borrowed_time_when_the_clock_goes_back() {
        let window = 10 * SECOND;
        let mut log = SlidingLog::default();
        let ahead = T0 + 60 * SECOND;
        assert!(log.decide(ahead, window, 3, 2).allowed);
        // The clock is now a minute behind the newest entry: a window later on
        // the old clock would empty the log, but nothing has left yet.
        let behind = T0 + window;
        let admitted = log.decide(behind, window, 3, 1);
        assert!(admitted.allowed);
        assert_eq!(
            admitted.reset_after_us,
            ahead + window - behind,
            "measured on the clock"
        );
        assert_eq!(
            log.log.len(),
            1,
            "stamped at the newest entry's instant, merged into it"
        );
        let denied = log.decide(behind + window, window, 3, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, ahead - behind);
        assert!(log.decide(ahead + window, window, 3, 3).allowed);
    }

    #[test]
    fn sliding_window_durations_include_the_gap_when_the_clock_goes_back() {
        let window = 10 * SECOND;
        let mut counters = SlidingWindow::default();
        let ahead = T0 + 5 * window;
        assert!(counters.decide(ahead, window, 2, 2).allowed);
        let behind = ahead - 3 * window;
        let denied = counters.decide(behind, window, 2, 1);
        assert!(!denied.allowed);
        // Judged in the stored window: the count weighs until the end of the next one.
        assert_eq!(denied.reset_after_us, 2 * window + (ahead - behind));
        // One unit fits halfway through the next window, where 2 weigh 1.
        assert_eq!(
            denied.retry_after_us,
            window + window / 2 + (ahead - behind)
        );
    }

    /// A reservation given back at the instant it was made leaves the state
    /// deciding exactly as if it had never been made (what the all-or-nothing
    /// script relies on), whatever came before and whatever follows.
    #[test]
    fn a_release_at_the_same_instant_undoes_its_reservation_exactly() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let (window, limit) = (10 * SECOND, 7);
        for _ in 0..300 {
            let (mut log, mut counters, mut bucket) = (
                SlidingLog::default(),
                SlidingWindow::default(),
                Gcra::default(),
            );
            let mut now = T0;
            for _ in 0..next(12) {
                now += next(3 * SECOND);
                let cost = next(limit + 1);
                log.decide(now, window, limit, cost);
                counters.decide(now, window, limit, cost);
                bucket.decide(now, window, limit, cost);
            }
            now += next(SECOND);
            let cost = 1 + next(limit);
            let (before_log, before_counters, before_bucket) = (log.clone(), counters, bucket);
            let (admitted, at) = log.reserve(now, window, limit, cost);
            if admitted.allowed {
                log.release(at, cost);
            }
            let (admitted, index) = counters.reserve(now, window, limit, cost);
            if admitted.allowed {
                counters.release(index, cost);
            }
            let (admitted, at) = bucket.reserve(now, window, limit, cost);
            if admitted.allowed {
                bucket.release(now, at, cost);
            }
            let mut later = now;
            let (mut log_twin, mut counters_twin, mut bucket_twin) =
                (before_log, before_counters, before_bucket);
            for _ in 0..6 {
                later += next(4 * SECOND);
                let cost = next(limit + 1);
                assert_eq!(
                    log.decide(later, window, limit, cost),
                    log_twin.decide(later, window, limit, cost)
                );
                assert_eq!(
                    counters.decide(later, window, limit, cost),
                    counters_twin.decide(later, window, limit, cost)
                );
                // The bucket is stored drained to the release's instant, so
                // its level is the same up to floating-point rounding: the
                // same decision, durations within a microsecond.
                let (released, twin) = (
                    bucket.decide(later, window, limit, cost),
                    bucket_twin.decide(later, window, limit, cost),
                );
                assert_eq!(
                    (released.allowed, released.remaining),
                    (twin.allowed, twin.remaining)
                );
                assert!(released.reset_after_us.abs_diff(twin.reset_after_us) <= 1);
                assert!(released.retry_after_us.abs_diff(twin.retry_after_us) <= 1);
            }
        }
    }
}
