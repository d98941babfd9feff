//! Liveness and readiness: what each dependency and the limiter report, and that secrets stay out.

use std::net::TcpListener;
use std::time::Duration;

use crate::helpers::{TestOptions, eventually, policy, spawn_app};
use crate::private_redis::PrivateRedis;

#[tokio::test]
async fn liveness_answers_while_the_process_runs() {
    let app = spawn_app(TestOptions::memory(vec![policy("p", "gcra", 1, "1s")])).await;
    let reply = app.get("/health/live").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "live");
}

#[tokio::test]
async fn readiness_reports_redis_the_pool_and_the_scripts() {
    let app = spawn_app(TestOptions::redis(vec![
        policy("a", "gcra", 1, "1s"),
        policy("b", "sliding_log", 1, "1s"),
    ]))
    .await;
    let reply = app.get("/health/ready").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["ready"], true);
    let redis = &reply.body["checks"]["redis"];
    assert_eq!(redis["ok"], true);
    assert!(redis["latency_ms"].as_f64().unwrap() >= 0.0);
    // Every thread that has talked to Redis has its own pool of pool_size
    // (default 2); readiness reports them together.
    let max_size = redis["pool"]["max_size"].as_u64().unwrap();
    assert!(max_size >= 2 && max_size % 2 == 0, "{max_size}");
    let connections = redis["pool"]["connections"].as_u64().unwrap();
    assert!((1..=max_size).contains(&connections), "{connections}");
    let limiter = &reply.body["checks"]["limiter"];
    assert_eq!(limiter["ok"], true);
    assert_eq!(limiter["store"], "redis");
    assert_eq!(limiter["policies"], 2);
    for algorithm in ["sliding_log", "sliding_window", "gcra"] {
        let sha = limiter["algorithms"][algorithm].as_str().unwrap();
        assert_eq!(sha.len(), 40, "{algorithm}: {sha}");
        assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

#[tokio::test]
async fn readiness_on_the_embedded_store_needs_no_dependency() {
    let app = spawn_app(TestOptions::memory(vec![policy("p", "gcra", 1, "1s")])).await;
    let reply = app.get("/health/ready").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["checks"]["limiter"]["store"], "memory");
    assert!(reply.body["checks"].get("redis").is_none());
}

/// A port with nothing listening: bind one, note it, close it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_redis_makes_the_replica_unready_and_checks_503_without_leaking_the_password()
 {
    let password = "hunter2-very-secret";
    let mut options =
        TestOptions::redis(vec![policy("p", "sliding_log", 5, "1m")]).with_production_timeouts();
    options.redis_url = Some(format!("redis://:{password}@127.0.0.1:{}", closed_port()));
    let app = spawn_app(options).await;

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["ready"], false);
    assert_eq!(ready.body["checks"]["redis"]["ok"], false);
    assert!(ready.body["checks"]["redis"]["error"].as_str().is_some());
    assert!(!ready.body.to_string().contains(password));

    let check = app.check("p", "k", None).await;
    assert_eq!(check.status, 503);
    assert_eq!(check.body["error"], "limiter_unavailable");
    assert!(!check.body.to_string().contains(password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_gets_no_checks_is_ready_again_once_redis_returns_and_half_open_is_degraded()
{
    let mut redis = PrivateRedis::start();
    let mut options =
        TestOptions::redis(vec![policy("p", "sliding_log", 100, "1m")]).with_production_timeouts();
    options.redis_url = Some(redis.url());
    let app = spawn_app(options).await;
    assert_eq!(app.check("p", "k", None).await.status, 200);

    redis.kill();
    for _ in 0..5 {
        assert_eq!(app.check("p", "k", None).await.status, 503);
    }
    let limiter = app.limiter_health().await;
    assert_eq!(limiter["breaker"]["state"], "open", "{limiter}");

    // A load balancer stops routing to an unready replica: from here on no
    // check arrives, and readiness alone has to find out that Redis is back.
    redis.restart();
    let seen_half_open = std::sync::atomic::AtomicBool::new(false);
    let ready = eventually(Duration::from_secs(10), "ready without a check", || {
        let (app, seen_half_open) = (&app, &seen_half_open);
        async move {
            let reply = app.get("/health/ready").await;
            let limiter = &reply.body["checks"]["limiter"];
            if limiter["breaker"]["state"] == "half_open" {
                // Only probes reach Redis: the closed policy's other checks get 503.
                assert_eq!(reply.status, 503, "{:?}", reply.body);
                assert_eq!(limiter["degraded"], true);
                seen_half_open.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (reply.status == 200).then_some(reply)
        }
    })
    .await;
    assert!(
        seen_half_open.into_inner(),
        "each readiness poll is one probe of three"
    );
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["breaker"]["state"], "closed");
    assert_eq!(limiter["degraded"], false);
    assert_eq!(
        limiter["counters"]["store_calls"], 6,
        "no check since the outage"
    );
    assert_eq!(app.check("p", "k", None).await.status, 200);
}
