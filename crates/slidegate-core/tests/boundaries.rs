//! Window maths with an injected clock: edges, exactness, and the two-counter approximation's error.
//!
//! These run on the embedded store, whose algorithms mirror the Lua scripts
//! (see `store_contract.rs` for the two compared on real Redis).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use slidegate_core::MemoryStore;
use slidegate_core::{Algorithm, FakeClock, LimiterKey, Policy, PolicyName, Window};

const MS: u64 = 1_000;

fn policy(algorithm: Algorithm, limit: u64, window_ms: u64) -> Policy {
    Policy::new(
        PolicyName::parse("edge").unwrap(),
        algorithm,
        limit,
        Window::try_from(Duration::from_millis(window_ms)).unwrap(),
        1,
    )
    .unwrap()
}

/// Replays (time offset in µs, cost) checks against a fresh store; returns the admitted ones.
fn replay(policy: &Policy, start: u64, traffic: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let clock = FakeClock::starting_at(start);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let key = LimiterKey::parse("k").unwrap();
    let mut admitted = Vec::new();
    for &(at, cost) in traffic {
        clock.set(start + at);
        if store.decide(policy, key, cost).allowed && cost > 0 {
            admitted.push((at, cost));
        }
    }
    admitted
}

/// The most units admitted within any trailing window of `window_us`
/// (a unit at t counts at `now` while now - t < window), over admissions in time order.
fn max_in_any_trailing_window(admitted: &[(u64, u64)], window_us: u64) -> u64 {
    let (mut oldest, mut sum, mut max) = (0, 0, 0);
    for &(at, cost) in admitted {
        sum += cost;
        while admitted[oldest].0 + window_us <= at {
            sum -= admitted[oldest].1;
            oldest += 1;
        }
        max = max.max(sum);
    }
    max
}

/// A fixed-window edge: the whole limit in the last millisecond of one
/// window, then the whole limit again in the first millisecond of the next.
/// A fixed-window counter admits 2x the limit here.
fn burst_across_an_edge(limit: u64, window_us: u64) -> Vec<(u64, u64)> {
    let mut traffic = Vec::new();
    for _ in 0..limit {
        traffic.push((window_us - MS, 1));
    }
    for _ in 0..limit {
        traffic.push((window_us + MS, 1));
    }
    traffic
}

#[test]
fn no_algorithm_admits_more_than_the_limit_across_a_window_edge() {
    let start = 1_767_225_600_000_000; // aligned to every window used here
    for algorithm in Algorithm::ALL {
        for (limit, window_ms) in [(10, 1_000), (100, 60_000), (3, 10)] {
            let policy = policy(algorithm, limit, window_ms);
            let window_us = window_ms * MS;
            let admitted = replay(&policy, start, &burst_across_an_edge(limit, window_us));
            let worst = max_in_any_trailing_window(&admitted, window_us);
            assert_eq!(
                worst, limit,
                "{algorithm} {limit}/{window_ms}ms admitted {worst} in one trailing window"
            );
        }
    }
}

#[test]
fn sliding_log_readmits_exactly_when_the_oldest_unit_leaves() {
    let window_us = 1_000 * MS;
    let policy = policy(Algorithm::SlidingLog, 2, 1_000);
    let traffic = [
        (0, 1),
        (300 * MS, 1),
        (window_us - 1, 1),
        (window_us, 1),
        (window_us, 1),
    ];
    let admitted = replay(&policy, 1_767_225_600_000_000, &traffic);
    assert_eq!(admitted, vec![(0, 1), (300 * MS, 1), (window_us, 1)]);
}

/// Xorshift: reproducible pseudo-random traffic without another dependency.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random arrivals at `rate` times the limit, in exponential-ish gaps, over `windows` windows.
fn random_traffic(
    seed: u64,
    limit: u64,
    window_us: u64,
    rate: f64,
    windows: u64,
) -> Vec<(u64, u64)> {
    let mut rng = Xorshift(seed);
    let mean_gap = window_us as f64 / (limit as f64 * rate);
    let (mut at, end, mut traffic) = (0.0, (window_us * windows) as f64, Vec::new());
    while at < end {
        let uniform = (rng.next() % 1_000_000 + 1) as f64 / 1_000_001.0;
        at += -uniform.ln() * mean_gap;
        traffic.push((at as u64, 1));
    }
    traffic
}

/// The two-counter approximation's error, measured against the exact log on
/// the same traffic. docs/algorithms.md quotes these bounds.
#[test]
fn sliding_window_error_against_sliding_log_on_the_same_traffic() {
    let (limit, window_ms) = (100, 10_000);
    let window_us = window_ms * MS;
    let start = 1_767_225_600_000_000;
    for (rate, allowed_excess) in [(0.5, 0.02), (1.0, 0.15), (2.0, 0.08), (5.0, 0.03)] {
        let mut worst_excess: f64 = 0.0;
        for seed in 1..=5 {
            let traffic = random_traffic(seed * 7919, limit, window_us, rate, 30);
            let exact = replay(
                &policy(Algorithm::SlidingLog, limit, window_ms),
                start,
                &traffic,
            );
            let approx = replay(
                &policy(Algorithm::SlidingWindow, limit, window_ms),
                start,
                &traffic,
            );
            assert!(max_in_any_trailing_window(&exact, window_us) <= limit);
            let worst = max_in_any_trailing_window(&approx, window_us);
            worst_excess = worst_excess.max(worst as f64 / limit as f64 - 1.0);
        }
        println!(
            "sliding_window at {rate}x the limit: worst trailing-window excess {:.1}%",
            worst_excess * 100.0
        );
        assert!(
            worst_excess <= allowed_excess,
            "at {rate}x the limit sliding_window exceeded it by {:.1}%",
            worst_excess * 100.0
        );
    }
}

#[test]
fn sliding_window_worst_case_stays_under_twice_the_limit() {
    // The adversarial pattern: a full limit at the very end of one window,
    // then steady traffic through the next. Documented as "up to ~2x".
    let (limit, window_ms) = (100, 10_000);
    let window_us = window_ms * MS;
    let mut traffic: Vec<(u64, u64)> = (0..limit).map(|_| (window_us - 1, 1)).collect();
    for step in 0..10_000 {
        traffic.push((window_us + step * MS, 1));
    }
    let admitted = replay(
        &policy(Algorithm::SlidingWindow, limit, window_ms),
        1_767_225_600_000_000,
        &traffic,
    );
    let worst = max_in_any_trailing_window(&admitted, window_us);
    println!("sliding_window adversarial worst case: {worst} in one window (limit {limit})");
    assert!(worst > limit, "the pattern should expose the approximation");
    assert!(worst < 2 * limit);
}

/// Turns (gap since the previous check in µs, cost) steps into timed checks whose cost fits `limit`.
fn traffic_from(steps: Vec<(u64, u64)>, limit: u64) -> Vec<(u64, u64)> {
    let mut at = 0;
    steps
        .into_iter()
        .map(|(gap, cost)| {
            at += gap;
            (at, cost.min(limit))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sliding_log_never_exceeds_its_limit_in_any_trailing_window(
        limit in 1u64..20,
        window_ms in 1u64..2_000,
        steps in prop::collection::vec((0u64..400_000, 0u64..5), 1..300),
    ) {
        let policy = policy(Algorithm::SlidingLog, limit, window_ms);
        let traffic = traffic_from(steps, limit);
        let admitted = replay(&policy, 1_767_225_600_000_000, &traffic);
        prop_assert!(max_in_any_trailing_window(&admitted, window_ms * MS) <= limit);
    }

    #[test]
    fn gcra_never_admits_more_than_its_burst_plus_its_rate(
        limit in 1u64..20,
        window_ms in 1u64..2_000,
        steps in prop::collection::vec((0u64..400_000, 0u64..5), 1..300),
    ) {
        let policy = policy(Algorithm::Gcra, limit, window_ms);
        let window_us = (window_ms * MS) as f64;
        let traffic = traffic_from(steps, limit);
        let admitted = replay(&policy, 1_767_225_600_000_000, &traffic);
        // Over any span [first, last] of admissions: at most the burst plus
        // what drains at limit/window during the span.
        for first in 0..admitted.len() {
            let mut units = 0;
            for last in first..admitted.len() {
                units += admitted[last].1;
                let span = (admitted[last].0 - admitted[first].0) as f64;
                let allowance = limit as f64 + span * limit as f64 / window_us;
                prop_assert!(units as f64 <= allowance + 1e-6, "{} units in {} us", units, span);
            }
        }
    }

    #[test]
    fn sliding_window_never_exceeds_twice_its_limit(
        limit in 1u64..20,
        window_ms in 1u64..2_000,
        steps in prop::collection::vec((0u64..400_000, 0u64..5), 1..300),
    ) {
        let policy = policy(Algorithm::SlidingWindow, limit, window_ms);
        let traffic = traffic_from(steps, limit);
        let admitted = replay(&policy, 1_767_225_600_000_000, &traffic);
        prop_assert!(max_in_any_trailing_window(&admitted, window_ms * MS) < 2 * limit.max(1) + 1);
    }
}
