//! The deny cache on real Redis: a hot key over its limit costs no round-trips until its retry time, counted by Redis itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    TestApp, TestDatabase, TestOptions, eventually, policy, spawn_app, unique_prefix,
};
use crate::private_redis::PrivateRedis;

/// A replica on its own Redis (so `INFO commandstats` counts only its calls),
/// with heartbeats far apart so that they add no script calls mid-test.
async fn spawn_on(redis: &PrivateRedis, deny_cache: bool) -> TestApp {
    // A window long enough for 100 checks on a loaded CI to fit in one
    // retry time, short enough to wait out.
    let mut options = TestOptions::redis(vec![policy("p", "sliding_log", 5, "2s")]);
    options.redis_url = Some(redis.url());
    options.settings.limiter.heartbeat_interval = Duration::from_secs(3600);
    options.settings.limiter.deny_cache.enabled = deny_cache;
    let app = spawn_app(options).await;
    eventually(Duration::from_secs(5), "the first heartbeat", || async {
        (app.limiter_health().await["counters"]["heartbeats"] == 1).then_some(())
    })
    .await;
    app
}

#[tokio::test]
async fn a_hot_key_over_its_limit_is_denied_without_round_trips_and_admitted_right_after_its_retry_time()
 {
    let redis = PrivateRedis::start();
    let app = spawn_on(&redis, true).await;
    for _ in 0..5 {
        assert_eq!(app.check("p", "hot", None).await.status, 200);
    }
    // Redis decides, and the replica starts its cache entry, after this instant.
    let sent = Instant::now();
    let denied = app.check("p", "hot", None).await;
    assert_eq!(denied.status, 429);
    let retry_after = Duration::from_millis(denied.body["retry_after_ms"].as_u64().unwrap());

    let calls = redis.calls_of("evalsha").await;
    for cost in [1, 0].repeat(50) {
        let reply = app.check("p", "hot", Some(cost)).await;
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        assert_eq!(reply.body["remaining"], 0);
        assert!(reply.header("slidegate-fallback").is_none());
    }
    assert_eq!(
        redis.calls_of("evalsha").await,
        calls,
        "100 checks of a denied key made no round-trip"
    );
    let limiter = app.limiter_health().await;
    assert_eq!(limiter["counters"]["deny_cache_hits"], 100);
    assert_eq!(limiter["deny_cache"]["size"], 1);

    // A larger cost is not answered from the cache: Redis decides it.
    assert_eq!(app.check("p", "hot", Some(2)).await.status, 429);
    assert_eq!(redis.calls_of("evalsha").await, calls + 1);

    // Keep asking: denied from the cache until the retry time, then Redis
    // admits the key again with a single round-trip.
    let admitted_at = eventually(Duration::from_secs(5), "admitted again", || async {
        let reply = app.check("p", "hot", None).await;
        assert!(matches!(reply.status, 200 | 429), "{:?}", reply.body);
        (reply.status == 200).then(Instant::now)
    })
    .await;
    let waited = admitted_at - sent;
    // retry_after_ms is rounded up to the millisecond.
    assert!(
        waited + Duration::from_millis(1) >= retry_after,
        "admitted after {waited:?}, before the retry time {retry_after:?}"
    );
    assert!(
        waited <= retry_after + Duration::from_millis(200),
        "admitted only {waited:?} after a retry time of {retry_after:?}"
    );
    assert_eq!(redis.calls_of("evalsha").await, calls + 2);
}

#[tokio::test]
async fn with_the_deny_cache_off_every_check_of_a_denied_key_asks_redis() {
    let redis = PrivateRedis::start();
    let app = spawn_on(&redis, false).await;
    for _ in 0..6 {
        app.check("p", "hot", None).await;
    }
    let calls = redis.calls_of("evalsha").await;
    for _ in 0..50 {
        assert_eq!(app.check("p", "hot", None).await.status, 429);
    }
    assert_eq!(redis.calls_of("evalsha").await, calls + 50);
    let limiter = app.limiter_health().await;
    assert_eq!(limiter["deny_cache"]["enabled"], false);
    assert_eq!(limiter["counters"]["deny_cache_hits"], 0);
}

#[tokio::test]
async fn denials_cached_before_an_outage_are_answered_during_it_and_forgotten_when_redis_is_back() {
    let mut redis = PrivateRedis::start();
    let mut open = policy("p", "sliding_log", 1, "1h");
    open.failure_mode = Some("open".into());
    let mut options = TestOptions::redis(vec![open]).with_production_timeouts();
    options.redis_url = Some(redis.url());
    let app = spawn_app(options).await;
    assert_eq!(app.check("p", "hot", None).await.status, 200);
    assert_eq!(app.check("p", "hot", None).await.status, 429);
    let breaker = || async { app.limiter_health().await["breaker"]["state"].clone() };

    redis.kill();
    let mut other = 0;
    eventually(Duration::from_secs(10), "the breaker to open", || {
        other += 1;
        let key = format!("other-{other}");
        let (app, breaker) = (&app, &breaker);
        async move {
            app.check("p", &key, None).await;
            (breaker().await == "open").then_some(())
        }
    })
    .await;
    // During the outage the cached denial still answers, before the failure mode.
    let cached = app.check("p", "hot", None).await;
    assert_eq!(cached.status, 429, "{:?}", cached.body);
    assert!(cached.header("slidegate-fallback").is_none());

    // A fresh server: it lost the key, so it would admit it; once the breaker
    // has closed, the replica must ask it rather than its cache.
    redis.restart();
    eventually(Duration::from_secs(10), "the breaker to close", || {
        other += 1;
        let key = format!("other-{other}");
        let (app, breaker) = (&app, &breaker);
        async move {
            app.check("p", &key, None).await;
            (breaker().await == "closed").then_some(())
        }
    })
    .await;
    let after = app.check("p", "hot", None).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert!(after.header("slidegate-fallback").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_whose_reply_arrives_after_a_limit_was_raised_does_not_deny_the_next_check() {
    let database = TestDatabase::create().await;
    let redis = PrivateRedis::start();
    let proxy = FaultProxy::start(redis.port()).await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.redis_url = Some(proxy.redis_url());
    options.settings.limiter.heartbeat_interval = Duration::from_secs(3600);
    // The delayed reply below must be a decision, not a timeout.
    options.settings.redis.command_timeout = Duration::from_secs(10);
    let app = Arc::new(spawn_app(options).await);
    eventually(Duration::from_secs(5), "the first heartbeat", || async {
        (app.limiter_health().await["counters"]["heartbeats"] == 1).then_some(())
    })
    .await;
    let limited = |limit: u64| json!({"name": "api", "algorithm": "sliding_log", "limit": limit, "window": "1m"});
    let created = app.admin(Method::POST, "/policies", Some(limited(1))).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(app.check("api", "k", None).await.status, 200);

    // Redis denies the next check under limit 1, and its reply takes 2 s to
    // come back: long enough to raise the limit meanwhile.
    proxy.set_delay(Duration::from_secs(2));
    let calls = redis.calls_of("evalsha").await;
    let in_flight = tokio::spawn({
        let app = Arc::clone(&app);
        async move { app.check("api", "k", None).await }
    });
    eventually(
        Duration::from_secs(5),
        "Redis has decided the check",
        || async { (redis.calls_of("evalsha").await > calls).then_some(()) },
    )
    .await;
    let raised = app
        .admin(Method::PUT, "/policies/api", Some(limited(5)))
        .await;
    assert_eq!(raised.status, 200, "{:?}", raised.body);
    assert!(
        !in_flight.is_finished(),
        "the reply came back before the limit was raised: nothing was tested"
    );
    let stale = in_flight.await.unwrap();
    assert_eq!(stale.status, 429, "judged under limit 1: {:?}", stale.body);
    assert_eq!(stale.body["limit"], 1);

    // That denial reached the deny cache after the swap cleared it, but it
    // belongs to the old limits: the next check goes to Redis and is admitted.
    proxy.set_delay(Duration::ZERO);
    let next = app.check("api", "k", None).await;
    assert_eq!(next.status, 200, "{:?}", next.body);
    assert_eq!(next.body["limit"], 5);
    assert_eq!(next.body["remaining"], 3);
    assert_eq!(app.limiter_health().await["counters"]["deny_cache_hits"], 0);
}
