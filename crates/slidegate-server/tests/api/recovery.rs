//! A private `redis-server` the test kills and restarts: the replica answers 503 meanwhile, then recovers by itself.

use std::time::Duration;

use crate::helpers::{TestOptions, eventually, policy, spawn_app};
use crate::private_redis::PrivateRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_fail_closed_while_redis_is_down_and_recover_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let mut options =
        TestOptions::redis(vec![policy("p", "sliding_log", 100, "1m")]).with_production_timeouts();
    options.redis_url = Some(redis.url());
    let app = spawn_app(options).await;
    assert_eq!(app.check("p", "k", None).await.status, 200);

    redis.kill();
    for _ in 0..5 {
        let reply = app.check("p", "k", None).await;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["error"], "limiter_unavailable");
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    assert_eq!(app.get("/health/ready").await.status, 503);

    // A fresh server has no scripts and no state: the replica reconnects,
    // reloads the scripts after NOSCRIPT and decides again.
    redis.restart();
    let recovered = eventually(
        Duration::from_secs(5),
        "a 200 after the restart",
        || async {
            let reply = app.check("p", "k", None).await;
            assert!(matches!(reply.status, 200 | 503), "{:?}", reply.body);
            (reply.status == 200).then_some(reply)
        },
    )
    .await;
    assert_eq!(recovered.body["remaining"], 99);
    // That check was the breaker's first probe: readiness follows once the
    // breaker has closed, which readiness's own probes see to with no more
    // checks at all (its probe runs in the background, every probe interval).
    eventually(Duration::from_secs(5), "ready again", || async {
        (app.get("/health/ready").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(app.limiter_health().await["breaker"]["state"], "closed");
}
