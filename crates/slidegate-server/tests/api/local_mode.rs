//! The `local` failure mode across three replicas: during an outage the fleet together stays within the limit, by the documented rounding.

use std::sync::Arc;
use std::time::Duration;

use slidegate_core::FailureMode;
use tokio::sync::Barrier;

use crate::helpers::{
    TestApp, TestOptions, eventually, one_load_test_at_a_time, policy, spawn_app, unique_prefix,
};
use crate::private_redis::PrivateRedis;

const REPLICAS: usize = 3;
const CLIENTS_PER_REPLICA: usize = 30;
const CHECKS_PER_CLIENT: usize = 3;

/// Every client of every replica checks `policy` for one key; returns the
/// statuses, each with its `slidegate-fallback` header.
async fn hammer(replicas: &Arc<Vec<TestApp>>, policy: &'static str) -> Vec<(u16, Option<String>)> {
    let start = Arc::new(Barrier::new(REPLICAS * CLIENTS_PER_REPLICA));
    let mut clients = Vec::new();
    for client in 0..REPLICAS * CLIENTS_PER_REPLICA {
        let (replicas, start) = (Arc::clone(replicas), Arc::clone(&start));
        clients.push(tokio::spawn(async move {
            let app = &replicas[client % REPLICAS];
            start.wait().await;
            let mut replies = Vec::new();
            for _ in 0..CHECKS_PER_CLIENT {
                let reply = app.check(policy, "one-key", None).await;
                replies.push((
                    reply.status,
                    reply.header("slidegate-fallback").map(str::to_owned),
                ));
            }
            replies
        }));
    }
    let mut replies = Vec::new();
    for client in clients {
        replies.extend(client.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_local_replicas_admit_no_more_than_the_limit_together_while_redis_is_down() {
    let _turn = one_load_test_at_a_time().await;
    let mut redis = PrivateRedis::start();
    let prefix = unique_prefix();
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        // Production timeouts: no check reaches Redis before it is killed,
        // and after that each would wait out the 1 s test connect timeout.
        let mut options = TestOptions::redis(vec![
            // 30 over 3 replicas: 10 each, 30 in total.
            policy("even", "sliding_log", 30, "1h"),
            // 10 over 3 replicas: 3 each (rounded down), 9 in total.
            policy("uneven", "gcra", 10, "1h"),
        ])
        .with_production_timeouts();
        options.redis_url = Some(redis.url());
        options.key_prefix = prefix.clone();
        options.settings.limiter.failure_mode = FailureMode::Local;
        options.settings.limiter.heartbeat_interval = Duration::from_millis(200);
        replicas.push(spawn_app(options).await);
    }
    for app in &replicas {
        eventually(
            Duration::from_secs(5),
            "each replica counts three",
            || async { (app.limiter_health().await["live_replicas"] == 3).then_some(()) },
        )
        .await;
    }

    redis.kill();
    for app in &replicas {
        // A heartbeat failed: from here on the count is the last one seen.
        eventually(Duration::from_secs(5), "a failed heartbeat", || async {
            (app.limiter_health().await["counters"]["heartbeat_failures"] != 0).then_some(())
        })
        .await;
    }
    let replicas = Arc::new(replicas);
    for (policy, fleet_limit) in [("even", 30), ("uneven", 9)] {
        let replies = hammer(&replicas, policy).await;
        assert!(
            replies
                .iter()
                .all(|(status, fallback)| matches!(status, 200 | 429)
                    && fallback.as_deref() == Some("local")),
            "{policy}: {replies:?}"
        );
        let admitted = replies.iter().filter(|(status, _)| *status == 200).count();
        assert_eq!(admitted, fleet_limit, "{policy}: admitted {admitted}");
    }

    // A cost above this replica's share (3 of "uneven") can never fit locally:
    // a denial, not an error.
    let app = &replicas[0];
    let reply = app.check("uneven", "another-key", Some(5)).await;
    assert_eq!(reply.status, 429, "{:?}", reply.body);
    assert_eq!(
        reply.body["limit"], 3,
        "the local share is the limit that applies"
    );

    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status, 200,
        "local mode stays ready: {:?}",
        ready.body
    );
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["degraded"], true);
    assert_eq!(limiter["failure_mode"], "local");
    assert_eq!(limiter["live_replicas"], 3, "the last count seen");
}
