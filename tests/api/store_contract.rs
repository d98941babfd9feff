//! One suite, both stores: the embedded store and the Lua scripts must admit the same traffic.
//!
//! The scripts read Redis `TIME`, which a test cannot move, so every case here
//! uses windows far longer than the test and compares durations with a small
//! tolerance; the time-driven cases run on the embedded store with a fake
//! clock (`boundaries.rs`).

use std::sync::Arc;
use std::time::Duration;

use slidegate::limiter::{
    Algorithm, LimiterKey, Outcome, Policy, PolicyName, Store, SystemClock, Window,
};
use slidegate::store::{MemoryStore, RedisOptions, RedisStore};

use crate::helpers::{redis_url, unique_prefix};

fn redis_store() -> RedisStore {
    RedisStore::new(RedisOptions {
        url: redis_url(),
        tls: None,
        key_prefix: unique_prefix(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

fn memory_store() -> MemoryStore {
    MemoryStore::new(Arc::new(SystemClock))
}

fn policy(algorithm: Algorithm, limit: u64, window: &str) -> Policy {
    Policy::new(
        PolicyName::parse(algorithm.as_str()).unwrap(),
        algorithm,
        limit,
        Window::parse(window).unwrap(),
        1,
    )
    .unwrap()
}

async fn run(store: &impl Store, policy: &Policy, key: &str, costs: &[u64]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &cost in costs {
        let key = LimiterKey::parse(key).unwrap();
        outcomes.push(store.check(policy, key, cost).await.unwrap());
    }
    outcomes
}

/// Runs `costs` on both stores and asserts the same decisions, step by step.
async fn assert_same_on_both_stores(policy: &Policy, costs: &[u64]) -> Vec<Outcome> {
    let memory = run(&memory_store(), policy, "contract", costs).await;
    let redis = run(&redis_store(), policy, "contract", costs).await;
    // The two runs happen a few milliseconds apart, on two clocks of this machine.
    let tolerance_us = 250_000;
    for (step, (m, r)) in memory.iter().zip(&redis).enumerate() {
        let context = format!(
            "{} step {step} cost {}: memory {m:?} redis {r:?}",
            policy.algorithm(),
            costs[step]
        );
        assert_eq!(m.allowed, r.allowed, "{context}");
        assert_eq!(m.remaining, r.remaining, "{context}");
        assert!(
            m.reset_after_us.abs_diff(r.reset_after_us) <= tolerance_us,
            "{context}"
        );
        assert!(
            m.retry_after_us.abs_diff(r.retry_after_us) <= tolerance_us,
            "{context}"
        );
    }
    memory
}

const COSTS: [u64; 12] = [1, 1, 3, 0, 4, 2, 1, 0, 1, 5, 1, 1];

#[tokio::test]
async fn sliding_log_decides_alike_in_memory_and_in_redis() {
    let outcomes =
        assert_same_on_both_stores(&policy(Algorithm::SlidingLog, 10, "1h"), &COSTS).await;
    let allowed: Vec<bool> = outcomes.iter().map(|o| o.allowed).collect();
    assert_eq!(
        allowed,
        [
            true, true, true, true, true, false, true, false, false, false, false, false
        ]
    );
}

#[tokio::test]
async fn sliding_window_decides_alike_in_memory_and_in_redis() {
    // 24 h fixed windows: the run stays inside one unless it straddles midnight UTC.
    assert_same_on_both_stores(&policy(Algorithm::SlidingWindow, 10, "24h"), &COSTS).await;
}

#[tokio::test]
async fn gcra_decides_alike_in_memory_and_in_redis() {
    let outcomes = assert_same_on_both_stores(&policy(Algorithm::Gcra, 10, "24h"), &COSTS).await;
    assert_eq!(outcomes[5].remaining, 1, "after 9 units of 10, one remains");
}

#[tokio::test]
async fn each_store_admits_a_full_limit_at_once_and_not_one_unit_more() {
    for algorithm in Algorithm::ALL {
        let policy = policy(algorithm, 50, "1h");
        let mut costs = vec![1; 50];
        costs.push(1);
        let outcomes = assert_same_on_both_stores(&policy, &costs).await;
        assert!(outcomes[..50].iter().all(|o| o.allowed), "{algorithm}");
        assert!(!outcomes[50].allowed, "{algorithm}");
        assert_eq!(outcomes[50].remaining, 0, "{algorithm}");
    }
}

#[tokio::test]
async fn a_cost_equal_to_the_limit_fits_an_empty_key_only() {
    for algorithm in Algorithm::ALL {
        let policy = policy(algorithm, 7, "1h");
        let outcomes = assert_same_on_both_stores(&policy, &[7, 1, 0]).await;
        assert!(outcomes[0].allowed, "{algorithm}");
        assert!(!outcomes[1].allowed, "{algorithm}");
        assert!(!outcomes[2].allowed, "{algorithm}: a peek of a full key");
    }
}

#[tokio::test]
async fn retry_after_and_reset_after_agree_between_stores() {
    for algorithm in Algorithm::ALL {
        let policy = policy(algorithm, 4, "1h");
        let outcomes = assert_same_on_both_stores(&policy, &[2, 2, 1]).await;
        let denied = outcomes[2];
        assert!(!denied.allowed);
        assert!(denied.retry_after_us > 0, "{algorithm}");
        assert!(
            denied.reset_after_us >= denied.retry_after_us,
            "{algorithm}"
        );
    }
}
