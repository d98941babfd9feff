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

use std::collections::VecDeque;

use super::clock::Micros;
use super::decision::Outcome;

/// A cost of 0 is a peek: judged as one unit, consuming nothing.
pub(crate) fn judged_cost(cost: u64) -> u64 {
    cost.max(1)
}

/// `sliding_log.lua`: admitted units as (time, count) runs, oldest first.
///
/// Runs compress units admitted at the same microsecond; the script stores one
/// sorted-set member per unit instead, which admits exactly the same traffic.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    runs: VecDeque<(Micros, u64)>,
    counted: u64,
}

impl SlidingLog {
    pub fn decide(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
        // Same bound as `ZREMRANGEBYSCORE -inf (now - window)`: a unit admitted
        // at t leaves the window once now - t >= window.
        let cutoff = now as i128 - window as i128;
        while let Some(&(at, count)) = self.runs.front() {
            if (at as i128) > cutoff {
                break;
            }
            self.runs.pop_front();
            self.counted -= count;
        }

        let need = judged_cost(cost);
        if self.counted + need > limit {
            let index = self.counted - (limit - need) - 1;
            let mut seen = 0;
            let mut last_to_leave = now;
            for &(at, count) in &self.runs {
                seen += count;
                if seen > index {
                    last_to_leave = at;
                    break;
                }
            }
            return Outcome {
                allowed: false,
                remaining: limit - self.counted,
                reset_after_us: self.reset_after(now, window),
                retry_after_us: last_to_leave + window - now,
            };
        }

        if cost > 0 {
            match self.runs.back_mut() {
                Some((at, count)) if *at == now => *count += cost,
                _ => self.runs.push_back((now, cost)),
            }
            self.counted += cost;
        }
        Outcome {
            allowed: true,
            remaining: limit - self.counted,
            reset_after_us: self.reset_after(now, window),
            retry_after_us: 0,
        }
    }

    fn reset_after(&self, now: Micros, window: u64) -> u64 {
        self.runs
            .back()
            .map_or(0, |&(newest, _)| newest + window - now)
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
        let mut index = now / window;
        let mut elapsed = now - index * window;
        let (mut current, mut previous) = (0, 0);
        match self.index {
            Some(stored) if stored == index => {
                current = self.current;
                previous = self.previous;
            }
            Some(stored) if stored + 1 == index => previous = self.current,
            Some(stored) if stored > index => {
                // The clock went back: stay in the stored window, weigh the previous fully.
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
        let need = judged_cost(cost);
        let reset_after = |current: u64| {
            if current > 0 {
                2 * window - elapsed
            } else if previous > 0 {
                window - elapsed
            } else {
                0
            }
        };

        if previous_f * weight + current_f + need as f64 > limit_f {
            let retry_after = if previous > 0 && current + need <= limit {
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
            return Outcome {
                allowed: false,
                remaining: remaining.max(0.0) as u64,
                reset_after_us: reset_after(current),
                retry_after_us: retry_after.max(1.0) as u64,
            };
        }

        if cost > 0 {
            current += cost;
            *self = Self {
                index: Some(index),
                current,
                previous,
            };
        }
        let remaining = (limit_f - (previous_f * weight + current as f64)).floor();
        Outcome {
            allowed: true,
            remaining: remaining.max(0.0) as u64,
            reset_after_us: reset_after(current),
            retry_after_us: 0,
        }
    }
}

/// `gcra.lua`: GCRA in its continuous-state (leaky bucket) form.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    level: f64,
    at: Option<Micros>,
}

impl Gcra {
    pub fn decide(&mut self, now: Micros, window: u64, limit: u64, cost: u64) -> Outcome {
        let (window_f, limit_f) = (window as f64, limit as f64);
        let at = self.at.unwrap_or(now);
        // The clock going back drains nothing rather than admit on borrowed time.
        let elapsed = now.saturating_sub(at).min(window);
        let mut level = self.level - elapsed as f64 * limit_f / window_f;
        if level < 0.0 {
            level = 0.0;
        }

        let need = judged_cost(cost) as f64;
        if level + need > limit_f {
            let retry_after = ((level + need - limit_f) * window_f / limit_f).ceil();
            return Outcome {
                allowed: false,
                remaining: (limit_f - level).floor() as u64,
                reset_after_us: (level * window_f / limit_f).ceil() as u64,
                retry_after_us: retry_after.max(1.0) as u64,
            };
        }

        if cost > 0 {
            level += cost as f64;
            *self = Self {
                level,
                at: Some(now),
            };
        }
        Outcome {
            allowed: true,
            remaining: (limit_f - level).floor() as u64,
            reset_after_us: (level * window_f / limit_f).ceil() as u64,
            retry_after_us: 0,
        }
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
}
