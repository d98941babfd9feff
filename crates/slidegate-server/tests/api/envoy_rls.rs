//! The Envoy rate-limit gRPC front end in a replica: `[envoy_rls]` turns it on, replicas on one Redis share its limits, the HTTP API keeps working beside it, and a rule file that does not parse stops the start.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use slidegate::configuration::Settings;

use crate::helpers::{TestApp, TestOptions, eventually, policy, spawn_app, unique_prefix};
use crate::metrics::{scrape, value};

const RULES: &str = r#"
domain: edge
descriptors:
  - key: user
    rate_limit:
      name: per-user
      unit: minute
      requests_per_unit: 5
  - key: path
    value: /login
    rate_limit:
      unit: hour
      requests_per_unit: 2
"#;

/// A replica with the RLS listener on, deciding with `rules` (written to a
/// file in `dir`), on Redis under `prefix` or on the embedded store.
async fn replica(dir: &tempfile::TempDir, rules: &str, redis_prefix: Option<&str>) -> TestApp {
    let path = dir.path().join("ratelimit.yaml");
    std::fs::write(&path, rules).unwrap();
    let policies = vec![policy("api", "sliding_log", 3, "1m")];
    let mut options = match redis_prefix {
        Some(prefix) => {
            let mut options = TestOptions::redis(policies);
            options.key_prefix = prefix.to_owned();
            options
        }
        None => TestOptions::memory(policies),
    };
    options.settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    options.settings.envoy_rls.rules = Some(path);
    options.settings.envoy_rls.reload_interval = Duration::from_millis(50);
    spawn_app(options).await
}

async fn client(address: SocketAddr) -> RateLimitServiceClient<tonic::transport::Channel> {
    RateLimitServiceClient::connect(format!("http://{address}"))
        .await
        .expect("the RLS listener accepts connections")
}

fn request(domain: &str, entries: &[(&str, &str)]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: (*key).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<tonic::transport::Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_each_rule_and_the_http_api_works_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let first = replica(&dir, RULES, Some(&prefix)).await;
    let second = replica(&dir, RULES, Some(&prefix)).await;
    let mut clients = [
        client(first.envoy_address.unwrap()).await,
        client(second.envoy_address.unwrap()).await,
    ];
    // 5 per minute across both replicas: the 6th call, on either, is over.
    let mut codes = Vec::new();
    for call in 0..8 {
        let answer = ask(
            &mut clients[call % 2],
            request("edge", &[("user", "alice")]),
        )
        .await;
        codes.push(Code::try_from(answer.overall_code).unwrap());
        let status = &answer.statuses[0];
        let limit = status
            .current_limit
            .as_ref()
            .expect("a matched rule says its limit");
        assert_eq!(limit.requests_per_unit, 5);
        assert_eq!(limit.name, "per-user");
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::OverLimit,
            Code::OverLimit,
            Code::OverLimit
        ]
    );
    // Another value of the same rule has its own count; an unknown domain
    // is OK with no limit, as envoyproxy/ratelimit answers.
    let bob = ask(&mut clients[0], request("edge", &[("user", "bob")])).await;
    assert_eq!(bob.overall_code, Code::Ok as i32);
    assert_eq!(bob.statuses[0].limit_remaining, 4);
    let unknown = ask(&mut clients[1], request("nowhere", &[("user", "alice")])).await;
    assert_eq!(unknown.overall_code, Code::Ok as i32);
    assert!(unknown.statuses[0].current_limit.is_none());

    // The HTTP API's own policies are untouched by the rules, and the other way round.
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(first.check("api", "alice", None).await.status);
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429]);

    // The rules' decisions and reloads are in the replica's metrics.
    let samples = scrape(&first.address).await;
    // No file changed since the start: no reload yet, of either result.
    for result in ["ok", "invalid"] {
        assert_eq!(
            value(
                &samples,
                "slidegate_envoy_rls_rule_reloads_total",
                &[("result", result)]
            ),
            0.0
        );
    }
    let decided: f64 = samples
        .iter()
        .filter(|sample| {
            sample.name == "slidegate_decisions_total"
                && sample
                    .labels
                    .get("policy")
                    .is_some_and(|policy| policy.starts_with("rls.edge."))
        })
        .map(|sample| sample.value)
        .sum();
    assert_eq!(
        decided, 5.0,
        "the first replica decided calls 0, 2, 4, 6 and bob's"
    );
}

#[tokio::test]
async fn on_the_embedded_store_a_changed_rule_file_is_in_force_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = replica(&dir, RULES, None).await;
    let mut client = client(app.envoy_address.unwrap()).await;
    let login = || request("edge", &[("path", "/login")]);
    assert_eq!(
        ask(&mut client, login()).await.statuses[0].limit_remaining,
        1
    );
    // Raised from 2 to 10 an hour: the running replica picks it up.
    std::fs::write(
        dir.path().join("ratelimit.yaml"),
        RULES.replace("requests_per_unit: 2", "requests_per_unit: 10"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the raised limit to be in force",
        || {
            let mut client = client.clone();
            async move {
                let answer = ask(&mut client, login()).await;
                let limit = answer.statuses[0].current_limit.as_ref()?;
                (limit.requests_per_unit == 10).then_some(())
            }
        },
    )
    .await;
    // A file that no longer parses keeps the last good rules, and is counted.
    std::fs::write(
        dir.path().join("ratelimit.yaml"),
        "domain: edge\nbogus: 1\n",
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the invalid file to be counted",
        || async {
            let samples = scrape(&app.address).await;
            (value(
                &samples,
                "slidegate_envoy_rls_rule_reloads_total",
                &[("result", "invalid")],
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let answer = ask(&mut client, login()).await;
    assert_eq!(
        answer.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        10
    );
}

#[test]
fn a_rule_file_that_does_not_parse_stops_the_start_naming_the_file_and_the_path_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
    )
    .unwrap();
    let mut settings = Settings::default();
    settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    settings.envoy_rls.rules = Some(path.clone());
    let Err(error) = settings.validate() else {
        panic!("the settings were accepted")
    };
    let error = error.to_string();
    assert!(
        error.starts_with("invalid setting envoy_rls.rules"),
        "{error}"
    );
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("descriptors[0].rate_limit.unit"), "{error}");

    // A listener without rules would answer every call OK: refused too.
    let mut settings = Settings::default();
    settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    let Err(error) = settings.validate() else {
        panic!("the settings were accepted")
    };
    let error = error.to_string();
    assert!(error.contains("envoy_rls.rules"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness_while_redis_goes_away_and_comes_back() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut redis = crate::private_redis::PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratelimit.yaml");
    std::fs::write(&path, RULES).unwrap();
    let mut options = TestOptions::redis(vec![policy("api", "sliding_log", 3, "1m")]);
    options.redis_url = Some(redis.url());
    options.settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    options.settings.envoy_rls.rules = Some(path);
    options.settings.envoy_rls.failure_mode = Some(slidegate_core::FailureMode::Closed);
    let app = spawn_app(options).await;
    let address = app.envoy_address.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = || {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: slidegate_envoy::server::RATE_LIMIT_SERVICE.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    eventually(Duration::from_secs(15), "SERVING with Redis up", || async {
        (status().await == serving).then_some(())
    })
    .await;

    // The rules fail closed: without Redis they cannot answer as configured.
    redis.kill();
    eventually(
        Duration::from_secs(15),
        "NOT_SERVING without Redis",
        || async { (status().await == not_serving).then_some(()) },
    )
    .await;
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503, "the HTTP readiness agrees");

    redis.restart();
    eventually(
        Duration::from_secs(20),
        "SERVING again with Redis back",
        || async { (status().await == serving).then_some(()) },
    )
    .await;
}
