//! `GET /metrics`: parsed as Prometheus would, counters and histograms move with checks, label sets stay bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestDatabase, TestOptions, policy, spawn_app, unique_prefix};

/// One sample line of the Prometheus text format: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4), failing the test on
/// any line that is not a comment, a blank or a well-formed sample.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name.to_owned(), parse_labels(body, line))
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((index, '"')) => break index,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(key.to_owned(), value);
        body = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

pub async fn scrape(address: &str) -> Vec<Sample> {
    let response = reqwest::get(format!("{address}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_exposition(&response.text().await.unwrap())
}

#[tokio::test]
async fn decisions_are_counted_by_policy_and_outcome_and_timed_per_policy() {
    let app = spawn_app(TestOptions::redis(vec![
        policy("login", "sliding_log", 3, "1m"),
        policy("search", "gcra", 100, "1m"),
    ]))
    .await;
    let before = scrape(&app.address).await;
    // Every series a check can touch exists from the start, at zero.
    for outcome in ["allowed", "denied", "shadow", "degraded"] {
        for policy in ["login", "search"] {
            let labels = [("policy", policy), ("outcome", outcome)];
            assert_eq!(value(&before, "slidegate_decisions_total", &labels), 0.0);
        }
    }

    for _ in 0..5 {
        app.check("login", "alice", None).await;
    }
    let after = scrape(&app.address).await;
    let decisions = |policy, outcome| {
        value(
            &after,
            "slidegate_decisions_total",
            &[("policy", policy), ("outcome", outcome)],
        )
    };
    assert_eq!(decisions("login", "allowed"), 3.0);
    assert_eq!(decisions("login", "denied"), 2.0);
    assert_eq!(decisions("search", "allowed"), 0.0);

    let latency = |suffix: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("policy", "login")];
        labels.extend_from_slice(extra);
        value(
            &after,
            &format!("slidegate_decision_duration_seconds{suffix}"),
            &labels,
        )
    };
    assert_eq!(latency("_count", &[]), 5.0);
    assert_eq!(latency("_bucket", &[("le", "+Inf")]), 5.0);
    assert!(latency("_sum", &[]) > 0.0);
    // Cumulative buckets, and a Redis round-trip here is well under a second.
    let buckets: Vec<(f64, f64)> = after
        .iter()
        .filter(|sample| {
            sample.name == "slidegate_decision_duration_seconds_bucket"
                && sample.labels["policy"] == "login"
        })
        .map(|sample| (sample.labels["le"].parse().unwrap(), sample.value))
        .collect();
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1)
    );
    assert!(
        buckets
            .iter()
            .any(|(le, count)| *le == 1.0 && *count == 5.0),
        "{buckets:?}"
    );

    assert_eq!(
        value(
            &after,
            "slidegate_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("store", "redis")]
        ),
        1.0
    );
    assert_eq!(value(&after, "slidegate_policies", &[]), 2.0);
    let pool = [("pool", "redis")];
    // One pool of pool_size (default 2) per thread that has talked to Redis.
    let max_connections = value(&after, "slidegate_pool_max_connections", &pool);
    assert!(
        max_connections >= 2.0 && max_connections % 2.0 == 0.0,
        "{max_connections}"
    );
    assert!(value(&after, "slidegate_pool_connections", &pool) >= 1.0);
    assert!(value(&after, "slidegate_pool_connections_opened_total", &pool) >= 1.0);
    assert_eq!(value(&after, "slidegate_pool_waiting", &pool), 0.0);
}

#[tokio::test]
async fn the_label_set_stays_bounded_after_many_distinct_keys_and_unknown_policies() {
    let app = spawn_app(TestOptions::memory(vec![policy("api", "gcra", 5, "1m")])).await;
    let series = |samples: &[Sample]| -> BTreeSet<String> {
        samples
            .iter()
            .map(|sample| format!("{}{:?}", sample.name, sample.labels))
            .collect()
    };
    app.check("api", "warm-up", None).await;
    let before = series(&scrape(&app.address).await);

    for index in 0..300 {
        let key = format!("user-{index}@example.com");
        assert_eq!(app.check("api", &key, None).await.status, 200);
        let unknown = format!("no-such-policy-{index}");
        assert_eq!(app.check(&unknown, &key, None).await.status, 422);
    }

    let samples = scrape(&app.address).await;
    let after = series(&samples);
    assert_eq!(before, after, "checks created or removed series");
    let text = format!("{samples:?}");
    assert!(!text.contains("example.com"), "a key leaked into a label");
    assert!(
        !text.contains("no-such-policy"),
        "a requested policy name leaked"
    );
    assert_eq!(
        value(
            &samples,
            "slidegate_decisions_total",
            &[("policy", "api"), ("outcome", "allowed")]
        ),
        301.0
    );
}

#[tokio::test]
async fn store_failures_are_counted_by_kind_without_the_redis_password() {
    let password = "hunter2-metrics";
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = TestOptions::redis(vec![policy("p", "gcra", 5, "1m")]);
    options.redis_url = Some(format!("redis://:{password}@127.0.0.1:{port}"));
    let app = spawn_app(options).await;
    for _ in 0..2 {
        assert_eq!(app.check("p", "k", None).await.status, 503);
    }

    let response = reqwest::get(format!("{}/metrics", app.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!response.contains(password));
    let samples = parse_exposition(&response);
    let failed: f64 = ["timeout", "unavailable", "invalid_reply"]
        .into_iter()
        .map(|kind| {
            value(
                &samples,
                "slidegate_store_errors_total",
                &[("store", "redis"), ("kind", kind)],
            )
        })
        .sum();
    assert_eq!(failed, 2.0);
    let decided: f64 = ["allowed", "denied"]
        .into_iter()
        .map(|outcome| {
            value(
                &samples,
                "slidegate_decisions_total",
                &[("policy", "p"), ("outcome", outcome)],
            )
        })
        .sum();
    assert_eq!(decided, 0.0, "a failure is not a decision");
}

#[tokio::test]
async fn checks_decided_by_the_open_and_local_failure_modes_are_counted_as_degraded_and_by_mode() {
    let mut local = policy("local", "gcra", 2, "1m");
    local.failure_mode = Some("local".into());
    let mut options = TestOptions::redis(vec![policy("open", "sliding_log", 5, "1m"), local])
        .with_production_timeouts();
    options.redis_url = Some(format!(
        "redis://127.0.0.1:{}",
        crate::private_redis::free_port()
    ));
    options.settings.limiter.failure_mode = slidegate_core::FailureMode::Open;
    options.settings.redis.breaker.cool_down = Duration::from_secs(60);
    let app = spawn_app(options).await;
    for _ in 0..3 {
        assert_eq!(app.check("open", "k", None).await.status, 200);
        // The third is a local denial: still degraded, not denied.
        app.check("local", "k", None).await;
    }

    let samples = scrape(&app.address).await;
    let decisions = |policy, outcome| {
        value(
            &samples,
            "slidegate_decisions_total",
            &[("policy", policy), ("outcome", outcome)],
        )
    };
    for policy in ["open", "local"] {
        assert_eq!(decisions(policy, "degraded"), 3.0, "{policy}");
        assert_eq!(decisions(policy, "allowed"), 0.0, "{policy}");
        assert_eq!(decisions(policy, "denied"), 0.0, "{policy}");
    }
    // The same checks, as the failure handling counted them.
    let modes = |mode| {
        value(
            &samples,
            "slidegate_failover_decisions_total",
            &[("mode", mode)],
        )
    };
    assert_eq!(
        (modes("open"), modes("local"), modes("closed")),
        (3.0, 3.0, 0.0)
    );
    // 5 failures in a row open the breaker; the sixth check is not sent.
    let state = |state| value(&samples, "slidegate_breaker_state", &[("state", state)]);
    assert_eq!(
        (state("open"), state("half_open"), state("closed")),
        (1.0, 0.0, 0.0)
    );
    let transitions = |to| {
        value(
            &samples,
            "slidegate_breaker_transitions_total",
            &[("to", to)],
        )
    };
    assert_eq!(
        (
            transitions("open"),
            transitions("half_open"),
            transitions("closed")
        ),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(
        value(&samples, "slidegate_store_short_circuited_total", &[]),
        1.0
    );
    assert_eq!(
        value(&samples, "slidegate_store_invalid_replies_total", &[]),
        0.0,
        "an unreachable Redis sends no reply at all"
    );
    let errors: f64 = ["timeout", "unavailable", "invalid_reply", "circuit_open"]
        .into_iter()
        .map(|kind| {
            value(
                &samples,
                "slidegate_store_errors_total",
                &[("store", "redis"), ("kind", kind)],
            )
        })
        .sum();
    assert_eq!(errors, 0.0, "no check was answered 503");
    assert_eq!(
        value(&samples, "slidegate_live_replicas", &[]),
        1.0,
        "never saw a heartbeat"
    );
}

#[tokio::test]
async fn a_denial_answered_from_the_deny_cache_is_counted_and_the_failover_state_is_exported() {
    let app = spawn_app(TestOptions::redis(vec![policy(
        "p",
        "sliding_log",
        1,
        "1m",
    )]))
    .await;
    let before = scrape(&app.address).await;
    assert_eq!(value(&before, "slidegate_deny_cache_hits_total", &[]), 0.0);
    assert_eq!(value(&before, "slidegate_deny_cache_keys", &[]), 0.0);

    assert_eq!(app.check("p", "hot", None).await.status, 200);
    // Redis denies and the replica remembers; then the cache answers.
    for _ in 0..3 {
        assert_eq!(app.check("p", "hot", None).await.status, 429);
    }

    let after = scrape(&app.address).await;
    assert_eq!(value(&after, "slidegate_deny_cache_hits_total", &[]), 2.0);
    assert_eq!(value(&after, "slidegate_deny_cache_full_total", &[]), 0.0);
    assert_eq!(value(&after, "slidegate_deny_cache_keys", &[]), 1.0);
    assert_eq!(
        value(
            &after,
            "slidegate_decisions_total",
            &[("policy", "p"), ("outcome", "denied")]
        ),
        3.0,
        "a cached denial is a denial"
    );
    let state = |state| value(&after, "slidegate_breaker_state", &[("state", state)]);
    assert_eq!(
        (state("closed"), state("half_open"), state("open")),
        (1.0, 0.0, 0.0)
    );
    for to in ["open", "half_open", "closed"] {
        assert_eq!(
            value(&after, "slidegate_breaker_transitions_total", &[("to", to)]),
            0.0
        );
    }
    for mode in ["open", "local", "closed"] {
        assert_eq!(
            value(
                &after,
                "slidegate_failover_decisions_total",
                &[("mode", mode)]
            ),
            0.0
        );
    }
    assert!(value(&after, "slidegate_live_replicas", &[]) >= 1.0);
}

#[tokio::test]
async fn the_embedded_store_exports_no_failover_metrics() {
    let app = spawn_app(TestOptions::memory(vec![policy("p", "gcra", 5, "1m")])).await;
    let samples = scrape(&app.address).await;
    for name in [
        "slidegate_deny_cache_keys",
        "slidegate_breaker_state",
        "slidegate_live_replicas",
        // File policies: no catalog, no version.
        "slidegate_policy_version",
        "slidegate_catalog_reloads_total",
    ] {
        assert!(samples.iter().all(|sample| sample.name != name), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_version_its_reloads_and_the_postgres_pool_are_exported() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    let before = scrape(&app.address).await;
    let reloads = |samples: &[Sample], result| {
        value(
            samples,
            "slidegate_catalog_reloads_total",
            &[("result", result)],
        )
    };
    assert!(reloads(&before, "ok") >= 1.0, "the load at start");
    assert_eq!(reloads(&before, "error"), 0.0);
    let synced = value(
        &before,
        "slidegate_catalog_last_sync_timestamp_seconds",
        &[],
    );
    assert!(synced > 1.7e9, "{synced}");
    let version = value(&before, "slidegate_policy_version", &[]);
    assert_eq!(
        value(
            &before,
            "slidegate_pool_max_connections",
            &[("pool", "postgres")]
        ),
        f64::from(
            slidegate::configuration::Settings::default()
                .postgres
                .pool_size
        )
    );

    let body = json!({ "name": "api", "algorithm": "gcra", "limit": 5, "window": "1m" });
    assert_eq!(
        app.admin(Method::POST, "/policies", Some(body))
            .await
            .status,
        201
    );
    let after = scrape(&app.address).await;
    // The write bumps the version once and this replica applies it before answering.
    assert_eq!(
        value(&after, "slidegate_policy_version", &[]),
        version + 1.0
    );
    assert!(reloads(&after, "ok") > reloads(&before, "ok"));
    assert_eq!(value(&after, "slidegate_policies", &[]), 1.0);
    for kind in ["unavailable", "database"] {
        assert_eq!(
            value(&after, "slidegate_postgres_errors_total", &[("kind", kind)]),
            0.0
        );
    }
    assert!(
        value(
            &after,
            "slidegate_pool_connections_opened_total",
            &[("pool", "postgres")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_cannot_be_loaded_counts_failed_reloads_and_postgres_errors() {
    let database = TestDatabase::create().await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.postgres_url = Some(format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        crate::private_redis::free_port(),
        database.name
    ));
    options.settings.postgres.connect_timeout = Duration::from_millis(200);
    let app = spawn_app(options).await;
    let samples = scrape(&app.address).await;
    assert!(
        value(
            &samples,
            "slidegate_catalog_reloads_total",
            &[("result", "error")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &samples,
            "slidegate_catalog_reloads_total",
            &[("result", "ok")]
        ),
        0.0
    );
    assert!(
        value(
            &samples,
            "slidegate_postgres_errors_total",
            &[("kind", "unavailable")]
        ) >= 1.0
    );
    assert_eq!(
        value(&samples, "slidegate_policy_version", &[]),
        0.0,
        "never loaded"
    );
    assert!(
        samples
            .iter()
            .all(|sample| sample.name != "slidegate_catalog_last_sync_timestamp_seconds")
    );
}

#[tokio::test]
async fn the_embedded_store_stays_within_max_keys_and_counts_what_it_forgot() {
    let mut options = TestOptions::memory(vec![policy("p", "gcra", 5, "1h")]);
    options.settings.limiter.max_keys = 100;
    let app = spawn_app(options).await;
    let before = scrape(&app.address).await;
    let embedded = [("store", "embedded")];
    assert_eq!(
        value(&before, "slidegate_memory_store_max_keys", &embedded),
        100.0
    );
    assert_eq!(
        value(&before, "slidegate_memory_store_keys", &embedded),
        0.0
    );

    for user in 0..300 {
        let reply = app.check("p", &format!("user-{user}"), None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let after = scrape(&app.address).await;
    let keys = value(&after, "slidegate_memory_store_keys", &embedded);
    assert!((90.0..=100.0).contains(&keys), "{keys}");
    let evicted = |state| {
        value(
            &after,
            "slidegate_memory_store_evicted_total",
            &[("store", "embedded"), ("state", state)],
        )
    };
    // Nothing was idle within the hour: every key forgotten was still counting.
    assert_eq!(evicted("idle"), 0.0);
    assert_eq!(evicted("active"), 300.0 - keys);
    // The newest key is held: its next check counts on from its first.
    let reply = app.check("p", "user-299", None).await;
    assert_eq!(reply.body["remaining"], 3);
    // No Redis: no local failure-mode store either.
    assert!(
        after
            .iter()
            .all(|sample| sample.labels.get("store").map(String::as_str) != Some("local"))
    );
}

#[tokio::test]
async fn the_local_failure_modes_store_stays_within_max_keys_during_an_outage() {
    let mut options =
        TestOptions::redis(vec![policy("p", "gcra", 5, "1h")]).with_production_timeouts();
    options.redis_url = Some(format!(
        "redis://127.0.0.1:{}",
        crate::private_redis::free_port()
    ));
    options.settings.limiter.failure_mode = slidegate_core::FailureMode::Local;
    options.settings.limiter.max_keys = 50;
    options.settings.redis.breaker.cool_down = Duration::from_secs(60);
    let app = spawn_app(options).await;
    for user in 0..120 {
        let reply = app.check("p", &format!("user-{user}"), None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.header("slidegate-fallback"), Some("local"));
    }
    let samples = scrape(&app.address).await;
    let local = [("store", "local")];
    assert_eq!(
        value(&samples, "slidegate_memory_store_max_keys", &local),
        50.0
    );
    let keys = value(&samples, "slidegate_memory_store_keys", &local);
    assert!((45.0..=50.0).contains(&keys), "{keys}");
    assert_eq!(
        value(
            &samples,
            "slidegate_memory_store_evicted_total",
            &[("store", "local"), ("state", "active")]
        ),
        120.0 - keys
    );
}
