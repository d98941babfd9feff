//! Each failure mode's answer while Redis is unreachable, per policy, and what readiness says about it.

use std::time::Duration;

use slidegate::limiter::FailureMode;

use crate::helpers::{TestApp, TestOptions, policy, spawn_app};
use crate::private_redis::free_port;

/// A replica whose Redis URL points at a port nothing listens on.
async fn spawn_without_redis(
    default_mode: FailureMode,
    policies: Vec<slidegate::configuration::PolicySettings>,
) -> TestApp {
    let mut options = TestOptions::redis(policies).with_production_timeouts();
    options.redis_url = Some(format!("redis://127.0.0.1:{}", free_port()));
    options.settings.limiter.failure_mode = default_mode;
    // Once open, the breaker stays open for the whole test: counts are exact.
    options.settings.redis.breaker.cool_down = Duration::from_secs(60);
    spawn_app(options).await
}

#[tokio::test]
async fn an_open_policy_admits_marked_checks_and_the_replica_stays_ready_while_redis_is_unreachable()
 {
    let app =
        spawn_without_redis(FailureMode::Open, vec![policy("p", "sliding_log", 5, "1m")]).await;
    for _ in 0..10 {
        let reply = app.check("p", "k", None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.header("slidegate-fallback"), Some("open"));
        assert_eq!(reply.body["fallback"], "open");
        assert_eq!(reply.body["allowed"], true);
        assert_eq!(reply.body["remaining"], 5, "nothing was counted");
    }

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], true);
    assert_eq!(ready.body["checks"]["redis"]["ok"], false);
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["degraded"], true);
    assert_eq!(limiter["failure_mode"], "open");
    assert_eq!(limiter["failure_modes"]["open"], 1);
    assert_eq!(limiter["breaker"]["state"], "open", "5 failures in a row");
    assert_eq!(limiter["counters"]["fail_open"], 10);
    assert_eq!(limiter["counters"]["breaker_opened"], 1);
    assert_eq!(limiter["counters"]["store_failures"], 5);
    assert_eq!(limiter["counters"]["short_circuited"], 5);
}

#[tokio::test]
async fn a_policy_can_fail_closed_under_an_open_default_and_then_the_replica_is_not_ready() {
    let mut strict = policy("strict", "gcra", 5, "1m");
    strict.failure_mode = Some("closed".into());
    let app = spawn_without_redis(
        FailureMode::Open,
        vec![strict, policy("lenient", "gcra", 5, "1m")],
    )
    .await;

    let refused = app.check("strict", "k", None).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "limiter_unavailable");
    assert!(refused.header("slidegate-fallback").is_none());
    let admitted = app.check("lenient", "k", None).await;
    assert_eq!(admitted.status, 200);
    assert_eq!(admitted.header("slidegate-fallback"), Some("open"));

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], false);
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["degraded"], true);
    assert_eq!(limiter["failure_modes"]["closed"], 1);
    assert_eq!(limiter["failure_modes"]["open"], 1);
    assert_eq!(limiter["counters"]["fail_closed"], 1);
    assert_eq!(limiter["counters"]["fail_open"], 1);
}

#[tokio::test]
async fn a_local_policy_that_never_saw_another_replica_enforces_the_whole_limit_in_process() {
    let app = spawn_without_redis(
        FailureMode::Local,
        vec![policy("p", "sliding_log", 3, "1m")],
    )
    .await;
    for remaining in [2, 1, 0] {
        let reply = app.check("p", "k", None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.header("slidegate-fallback"), Some("local"));
        assert_eq!(reply.body["remaining"], remaining);
    }
    let denied = app.check("p", "k", None).await;
    assert_eq!(denied.status, 429, "{:?}", denied.body);
    assert_eq!(denied.body["fallback"], "local");
    assert!(denied.header("retry-after").is_some());

    let limiter = app.limiter_health().await;
    assert_eq!(limiter["live_replicas"], 1);
    assert_eq!(limiter["counters"]["fail_local"], 4);
    assert_eq!(
        app.get("/health/ready").await.status,
        200,
        "local mode stays ready"
    );
}
