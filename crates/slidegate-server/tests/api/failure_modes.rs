//! Each failure mode's answer while Redis is unreachable, per policy, and what readiness says about it.

use std::time::Duration;

use slidegate_core::FailureMode;

use crate::helpers::{TestApp, TestOptions, policy, spawn_app};
use crate::private_redis::free_port;

/// A replica whose Redis URL points at a port nothing listens on.
async fn spawn_without_redis(
    default_mode: FailureMode,
    policies: Vec<slidegate_core::PolicySpec>,
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

#[tokio::test]
async fn a_key_whose_state_in_redis_cannot_be_read_gets_its_failure_mode_and_never_opens_the_breaker_for_the_others()
 {
    let mut lenient = policy("lenient", "sliding_log", 5, "1m");
    lenient.failure_mode = Some("open".into());
    let options = TestOptions::redis(vec![policy("strict", "sliding_log", 5, "1m"), lenient]);
    let prefix = options.key_prefix.clone();
    let app = spawn_app(options).await;
    // Something else wrote a list where each policy keeps the log of key
    // "corrupt": every script run on that key fails with WRONGTYPE.
    let mut redis = crate::helpers::redis_connection().await;
    for policy in ["strict", "lenient"] {
        let log = format!("{prefix}{{{policy}:corrupt}}:log");
        let _: () = redis::pipe()
            .rpush(&log, "not a log")
            .expire(&log, 60)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    for _ in 0..50 {
        let refused = app.check("strict", "corrupt", None).await;
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        assert_eq!(refused.body["error"], "limiter_unavailable");
        let admitted = app.check("lenient", "corrupt", None).await;
        assert_eq!(admitted.status, 200, "{:?}", admitted.body);
        assert_eq!(admitted.header("slidegate-fallback"), Some("open"));
    }
    // Every other key is decided by Redis as before.
    for remaining in [4, 3] {
        let reply = app.check("strict", "healthy", None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert!(reply.header("slidegate-fallback").is_none());
        assert_eq!(reply.body["remaining"], remaining);
    }
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["degraded"], false);
    assert_eq!(limiter["breaker"]["state"], "closed");
    assert_eq!(limiter["counters"]["invalid_replies"], 100);
    assert_eq!(limiter["counters"]["store_failures"], 0);
    assert_eq!(limiter["counters"]["breaker_opened"], 0);

    let samples = crate::metrics::scrape(&app.address).await;
    let metric = |name, labels: &[(&str, &str)]| crate::metrics::value(&samples, name, labels);
    assert_eq!(metric("slidegate_store_invalid_replies_total", &[]), 100.0);
    assert_eq!(
        metric(
            "slidegate_store_errors_total",
            &[("store", "redis"), ("kind", "invalid_reply")]
        ),
        50.0,
        "the strict policy's 503s"
    );
    assert_eq!(
        metric(
            "slidegate_decisions_total",
            &[("policy", "lenient"), ("outcome", "degraded")]
        ),
        50.0
    );
}
