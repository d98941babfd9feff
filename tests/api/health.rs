//! Liveness and readiness: what each dependency and the limiter report, and that secrets stay out.

use std::net::TcpListener;

use crate::helpers::{TestOptions, policy, spawn_app};

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
