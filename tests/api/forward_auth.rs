//! `/v1/forward-auth` on a real replica: paths with encoded slashes stay under their prefix, and keys of any length decide.

use reqwest::Method;
use serde_json::json;

use slidegate::configuration::{MatchSettings, PolicySettings};

use crate::helpers::{TestApp, TestDatabase, TestOptions, policy, spawn_app, unique_prefix};

/// A file policy that limits forwarded requests under `prefix` to `limit` a minute per `key`.
fn rule(name: &str, limit: u64, prefix: &str, key: &[String]) -> PolicySettings {
    PolicySettings {
        matches: Some(MatchSettings {
            path_prefix: Some(prefix.into()),
            ..MatchSettings::default()
        }),
        key: Some(key.to_vec()),
        ..policy(name, "sliding_log", limit, "1m")
    }
}

/// Four header parts of the longest name allowed (32 bytes): the joined key
/// is 303 bytes, over the 256-byte key limit.
fn long_header_names() -> Vec<String> {
    (0..4)
        .map(|index| format!("x-{}-{index}", "a".repeat(28)))
        .collect()
}

fn long_key_spec() -> Vec<String> {
    long_header_names()
        .iter()
        .map(|name| format!("header:{name}"))
        .collect()
}

/// `GET /v1/forward-auth` for `/api/orders` with every long header set to `value`;
/// the (status, policy) it answers.
async fn with_long_headers(app: &TestApp, value: &str) -> (u16, serde_json::Value) {
    let names = long_header_names();
    let headers: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), value)).collect();
    let reply = app.forward_auth("GET", "/api/orders", &headers).await;
    (reply.status, reply.body["policy"].clone())
}

#[tokio::test]
async fn an_encoded_slash_never_takes_a_request_out_from_under_its_rule() {
    let client_ip = vec!["client_ip".to_owned()];
    let app = spawn_app(TestOptions::redis(vec![
        rule("api", 1, "/api", &client_ip),
        rule("public", 100, "/public", &client_ip),
    ]))
    .await;
    // Routers that keep %2F inside its segment (most) see this under /api:
    // `..` is resolved on real separators only.
    let escape = "/api/x%2F..%2F..%2Fpublic";
    let first = app.forward_auth("GET", escape, &[]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let second = app.forward_auth("GET", escape, &[]).await;
    assert_eq!(
        (second.status, &second.body["policy"]),
        (429, &json!("api")),
        "the /api rule counted both"
    );
    // A server that decodes %2F into a separator routes this to /api/orders:
    // covered too (and already over the limit).
    let reverse = app
        .forward_auth("GET", "/public%2F..%2Fapi/orders", &[])
        .await;
    assert_eq!(
        (reverse.status, &reverse.body["policy"]),
        (429, &json!("api"))
    );
    // A plain request under /public is not counted by /api.
    let public = app.forward_auth("GET", "/public/page", &[]).await;
    assert_eq!(
        (public.status, &public.body["policy"]),
        (200, &json!("public"))
    );
}

#[tokio::test]
async fn a_file_rule_keyed_by_four_long_headers_decides_instead_of_answering_422() {
    let app = spawn_app(TestOptions::redis(vec![rule(
        "tenants",
        2,
        "/api",
        &long_key_spec(),
    )]))
    .await;
    let tenants = json!("tenants");
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (200, tenants.clone())
    );
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (200, tenants.clone())
    );
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (429, tenants.clone())
    );
    // Other header values are another counter.
    assert_eq!(with_long_headers(&app, "globex").await, (200, tenants));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_rule_keyed_by_four_long_headers_decides_instead_of_answering_422() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    let created = app
        .admin(
            Method::POST,
            "/policies",
            Some(json!({
                "name": "tenants", "algorithm": "gcra", "limit": 2, "window": "1m",
                "match": { "path_prefix": "/api" },
                "key": long_key_spec(),
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    // The replica that wrote reloads before answering: the rule is in force.
    let tenants = json!("tenants");
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (200, tenants.clone())
    );
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (200, tenants.clone())
    );
    assert_eq!(
        with_long_headers(&app, "acme").await,
        (429, tenants.clone())
    );
    assert_eq!(with_long_headers(&app, "globex").await, (200, tenants));
}
