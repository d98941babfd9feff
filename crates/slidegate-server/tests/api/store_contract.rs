//! One suite, both stores: the embedded store and the Lua scripts must admit the same traffic.
//!
//! The scripts read Redis `TIME`, which a test cannot move, so every case here
//! uses windows far longer than the test and compares durations with a small
//! tolerance; the time-driven cases run on the embedded store with a fake
//! clock (`boundaries.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use slidegate::store::{MemoryStore, RedisOptions, RedisStore};
use slidegate_core::{
    Algorithm, LimiterKey, Outcome, Policy, PolicyName, Store, SystemClock, Window,
};

use crate::helpers::{redis_url, unique_prefix};

fn redis_store() -> RedisStore {
    RedisStore::new(RedisOptions {
        url: redis_url(),
        tls: None,
        key_prefix: unique_prefix(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        sentinel: None,
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

/// Each step is a check of one key under the policy it names (same name and
/// algorithm, so the same state: a limit changed between checks).
async fn run(store: &impl Store, key: &str, steps: &[(&Policy, u64)]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &(policy, cost) in steps {
        let key = LimiterKey::parse(key).unwrap();
        // Never an error: a lowered limit is a decision, not an invalid reply.
        outcomes.push(store.check(policy, key, cost).await.unwrap());
    }
    outcomes
}

/// Runs `costs` on both stores and asserts the same decisions, step by step.
async fn assert_same_on_both_stores(policy: &Policy, costs: &[u64]) -> Vec<Outcome> {
    let steps: Vec<(&Policy, u64)> = costs.iter().map(|&cost| (policy, cost)).collect();
    assert_steps_same_on_both_stores(&steps).await
}

/// Runs `steps` on both stores and asserts the same decisions, step by step.
pub async fn assert_steps_same_on_both_stores(steps: &[(&Policy, u64)]) -> Vec<Outcome> {
    assert_steps_decided_as_in_memory(&redis_store(), "contract", steps).await
}

/// Runs `steps` for `key` on `shared` (a Redis store, standalone or cluster)
/// and on a fresh embedded store, and asserts the same decisions, step by step.
pub async fn assert_steps_decided_as_in_memory(
    shared: &impl Store,
    key: &str,
    steps: &[(&Policy, u64)],
) -> Vec<Outcome> {
    let started = Instant::now();
    let memory = run(&memory_store(), key, steps).await;
    let memory_took = started.elapsed();
    let started = Instant::now();
    let redis = run(shared, key, steps).await;
    let redis_took = started.elapsed();
    // Each run reads its own clock as it goes (this process's, Redis's), so
    // a duration at step k can differ between them by what either clock
    // advanced during its run, scaled by how a changed limit rescales the
    // time a key holds (at most the ratio of the largest limit to the
    // smallest). A fixed tolerance alone would hold only on a quiet machine.
    let limits = steps.iter().map(|(policy, _)| policy.limit());
    let ratio = limits.clone().max().unwrap_or(1) / limits.min().unwrap_or(1).max(1);
    let drift_us = u64::try_from(memory_took.max(redis_took).as_micros()).unwrap_or(u64::MAX);
    let tolerance_us = drift_us
        .saturating_mul(ratio.max(1))
        .saturating_add(1_000)
        .max(250_000);
    for (step, (m, r)) in memory.iter().zip(&redis).enumerate() {
        let (policy, cost) = steps[step];
        let context = format!(
            "{} step {step} limit {} cost {cost}: memory {m:?} redis {r:?}",
            policy.algorithm(),
            policy.limit(),
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

/// 50 units held under 100 per hour (five checks of 10), then the limit drops to 10.
fn held_then(algorithm: Algorithm, window: &str) -> (Policy, Policy) {
    (
        policy(algorithm, 100, window),
        policy(algorithm, 10, window),
    )
}

pub fn window_for(algorithm: Algorithm) -> &'static str {
    // gcra drains 100 per window: over 24 h, nothing measurable during the test.
    match algorithm {
        Algorithm::SlidingLog => "1h",
        _ => "24h",
    }
}

#[tokio::test]
async fn a_lowered_limit_on_a_used_key_is_denied_like_a_full_key_in_both_stores() {
    for algorithm in Algorithm::ALL {
        let (old, new) = held_then(algorithm, window_for(algorithm));
        let mut steps = vec![(&old, 10); 5];
        // A check, a peek, a check of the new limit, another check.
        steps.extend([(&new, 1), (&new, 0), (&new, 10), (&new, 1)]);
        let outcomes = assert_steps_same_on_both_stores(&steps).await;
        assert!(outcomes[..5].iter().all(|o| o.allowed), "{algorithm}");
        for (step, denied) in outcomes[5..].iter().enumerate() {
            assert!(!denied.allowed, "{algorithm} step {step}: {denied:?}");
            assert_eq!(denied.remaining, 0, "{algorithm} step {step}");
            assert!(denied.retry_after_us > 0, "{algorithm} step {step}");
            assert!(
                denied.reset_after_us >= denied.retry_after_us,
                "{algorithm} step {step}: {denied:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_raised_limit_admits_a_full_key_at_once_in_both_stores() {
    for algorithm in Algorithm::ALL {
        let window = window_for(algorithm);
        let (low, high) = (policy(algorithm, 10, window), policy(algorithm, 20, window));
        let outcomes = assert_steps_same_on_both_stores(&[
            (&low, 10),
            (&low, 1),
            (&high, 0),
            (&high, 10),
            (&high, 1),
        ])
        .await;
        let allowed: Vec<bool> = outcomes.iter().map(|o| o.allowed).collect();
        assert_eq!(allowed, [true, false, true, true, false], "{algorithm}");
        assert_eq!(
            outcomes[2].remaining, 10,
            "{algorithm}: the peek under the raised limit"
        );
        assert_eq!(outcomes[3].remaining, 0, "{algorithm}");
    }
}

#[tokio::test]
async fn a_cost_above_what_remains_after_a_lowering_is_denied_and_what_fits_is_admitted() {
    for algorithm in Algorithm::ALL {
        let window = window_for(algorithm);
        let (old, new) = (policy(algorithm, 10, window), policy(algorithm, 8, window));
        let outcomes = assert_steps_same_on_both_stores(&[
            (&old, 6),
            (&new, 3),
            (&new, 2),
            (&new, 1),
            (&new, 0),
        ])
        .await;
        assert_eq!(outcomes[1].remaining, 2, "{algorithm}: 6 held of 8");
        let allowed: Vec<bool> = outcomes.iter().map(|o| o.allowed).collect();
        assert_eq!(allowed, [true, false, true, false, false], "{algorithm}");
        assert_eq!(outcomes[2].remaining, 0, "{algorithm}");
    }
}

#[tokio::test]
async fn a_cost_of_the_largest_limit_is_one_decision_in_both_stores() {
    // sliding_log's largest limit, in one check: one log entry, not 100,000.
    for algorithm in Algorithm::ALL {
        let limit = slidegate_core::policy::MAX_SLIDING_LOG_LIMIT;
        let (full, lowered) = (
            policy(algorithm, limit, window_for(algorithm)),
            policy(algorithm, limit / 2, window_for(algorithm)),
        );
        let outcomes = assert_steps_same_on_both_stores(&[
            (&full, limit),
            (&full, 1),
            (&full, 0),
            (&lowered, limit / 2),
            (&full, limit),
        ])
        .await;
        let allowed: Vec<bool> = outcomes.iter().map(|o| o.allowed).collect();
        assert_eq!(allowed, [true, false, false, false, false], "{algorithm}");
        assert_eq!(outcomes[0].remaining, 0, "{algorithm}");
        assert_eq!(outcomes[3].remaining, 0, "{algorithm}");
    }
}

/// The same contract on a Redis Cluster: the cluster store runs the same
/// scripts, so it must decide as the embedded store does, limit changes
/// included. One cluster for all cases (starting one takes seconds); each
/// case has its own key, so the keys land on different masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_store_decides_as_the_embedded_store_does() {
    use slidegate_redis::{ClusterOptions, ClusterStore};
    let cluster = crate::private_redis::PrivateCluster::start(3, 0).await;
    let store = ClusterStore::new(ClusterOptions {
        nodes: (0..cluster.nodes().len())
            .map(|index| cluster.url(index))
            .collect(),
        tls: None,
        key_prefix: unique_prefix(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    })
    .unwrap();
    for algorithm in Algorithm::ALL {
        let plain = policy(algorithm, 10, window_for(algorithm));
        let steps: Vec<(&Policy, u64)> = COSTS.iter().map(|&cost| (&plain, cost)).collect();
        assert_steps_decided_as_in_memory(&store, &format!("costs-{algorithm}"), &steps).await;

        let (old, new) = held_then(algorithm, window_for(algorithm));
        let mut lowered = vec![(&old, 10); 5];
        lowered.extend([(&new, 1), (&new, 0), (&new, 10), (&new, 1)]);
        let outcomes =
            assert_steps_decided_as_in_memory(&store, &format!("lowered-{algorithm}"), &lowered)
                .await;
        assert!(outcomes[5..].iter().all(|o| !o.allowed), "{algorithm}");

        let mut raised = vec![(&new, 10)];
        raised.extend([(&old, 1), (&old, 89)]);
        let outcomes =
            assert_steps_decided_as_in_memory(&store, &format!("raised-{algorithm}"), &raised)
                .await;
        assert!(
            outcomes.iter().all(|o| o.allowed),
            "{algorithm}: {outcomes:?}"
        );
    }
}
