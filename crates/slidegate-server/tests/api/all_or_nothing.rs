//! All or nothing across limits, through a replica: a request that limits A (10) and B (3) both govern is admitted only while both admit, and a refused one consumes neither — through forward-auth and through Envoy's RLS, on the embedded store, one Redis and a Redis Cluster.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use secrecy::SecretString;
use slidegate_core::{MatchSpec, PolicySpec};
use slidegate_redis::RedisMode;

use crate::helpers::{TestApp, TestOptions, policy, spawn_app};
use crate::private_redis::PrivateCluster;

/// A before B in file order: the looser limit is checked first, where a
/// limiter that counts as it goes would keep its units after B refuses.
const RULES: &str = r#"
domain: shop
descriptors:
  - key: limit_a
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: limit_b
    rate_limit: { unit: minute, requests_per_unit: 3, algorithm: gcra }
"#;

/// Forward-auth's A covers every path, B only `/both`; both count per `X-User`.
fn policies() -> Vec<PolicySpec> {
    let rule = |name: &str, algorithm: &str, limit: u64, prefix: &str| PolicySpec {
        matches: Some(MatchSpec {
            path_prefix: Some(prefix.into()),
            ..MatchSpec::default()
        }),
        key: Some(vec!["header:x-user".to_owned()]),
        ..policy(name, algorithm, limit, "1m")
    };
    vec![
        rule("a", "sliding_log", 10, "/"),
        rule("b", "sliding_window", 3, "/both"),
    ]
}

enum On<'a> {
    Embedded,
    Redis,
    Cluster(&'a PrivateCluster),
}

async fn replica(on: On<'_>, dir: &tempfile::TempDir) -> TestApp {
    let rules = dir.path().join("ratelimit.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let mut options = match on {
        On::Embedded => TestOptions::memory(policies()),
        On::Redis => TestOptions::redis(policies()),
        On::Cluster(cluster) => {
            let mut options = TestOptions::redis(policies());
            options.redis_url = None;
            options.settings.redis.mode = RedisMode::Cluster;
            options.settings.redis.nodes = (0..cluster.nodes().len())
                .map(|index| SecretString::from(cluster.url(index)))
                .collect();
            options
        }
    };
    options.settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    options.settings.envoy_rls.rules = Some(rules);
    let app = spawn_app(options).await;
    app.eventually(
        "the replica to be ready",
        Duration::from_secs(15),
        || app.get("/health/ready"),
        |reply| reply.status == 200,
    )
    .await;
    app
}

/// Ten requests under A and B for `user`: three admitted, the rest refused
/// by B; then A alone admits exactly its 7 units left.
async fn forward_auth_counts_a_refused_request_nowhere(app: &TestApp, user: &str) {
    let user = [("x-user", user)];
    let mut admitted = 0;
    for request in 1..=10 {
        let reply = app.forward_auth("GET", "/both/item", &user).await;
        match reply.status {
            200 => admitted += 1,
            429 => assert_eq!(reply.body["policy"], "b", "request {request}"),
            status => panic!("request {request}: {status} {:?}", reply.body),
        }
    }
    assert_eq!(admitted, 3, "{user:?}: B's limit");
    let mut admitted_by_a = 0;
    for _ in 0..10 {
        let reply = app.forward_auth("GET", "/a-only", &user).await;
        admitted_by_a += usize::from(reply.status == 200);
    }
    assert_eq!(admitted_by_a, 7, "{user:?}: A consumed exactly 3 before");
}

fn descriptor(key: &str, user: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.to_owned(),
            value: user.to_owned(),
        }],
        ..RateLimitDescriptor::default()
    }
}

/// The same through ShouldRateLimit: descriptors `limit_a` then `limit_b`.
async fn rls_counts_a_refused_request_nowhere(app: &TestApp, user: &str) {
    let address = app.envoy_address.expect("the RLS listener is on");
    let mut client = RateLimitServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let mut ask = async |descriptors: Vec<RateLimitDescriptor>| {
        let request = RateLimitRequest {
            domain: "shop".to_owned(),
            descriptors,
            hits_addend: 0,
        };
        client
            .should_rate_limit(request)
            .await
            .expect("ShouldRateLimit answers")
            .into_inner()
    };
    let mut admitted = 0;
    for call in 1..=10 {
        let answer = ask(vec![
            descriptor("limit_a", user),
            descriptor("limit_b", user),
        ])
        .await;
        if answer.overall_code == Code::Ok as i32 {
            admitted += 1;
            continue;
        }
        let codes: Vec<i32> = answer.statuses.iter().map(|status| status.code).collect();
        assert_eq!(
            codes,
            [Code::Ok as i32, Code::OverLimit as i32],
            "call {call}"
        );
        assert_eq!(
            answer.statuses[0].limit_remaining, 7,
            "call {call}: A without it"
        );
    }
    assert_eq!(admitted, 3, "{user}: B's limit");
    let alone = ask(vec![descriptor("limit_a", user)]).await;
    assert_eq!(alone.statuses[0].limit_remaining, 6, "{user}: A's 4th unit");
}

#[tokio::test]
async fn on_the_embedded_store_a_refused_request_consumes_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let app = replica(On::Embedded, &dir).await;
    forward_auth_counts_a_refused_request_nowhere(&app, "alice").await;
    rls_counts_a_refused_request_nowhere(&app, "alice").await;
}

#[tokio::test]
async fn on_one_redis_a_refused_request_consumes_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let app = replica(On::Redis, &dir).await;
    forward_auth_counts_a_refused_request_nowhere(&app, "alice").await;
    rls_counts_a_refused_request_nowhere(&app, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_refused_request_consumes_no_limit_across_masters() {
    let cluster = PrivateCluster::start(3, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let app = replica(On::Cluster(&cluster), &dir).await;
    // Each user's A and B keys have their own hash tags: over several users
    // most pairs live on different masters, so reservations are released
    // across masters.
    for user in ["alice", "bob", "carol", "dave"] {
        forward_auth_counts_a_refused_request_nowhere(&app, user).await;
        rls_counts_a_refused_request_nowhere(&app, user).await;
    }
}
