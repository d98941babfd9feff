//! The guarantee that matters most: one limit across replicas, under concurrency.

use std::sync::Arc;

use slidegate_core::{Clock, Micros, SystemClock};
use tokio::sync::Barrier;

use crate::helpers::{
    TestApp, TestOptions, one_load_test_at_a_time, policy, spawn_app, unique_prefix,
};

const REPLICAS: usize = 3;
const CLIENTS: usize = 160;
const REQUESTS_PER_CLIENT: usize = 4;

/// Three replicas on one Redis, `CLIENTS` concurrent clients spread over them,
/// all hammering one key. Returns (admitted, denied, other statuses).
async fn hammer_one_key(algorithm: &str, limit: u64, window: &str) -> (usize, usize, Vec<u16>) {
    let _turn = one_load_test_at_a_time().await;
    let prefix = unique_prefix();
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let mut options = TestOptions::redis(vec![policy("shared", algorithm, limit, window)]);
        // The test timeouts (1 s, see TestOptions::redis) matter here: a
        // check that times out answers 503 and may still have been counted
        // by Redis, which would fail the count for the wrong reason.
        options.key_prefix = prefix.clone();
        replicas.push(spawn_app(options).await);
    }
    let replicas: Arc<Vec<TestApp>> = Arc::new(replicas);
    let start = Arc::new(Barrier::new(CLIENTS));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let replicas = Arc::clone(&replicas);
        let start = Arc::clone(&start);
        clients.push(tokio::spawn(async move {
            let app = &replicas[client % REPLICAS];
            start.wait().await;
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS_PER_CLIENT {
                statuses.push(app.check("shared", "one-key", None).await.status);
            }
            statuses
        }));
    }
    let (mut admitted, mut denied, mut other) = (0, 0, Vec::new());
    for client in clients {
        for status in client.await.unwrap() {
            match status {
                200 => admitted += 1,
                429 => denied += 1,
                status => other.push(status),
            }
        }
    }
    (admitted, denied, other)
}

async fn assert_exactly_limit_admitted(algorithm: &str, limit: u64, window: &str) {
    let (admitted, denied, other) = hammer_one_key(algorithm, limit, window).await;
    assert!(
        other.is_empty(),
        "{algorithm}: unexpected statuses {other:?}"
    );
    assert_eq!(
        admitted as u64,
        limit,
        "{algorithm}: admitted {admitted} of {} with a limit of {limit}",
        CLIENTS * REQUESTS_PER_CLIENT
    );
    assert_eq!(admitted + denied, CLIENTS * REQUESTS_PER_CLIENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_log_admits_exactly_the_limit_across_three_replicas() {
    // A window far longer than the test: every admission counts until the end.
    assert_exactly_limit_admitted("sliding_log", 100, "1h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcra_admits_exactly_its_burst_across_three_replicas() {
    // 100 per hour drains one unit every 36 s: the test ends long before.
    assert_exactly_limit_admitted("gcra", 100, "1h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_admits_exactly_the_limit_across_three_replicas() {
    // A fresh key has no previous window, so the estimate is the exact count
    // (crossing a 24 h boundary mid-test would weigh the count at ~100%).
    assert_exactly_limit_admitted("sliding_window", 100, "24h").await;
}

/// This machine's wall clock, shifted: a replica whose host clock is off.
struct ShiftedClock {
    ahead: bool,
    by: std::time::Duration,
}

impl Clock for ShiftedClock {
    fn now(&self) -> Micros {
        let now = SystemClock.now();
        let by = self.by.as_micros() as u64;
        if self.ahead { now + by } else { now - by }
    }
}

#[tokio::test]
async fn replicas_whose_clocks_are_hours_apart_enforce_one_limit_timed_by_redis() {
    let prefix = unique_prefix();
    let mut replicas = Vec::new();
    for ahead in [true, false] {
        let mut options = TestOptions::redis(vec![policy("shared", "sliding_log", 3, "2s")]);
        options.key_prefix = prefix.clone();
        options.clock = Arc::new(ShiftedClock {
            ahead,
            by: std::time::Duration::from_secs(3 * 3600),
        });
        replicas.push(spawn_app(options).await);
    }
    let (ahead, behind) = (&replicas[0], &replicas[1]);
    let mut statuses = Vec::new();
    for app in [ahead, behind, ahead, behind] {
        statuses.push(app.check("shared", "k", None).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429], "one limit for both");
    // Both are told the same wait, by Redis's clock: six hours of skew
    // between them changes it by nothing (a few milliseconds of test time).
    let wait = |reply: crate::helpers::CheckReply| reply.body["retry_after_ms"].as_u64().unwrap();
    let from_ahead = wait(ahead.check("shared", "k", None).await);
    let from_behind = wait(behind.check("shared", "k", None).await);
    assert!(
        from_ahead <= 2_000 && from_behind <= 2_000,
        "{from_ahead} {from_behind}"
    );
    assert!(
        from_ahead.abs_diff(from_behind) < 200,
        "{from_ahead} {from_behind}"
    );
    // And the window ends when Redis says, for both.
    for app in [ahead, behind] {
        crate::helpers::eventually(
            std::time::Duration::from_secs(5),
            "the window to end by Redis's clock",
            || async { (app.check("shared", "k", Some(0)).await.status == 200).then_some(()) },
        )
        .await;
    }
}
