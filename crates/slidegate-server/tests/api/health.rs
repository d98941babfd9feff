//! Liveness and readiness: what each dependency and the limiter report, that secrets stay out, and that readiness answers at once whatever Redis or Postgres do.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    CheckReply, TestApp, TestDatabase, TestOptions, eventually, policy, read_reply, spawn_app,
    unique_prefix,
};
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
    // Answered by the background probe, at most an interval and a probe ago.
    let age = redis["checked_ms_ago"].as_u64().unwrap();
    assert!(age <= 2000, "{age}");
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
async fn every_worker_holds_a_redis_connection_before_its_first_check() {
    let app = spawn_app(TestOptions::redis(vec![policy("p", "gcra", 1, "1s")])).await;
    let pool_size = u64::from(
        slidegate::configuration::Settings::default()
            .redis
            .pool_size,
    );
    // spawn_app runs 2 workers; the background probe has a pool of its own.
    let pools = 3;
    eventually(
        Duration::from_secs(5),
        "a live pool on each worker",
        || async {
            let pool = &app.readiness().await["checks"]["redis"]["pool"];
            let opened = pool["max_size"].as_u64().unwrap() >= pools * pool_size
                && pool["connections"].as_u64().unwrap() >= pools;
            opened.then_some(())
        },
    )
    .await;
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

/// Far below what any probe of a black hole would take (each waits out a
/// 1 s timeout at least), far above what reading the probes' answers takes.
const FAST: Duration = Duration::from_millis(500);

/// `GET /health/ready`, failing the test unless it is answered within [`FAST`].
async fn readiness_at_once(app: &TestApp) -> CheckReply {
    let started = Instant::now();
    let response = app
        .client
        .get(format!("{}/health/ready", app.address))
        .timeout(FAST)
        .send()
        .await
        .unwrap_or_else(|error| panic!("readiness not answered within {FAST:?}: {error}"));
    let reply = read_reply(response).await;
    assert!(
        started.elapsed() < FAST,
        "readiness took {:?}",
        started.elapsed()
    );
    reply
}

/// Waits (polling readiness, every answer within [`FAST`]) until `accept` holds.
async fn readiness_until(
    app: &TestApp,
    what: &str,
    accept: impl Fn(&CheckReply) -> bool,
) -> CheckReply {
    eventually(Duration::from_secs(10), what, || async {
        let reply = readiness_at_once(app).await;
        accept(&reply).then_some(reply)
    })
    .await
}

/// `slidegate_postgres_errors_total{kind="unavailable"}` from `/metrics`.
async fn postgres_unavailable(app: &TestApp) -> f64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("slidegate_postgres_errors_total{kind=\"unavailable\"} ")
        })
        .map_or(0.0, |value| value.parse().unwrap())
}

fn policy_body(name: &str, limit: u64) -> serde_json::Value {
    serde_json::json!({ "name": name, "algorithm": "sliding_log", "limit": limit, "window": "1m" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_black_holed_readiness_stays_200_and_fast_checks_are_decided_and_admin_writes_fail_within_their_timeout()
 {
    let database = TestDatabase::create().await;
    // The machine's Postgres (the server TestDatabase uses), through a proxy the test controls.
    let proxy = FaultProxy::start(5432).await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.postgres_url = Some(format!(
        "postgres://postgres@{}/{}",
        proxy.address(),
        database.name
    ));
    options.settings.postgres.statement_timeout = Duration::from_secs(1);
    let write_timeout =
        options.settings.postgres.connect_timeout + 2 * options.settings.postgres.statement_timeout;
    let stale_after = options.settings.health.probes().stale_after();
    let app = spawn_app(options).await;
    let created = app
        .admin(Method::POST, "/policies", Some(policy_body("p", 1000)))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let ready = readiness_at_once(&app).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["checks"]["postgres"]["ok"], true);

    let unavailable_before = postgres_unavailable(&app).await;
    proxy.black_hole();
    let ready = readiness_until(&app, "readiness to report Postgres failing", |reply| {
        reply.body["checks"]["postgres"]["ok"] == false
    })
    .await;
    assert_eq!(
        ready.status, 200,
        "a loaded replica stays ready: {:?}",
        ready.body
    );
    let postgres = &ready.body["checks"]["postgres"];
    assert!(postgres["error"].is_string(), "{postgres}");
    // The probe that gave up counted it, as every Postgres failure is.
    assert!(
        postgres_unavailable(&app).await > unavailable_before,
        "{postgres}"
    );
    // Probes keep answering (as failures): the answer is never stale.
    for _ in 0..3 {
        let ready = readiness_at_once(&app).await;
        assert_eq!(ready.status, 200, "{:?}", ready.body);
        let age = ready.body["checks"]["postgres"]["checked_ms_ago"]
            .as_u64()
            .unwrap();
        assert!(age < stale_after.as_millis() as u64, "{age} ms");
        assert_eq!(app.check("p", "k", None).await.status, 200, "checks decide");
    }
    let started = Instant::now();
    let refused = app
        .admin(Method::POST, "/policies", Some(policy_body("lost", 1)))
        .await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "catalog_unavailable");
    assert!(
        waited < write_timeout + Duration::from_secs(1),
        "the write waited {waited:?}, its timeout is {write_timeout:?}"
    );

    proxy.restore();
    readiness_until(&app, "Postgres reported ok again", |reply| {
        reply.status == 200 && reply.body["checks"]["postgres"]["ok"] == true
    })
    .await;
    app.eventually(
        "an admin write to succeed again",
        Duration::from_secs(10),
        || app.admin(Method::POST, "/policies", Some(policy_body("after", 1))),
        |reply| reply.status == 201,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_black_holed_readiness_answers_at_once_that_redis_is_down_and_a_closed_policy_is_not_ready()
 {
    let redis = PrivateRedis::start();
    let proxy = FaultProxy::start(redis.port()).await;
    let mut options = TestOptions::redis(vec![policy("p", "sliding_log", 100, "1m")]);
    options.redis_url = Some(proxy.redis_url());
    let app = spawn_app(options).await;
    assert_eq!(app.check("p", "k", None).await.status, 200);
    assert_eq!(readiness_at_once(&app).await.status, 200);

    proxy.black_hole();
    let ready = readiness_until(&app, "readiness to report Redis down", |reply| {
        reply.body["checks"]["redis"]["ok"] == false
    })
    .await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], false);
    assert_eq!(ready.body["checks"]["limiter"]["ok"], false);
    assert_eq!(ready.body["checks"]["limiter"]["degraded"], true);
    let error = ready.body["checks"]["redis"]["error"].as_str().unwrap();
    assert!(!error.is_empty());
    let refused = app.check("p", "k", None).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);

    proxy.restore();
    readiness_until(&app, "ready again once Redis answers", |reply| {
        reply.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readiness_requests_takes_no_pooled_connection_from_admin_writes() {
    let database = TestDatabase::create().await;
    // Every Postgres reply 50 ms late, and one pooled connection: a probe per
    // readiness request would hold it 100 ms each (a validity check and
    // SELECT 1), and 20 of them in a row would keep an admin write waiting
    // past its 1 s for a connection.
    let proxy = FaultProxy::start(5432).await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.postgres_url = Some(format!(
        "postgres://postgres@{}/{}",
        proxy.address(),
        database.name
    ));
    options.settings.postgres.pool_size = 1;
    let app = spawn_app(options).await;
    proxy.set_delay(Duration::from_millis(50));

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let flooding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}/health/ready", app.address));
            let (flooding, sent) = (Arc::clone(&flooding), Arc::clone(&sent));
            tokio::spawn(async move {
                while flooding.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    // Every client has had an answer and sent again: readiness requests are
    // queued for the pool now, if they take connections at all.
    eventually(Duration::from_secs(30), "the flood to run", || async {
        (sent.load(Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    // One write: after it, its own reload and the one its change
    // notification causes hold the only connection for a while (at 50 ms a
    // round-trip), which a second write would have to wait out too.
    let created = app
        .admin(
            Method::POST,
            "/policies",
            Some(policy_body("during-flood", 5)),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    flooding.store(false, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
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
