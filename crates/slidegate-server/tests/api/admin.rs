//! The admin API on a real Postgres, a fresh database per test: auth, policy CRUD, validation, API keys, shadow mode.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestDatabase, TestOptions, spawn_app, unique_prefix};
use crate::metrics::{parse_exposition, value};

fn policy_body(name: &str, limit: u64) -> Value {
    json!({ "name": name, "algorithm": "sliding_log", "limit": limit, "window": "1m" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token() {
    let database = TestDatabase::create().await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.admin_token = None;
    let app = spawn_app(options).await;
    let reply = app.admin(Method::GET, "/policies", None).await;
    assert_eq!(reply.status, 404, "{:?}", reply.body);
    assert_eq!(reply.body["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_without_the_right_token_are_refused_counted_and_told_nothing() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    let wrong = "test-admin-token-0123456788";
    for token in [None, Some(wrong), Some("")] {
        let reply = app
            .admin_as(token, Method::POST, "/policies", Some(policy_body("p", 5)))
            .await;
        assert_eq!(reply.status, 401, "{token:?}: {:?}", reply.body);
        assert_eq!(reply.body["error"], "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(!reply.body.to_string().contains(wrong));
    }
    // Basic is not Bearer, even with the right secret.
    let basic = app
        .client
        .get(format!("{}/v1/admin/policies", app.address))
        .header(
            "Authorization",
            format!("Basic {}", crate::helpers::ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    let samples = parse_exposition(&metrics.text().await.unwrap());
    assert_eq!(
        value(
            &samples,
            "slidegate_auth_failures_total",
            &[("endpoint", "admin")]
        ),
        4.0
    );
    // Nothing was written.
    let listed = app.admin(Method::GET, "/policies", None).await;
    assert_eq!(listed.body["policies"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_created_read_listed_replaced_and_deleted_and_decide_checks_at_once() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    assert_eq!(
        app.check("api", "k", None).await.status,
        422,
        "no policy yet"
    );

    let mut body = policy_body("api", 2);
    body["match"] =
        json!({ "methods": ["GET", "POST"], "path_prefix": "/v1/", "host": "api.example.com" });
    body["description"] = json!("two a minute");
    let created = app
        .admin(Method::POST, "/policies", Some(body.clone()))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.header("location"), Some("/v1/admin/policies/api"));
    assert_eq!(created.body["window"], "1m");
    assert_eq!(created.body["match"]["host"], "api.example.com");
    assert_eq!(created.body["enabled"], true);
    let first_version = created.body["version"].as_i64().unwrap();

    let again = app.admin(Method::POST, "/policies", Some(body)).await;
    assert_eq!(again.status, 409, "{:?}", again.body);

    // In force on this replica as soon as the write is acknowledged.
    assert_eq!(app.check("api", "k", None).await.status, 200);
    assert_eq!(app.check("api", "k", None).await.status, 200);
    assert_eq!(app.check("api", "k", None).await.status, 429);

    let fetched = app.admin(Method::GET, "/policies/api", None).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["description"], "two a minute");
    let listed = app.admin(Method::GET, "/policies", None).await;
    assert_eq!(listed.body["policies"].as_array().unwrap().len(), 1);

    let replaced = app
        .admin(
            Method::PUT,
            "/policies/api",
            Some(json!({ "algorithm": "sliding_log", "limit": 5, "window": "1m" })),
        )
        .await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert!(replaced.body["version"].as_i64().unwrap() > first_version);
    assert_eq!(
        replaced.body["match"]["methods"],
        json!([]),
        "PUT replaces everything"
    );
    let reply = app.check("api", "k", None).await;
    assert_eq!((reply.status, reply.body["limit"].as_u64()), (200, Some(5)));

    let missing = app
        .admin(Method::PUT, "/policies/nope", Some(policy_body("nope", 1)))
        .await;
    assert_eq!(missing.status, 404);

    let deleted = app.admin(Method::DELETE, "/policies/api", None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        app.admin(Method::GET, "/policies/api", None).await.status,
        404
    );
    assert_eq!(
        app.admin(Method::DELETE, "/policies/api", None)
            .await
            .status,
        404
    );
    let reply = app.check("api", "k", None).await;
    assert_eq!(
        (reply.status, &reply.body["error"]),
        (422, &json!("unknown_policy"))
    );
    // The deleted policy's series are gone: labels stay bounded by the policies that exist.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(!text.contains("policy=\"api\""), "{text}");
    assert!(text.contains("slidegate_policies 0\n"), "{text}");

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["checks"]["postgres"]["ok"], true);
    assert_eq!(ready.body["checks"]["limiter"]["source"], "database");
    assert_eq!(ready.body["checks"]["limiter"]["policies"], 0);
    assert!(
        ready.body["checks"]["limiter"]["policy_version"]
            .as_i64()
            .unwrap()
            >= 3
    );
    assert!(ready.body["checks"]["limiter"]["last_sync"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_refused_with_the_config_files_messages() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    let with = |change: Value| {
        let mut body = policy_body("ok", 5);
        for (field, value) in change.as_object().unwrap() {
            body[field] = value.clone();
        }
        body
    };
    let cases = [
        (
            with(json!({"name": "a:b"})),
            "name",
            "name must be 1 to 64 characters",
        ),
        (
            with(json!({"algorithm": "leaky"})),
            "algorithm",
            "unknown algorithm \"leaky\"",
        ),
        (
            with(json!({"limit": 0})),
            "limit",
            "limit must be between 1 and 100000 (got 0)",
        ),
        (
            with(json!({"limit": 100_001})),
            "limit",
            "limit must be between 1 and 100000",
        ),
        (
            with(json!({"algorithm": "gcra", "limit": 1_000_000_001u64})),
            "limit",
            "limit must be between 1 and 1000000000",
        ),
        (
            with(json!({"window": "soon"})),
            "window",
            "invalid window \"soon\"",
        ),
        (
            with(json!({"window": "25h"})),
            "window",
            "window must be between 1ms and 24h (got \"25h\")",
        ),
        (
            with(json!({"window": "1500us"})),
            "window",
            "whole number of milliseconds",
        ),
        (
            with(json!({"cost": 6})),
            "cost",
            "default cost must be between 0 and the limit 5 (got 6)",
        ),
        (
            with(json!({"match": {"methods": ["G3T"]}})),
            "match.methods",
            "\"G3T\" is not an HTTP method",
        ),
        (
            with(json!({"match": {"path_prefix": "/v1?debug"}})),
            "match.path_prefix",
            "no control characters, '?' or '#'",
        ),
        (
            with(json!({"match": {"path_prefix": "v1"}})),
            "match.path_prefix",
            "must start with '/'",
        ),
        (
            with(json!({"match": {"host": "Bad Host"}})),
            "match.host",
            "must be a host name such as",
        ),
        (
            with(json!({"key": ["ip"]})),
            "key",
            "unknown key part \"ip\"",
        ),
        (with(json!({"key": []})), "key", "at least one part"),
        (
            with(json!({"description": "x".repeat(1025)})),
            "description",
            "at most 1024",
        ),
    ];
    for (body, field, message) in cases {
        let reply = app
            .admin(Method::POST, "/policies", Some(body.clone()))
            .await;
        assert_eq!(reply.status, 422, "{body}: {:?}", reply.body);
        assert_eq!(reply.body["error"], "invalid_policy", "{body}");
        assert_eq!(reply.body["field"], field, "{body}: {:?}", reply.body);
        let text = reply.body["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text:?} lacks {message:?}");
    }

    // The same words as the config file's error for the same mistake.
    let config = slidegate_core::PolicySpec {
        name: "ok".into(),
        algorithm: "sliding_log".into(),
        limit: 5,
        window: "25h".into(),
        cost: 1,
        matches: None,
        key: None,
        failure_mode: None,
    }
    .to_policy(slidegate_core::FailureMode::Closed)
    .unwrap_err()
    .1
    .to_string();
    let reply = app
        .admin(
            Method::POST,
            "/policies",
            Some(with(json!({"window": "25h"}))),
        )
        .await;
    assert_eq!(reply.body["message"], config);

    let unknown = app
        .admin(Method::POST, "/policies", Some(with(json!({"burst": 3}))))
        .await;
    assert_eq!(
        (unknown.status, &unknown.body["error"]),
        (422, &json!("invalid_request"))
    );
    let renamed = app
        .admin(Method::PUT, "/policies/other", Some(policy_body("ok", 5)))
        .await;
    assert_eq!(
        (renamed.status, &renamed.body["field"]),
        (422, &json!("name"))
    );
    let no_name = app
        .admin(
            Method::POST,
            "/policies",
            Some(json!({"algorithm": "gcra", "limit": 5, "window": "1m"})),
        )
        .await;
    assert_eq!(
        (no_name.status, &no_name.body["field"]),
        (422, &json!("name"))
    );
    assert_eq!(
        app.admin(Method::GET, "/policies", None).await.body["policies"],
        json!([]),
        "nothing invalid was stored"
    );

    // And what the file accepts, the admin API accepts, kept normalised: the
    // same validator (the core's) judges both.
    let accepted = app
        .admin(
            Method::POST,
            "/policies",
            Some(json!({
                "name": "superset", "algorithm": "gcra", "limit": 5, "window": "1m",
                "match": {
                    "methods": ["get", "GET"],
                    "host": "*.Example.com:8443",
                    "path_prefix": format!("/{}", "a".repeat(1023)),
                },
            })),
        )
        .await;
    assert_eq!(accepted.status, 201, "{:?}", accepted.body);
    assert_eq!(accepted.body["match"]["methods"], json!(["GET"]));
    assert_eq!(accepted.body["match"]["host"], "*.example.com:8443");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_listed_without_secrets_and_count_per_tenant() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    app.admin(Method::POST, "/policies", Some(policy_body("api", 2)))
        .await;

    let created = app
        .admin(Method::POST, "/keys", Some(json!({ "tenant": "acme" })))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let key = created.body["key"].as_str().unwrap().to_owned();
    let prefix = created.body["prefix"].as_str().unwrap();
    assert!(key.starts_with("sg_") && key.starts_with(prefix) && prefix.len() < 16);

    let listed = app.admin(Method::GET, "/keys", None).await;
    let text = listed.body.to_string();
    assert!(
        !text.contains(&key[prefix.len()..]),
        "the list leaks the key: {text}"
    );
    assert!(listed.body["keys"][0].get("key").is_none());
    assert_eq!(listed.body["keys"][0]["tenant"], "acme");
    let stored: Vec<u8> = database
        .client()
        .await
        .query_one("SELECT key_hash FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32, "a SHA-256 digest, not the key");

    // The tenant's "bob" and the unscoped "bob" (or "acme/bob") are counted apart.
    assert_eq!(app.check_with_key("api", "bob", &key).await.status, 200);
    assert_eq!(app.check_with_key("api", "bob", &key).await.status, 200);
    assert_eq!(app.check_with_key("api", "bob", &key).await.status, 429);
    assert_eq!(app.check("api", "bob", None).await.status, 200);
    assert_eq!(app.check("api", "acme/bob", None).await.status, 200);
    let via_header = app
        .client
        .post(format!("{}/v1/check", app.address))
        .header("X-API-Key", &key)
        .json(&json!({ "policy": "api", "key": "bob" }))
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 429, "X-API-Key is the same tenant");
    // One rule for every front end: X-API-Key first, then a Bearer token;
    // a credential header without a usable key is refused, not ignored.
    let presenting = |headers: Vec<(&'static str, String)>| {
        let mut request = app
            .client
            .post(format!("{}/v1/check", app.address))
            .json(&json!({ "policy": "api", "key": "bob" }));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        presenting(vec![
            ("X-API-Key", key.clone()),
            ("Authorization", "Basic dXNlcjpwYXNz".into())
        ])
        .await,
        429,
        "X-API-Key wins over an Authorization meant for something else"
    );
    for malformed in [
        vec![("Authorization", "Basic dXNlcjpwYXNz".to_owned())],
        vec![("Authorization", "Bearer ".to_owned())],
        vec![("X-API-Key", " ".to_owned())],
        vec![("X-API-Key", "k".repeat(257))],
    ] {
        assert_eq!(presenting(malformed.clone()).await, 401, "{malformed:?}");
    }

    for wrong in ["sg_0000", "not-a-key"] {
        let reply = app.check_with_key("api", "bob", wrong).await;
        assert_eq!(
            (reply.status, &reply.body["error"]),
            (401, &json!("invalid_api_key"))
        );
        assert!(!reply.body.to_string().contains(wrong));
    }
    let bad_tenant = app
        .admin(Method::POST, "/keys", Some(json!({ "tenant": "a b" })))
        .await;
    assert_eq!(
        (bad_tenant.status, &bad_tenant.body["field"]),
        (422, &json!("tenant"))
    );
    let bad_override = app
        .admin(
            Method::POST,
            "/keys",
            Some(json!({ "tenant": "t", "overrides": { "api": 100_001 } })),
        )
        .await;
    assert_eq!(
        (bad_override.status, &bad_override.body["field"]),
        (422, &json!("overrides.api"))
    );
    let unknown_policy = app
        .admin(
            Method::POST,
            "/keys",
            Some(json!({ "tenant": "t", "overrides": { "nope": 1 } })),
        )
        .await;
    assert_eq!(unknown_policy.status, 422);
    assert_eq!(
        app.admin(Method::GET, "/keys", None).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a refused key leaves nothing behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_policy_is_counted_but_never_denies() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    let mut body = policy_body("trial", 1);
    body["shadow"] = json!(true);
    assert_eq!(
        app.admin(Method::POST, "/policies", Some(body))
            .await
            .status,
        201
    );

    let first = app.check("trial", "k", None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["shadow_decision"], "allowed");
    assert_eq!(first.header("slidegate-shadow-decision"), Some("allowed"));
    let second = app.check("trial", "k", None).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.body["allowed"], true);
    assert_eq!(second.body["shadow_decision"], "denied");
    assert_eq!(second.header("slidegate-shadow-decision"), Some("denied"));
    assert!(second.header("retry-after").is_none());

    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    let samples = parse_exposition(&metrics.text().await.unwrap());
    let count = |outcome| {
        value(
            &samples,
            "slidegate_decisions_total",
            &[("policy", "trial"), ("outcome", outcome)],
        )
    };
    // The would-be denial is counted apart from the denials clients got.
    assert_eq!(
        (count("allowed"), count("denied"), count("shadow")),
        (1.0, 0.0, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_an_api_key_nor_the_admin_token_ever_reaches_the_logs() {
    let database = TestDatabase::create().await;
    let replica = crate::helpers::Replica::spawn(
        "",
        &[
            ("SLIDEGATE__POSTGRES__URL", database.url.clone()),
            (
                "SLIDEGATE__ADMIN__TOKEN",
                crate::helpers::ADMIN_TOKEN.to_owned(),
            ),
            // Everything, dependencies' debug output included.
            ("RUST_LOG", "debug".to_owned()),
        ],
    )
    .await;
    let app = crate::helpers::TestApp {
        address: replica.address.clone(),
        admin_address: replica.admin_address.clone(),
        envoy_address: None,
        client: replica.client.clone(),
    };
    app.admin(Method::POST, "/policies", Some(policy_body("api", 5)))
        .await;
    let created = app
        .admin(Method::POST, "/keys", Some(json!({ "tenant": "acme" })))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(app.check_with_key("api", "k", &key).await.status, 200);
    app.admin(Method::POST, &format!("/keys/{id}/revoke"), None)
        .await;
    assert_eq!(app.check_with_key("api", "k", &key).await.status, 401);
    replica
        .wait_for_log("the revocation to be logged", |line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.contains("API key revoked"))
        })
        .await;
    let logs = serde_json::to_string(&replica.logs()).unwrap();
    assert!(logs.contains("API key created"), "the audit line is there");
    assert!(!logs.contains(&key[12..]), "the key leaked into the logs");
    assert!(
        !logs.contains(crate::helpers::ADMIN_TOKEN),
        "the admin token leaked into the logs"
    );
}
