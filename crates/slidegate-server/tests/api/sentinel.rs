//! Redis Sentinel: a replica finds the master through the sentinels and follows a failover, with the counts the replica had replicated.

use std::time::Duration;

use secrecy::SecretString;
use slidegate_core::{FailureMode, PolicySpec};
use slidegate_redis::RedisMode;

use crate::helpers::{TestApp, TestOptions, eventually, policy, spawn_app};
use crate::private_redis::{PrivateSentinels, SENTINEL_MASTER, TestPki};

const LIMIT: u64 = 5;

/// A replica finding its master through `sentinels`; trusting `ca` (the
/// sentinels' and the master's TLS certificates) when given.
async fn replica_on(sentinels: &PrivateSentinels, ca: Option<&std::path::Path>) -> TestApp {
    let mut options = TestOptions::redis(vec![PolicySpec {
        failure_mode: Some(FailureMode::Open.as_str().to_owned()),
        ..policy("p", "sliding_log", LIMIT, "1h")
    }]);
    options.redis_url = None;
    options.settings.redis.mode = RedisMode::Sentinel;
    options.settings.redis.nodes = sentinels
        .urls()
        .into_iter()
        .map(SecretString::from)
        .collect();
    options.settings.redis.sentinel_master = Some(SENTINEL_MASTER.to_owned());
    options.settings.redis.tls_ca_file = ca.map(std::path::Path::to_path_buf);
    let app = spawn_app(options).await;
    app.eventually(
        "the replica to be ready through the sentinels",
        Duration::from_secs(15),
        || app.get("/health/ready"),
        |reply| reply.status == 200,
    )
    .await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_to_the_promoted_replica_with_the_counts_it_replicated() {
    let sentinels = PrivateSentinels::start().await;
    let app = replica_on(&sentinels, None).await;
    failover_is_followed(sentinels, app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sentinels_and_the_master_are_verified_and_a_failover_is_followed() {
    let pki = TestPki::new();
    let sentinels = PrivateSentinels::start_tls(&pki).await;
    // Without the test CA the sentinels' certificates do not verify: not
    // ready, and saying why.
    let untrusting = {
        let mut options = TestOptions::redis(vec![policy("p", "sliding_log", LIMIT, "1h")]);
        options.redis_url = None;
        options.settings.redis.mode = RedisMode::Sentinel;
        options.settings.redis.nodes = sentinels
            .urls()
            .into_iter()
            .map(SecretString::from)
            .collect();
        options.settings.redis.sentinel_master = Some(SENTINEL_MASTER.to_owned());
        spawn_app(options).await
    };
    untrusting
        .eventually(
            "readiness to name the refused certificate",
            Duration::from_secs(15),
            || untrusting.get("/health/ready"),
            |reply| {
                reply.status == 503
                    && reply.body["checks"]["redis"]["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("certificate verify failed"))
            },
        )
        .await;
    let app = replica_on(&sentinels, Some(&pki.ca.cert)).await;
    failover_is_followed(sentinels, app).await;
}

/// Checks decided by the master, the master killed, the replica promoted:
/// the app follows it, in its failure mode meanwhile, and the counts held.
async fn failover_is_followed(mut sentinels: PrivateSentinels, app: TestApp) {
    for _ in 0..3 {
        let reply = app.check("p", "k", None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert!(reply.body["fallback"].is_null(), "decided by the master");
    }
    // The counts reached the replica before the master dies.
    let master = sentinels.master.connection().await;
    eventually(
        Duration::from_secs(10),
        "the replica to acknowledge the counts",
        || {
            let mut master = master.clone();
            async move {
                // Short waits: the connection's own reply timeout is 500 ms.
                let acknowledged: u64 = redis::cmd("WAIT")
                    .arg(1)
                    .arg(200)
                    .query_async(&mut master)
                    .await
                    .ok()?;
                (acknowledged == 1).then_some(())
            }
        },
    )
    .await;
    drop(master);
    let old_master = sentinels.master.port();
    sentinels.master.kill();

    // Sentinels promote the replica; checks meanwhile get the failure mode
    // (open: admitted, marked), never an error.
    let promoted = sentinels.replica.port();
    let mut outage = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.check("p", "other", None).await;
        outage.push(reply.status);
        let promoted_now = sentinels.master_port().await == Some(promoted);
        if promoted_now && reply.status == 200 && reply.body["fallback"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30 s: the sentinels to promote the replica and checks to be decided by it; {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        outage.iter().all(|&status| status == 200),
        "open mode during the failover: {outage:?}"
    );
    assert_ne!(old_master, promoted);
    // The promoted replica had the 3 units: 2 more are admitted, then 429.
    let after: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(app.check("p", "k", None).await.status);
        }
        statuses
    };
    assert_eq!(after, [200, 200, 429], "the count followed the failover");
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
}
