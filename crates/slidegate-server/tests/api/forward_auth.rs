//! `/v1/forward-auth` on a real replica: paths with encoded slashes stay under their prefix, and keys of any length decide.

use reqwest::Method;
use serde_json::json;

use slidegate_core::{MatchSpec, PolicySpec};

use crate::helpers::{TestApp, TestDatabase, TestOptions, policy, spawn_app, unique_prefix};

/// A file policy that limits forwarded requests under `prefix` to `limit` a minute per `key`.
fn rule(name: &str, limit: u64, prefix: &str, key: &[String]) -> PolicySpec {
    PolicySpec {
        matches: Some(MatchSpec {
            path_prefix: Some(prefix.into()),
            ..MatchSpec::default()
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

/// A `GET` to `path` on the replica with only `headers`: how a gateway that
/// is not configured like nginx calls.
async fn raw(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> crate::helpers::CheckReply {
    let mut request = app.client.get(format!("{}{path}", app.address));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    crate::helpers::read_reply(request.send().await.unwrap()).await
}

#[tokio::test]
async fn every_matching_policy_must_admit_and_a_refused_request_consumes_none_in_either_order() {
    let client_ip = vec!["client_ip".to_owned()];
    let app = spawn_app(TestOptions::redis(vec![
        rule("strict-a", 1, "/a", &client_ip),
        rule("loose-a", 5, "/a", &client_ip),
        rule("loose-b", 5, "/b", &client_ip),
        rule("strict-b", 1, "/b", &client_ip),
    ]))
    .await;
    // What a file policy counts for this client: its address, as the peer.
    let key = "ip=127.0.0.1";
    let remaining = |policy: &'static str| {
        let app = &app;
        async move { app.check(policy, key, Some(0)).await.body["remaining"].clone() }
    };

    // Both allow: the answer is the tightest policy's.
    let first = app.forward_auth("GET", "/a/x", &[]).await;
    assert_eq!(
        (first.status, &first.body["policy"]),
        (200, &json!("strict-a"))
    );
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"strict-a\";q=1;w=60")
    );
    // The first policy denies: the other is not consumed.
    let denied = app.forward_auth("GET", "/a/x", &[]).await;
    assert_eq!(
        (denied.status, &denied.body["policy"]),
        (429, &json!("strict-a"))
    );
    assert!(denied.header("retry-after").is_some());
    assert_eq!(remaining("loose-a").await, json!(4));

    // The looser policy first: it would admit, but the request is refused
    // by the strict one, so it is not consumed either (all or nothing).
    assert_eq!(app.forward_auth("GET", "/b/x", &[]).await.status, 200);
    let denied = app.forward_auth("GET", "/b/x", &[]).await;
    assert_eq!(
        (denied.status, &denied.body["policy"]),
        (429, &json!("strict-b"))
    );
    assert_eq!(remaining("loose-b").await, json!(4));
}

#[tokio::test]
async fn the_protected_request_is_read_from_the_forwarded_headers_or_from_envoys_path() {
    let mut api = rule("api", 100, "/api", &["client_ip".to_owned()]);
    api.matches = Some(MatchSpec {
        methods: vec!["POST".into()],
        path_prefix: Some("/api".into()),
        host: Some("*.example.com".into()),
    });
    let app = spawn_app(TestOptions::redis(vec![api])).await;
    let policy_of =
        |reply: &crate::helpers::CheckReply| (reply.status, reply.body["policy"].clone());
    let api = (200, json!("api"));
    let none = (200, json!(null));

    let host = ("x-forwarded-host", "shop.example.com:8443");
    assert_eq!(
        policy_of(
            &app.forward_auth("POST", "/api/orders?page=2", &[host])
                .await
        ),
        api
    );
    // Every condition must hold: the method, the host (without port), the path.
    assert_eq!(
        policy_of(&app.forward_auth("GET", "/api/orders", &[host]).await),
        none
    );
    let apex = ("x-forwarded-host", "example.com");
    assert_eq!(
        policy_of(&app.forward_auth("POST", "/api/orders", &[apex]).await),
        none
    );
    assert_eq!(
        policy_of(&app.forward_auth("POST", "/apix", &[host]).await),
        none
    );

    // X-Original-URI (nginx's $request_uri) stands in for X-Forwarded-Uri.
    let original = raw(
        &app,
        "/v1/forward-auth",
        &[
            ("x-forwarded-method", "POST"),
            ("x-original-uri", "/api/orders"),
            host,
        ],
    )
    .await;
    assert_eq!(policy_of(&original), api);

    // Envoy's ext_authz: the original method, the path after /v1/forward-auth, Host.
    let envoy = app
        .client
        .post(format!("{}/v1/forward-auth/api/orders", app.address))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(policy_of(&crate::helpers::read_reply(envoy).await), api);

    // No path to judge at all.
    let missing = raw(&app, "/v1/forward-auth", &[("x-forwarded-method", "GET")]).await;
    assert_eq!(
        (missing.status, &missing.body["error"]),
        (400, &json!("missing_forwarded_uri"))
    );
}

#[tokio::test]
async fn with_no_match_deny_a_request_no_policy_covers_is_a_403() {
    let mut options = TestOptions::redis(vec![rule("api", 5, "/api", &["client_ip".to_owned()])]);
    options.settings.forward_auth.no_match = slidegate_core::rules::NoMatch::Deny;
    let app = spawn_app(options).await;
    assert_eq!(app.forward_auth("GET", "/api/x", &[]).await.status, 200);
    let refused = app.forward_auth("GET", "/elsewhere", &[]).await;
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (403, &json!("no_matching_policy"))
    );
}

#[tokio::test]
async fn a_matching_request_gets_503_while_the_store_cannot_decide() {
    let mut options = TestOptions::redis(vec![rule("api", 5, "/api", &["client_ip".to_owned()])])
        .with_production_timeouts();
    options.redis_url = Some(format!(
        "redis://127.0.0.1:{}",
        crate::private_redis::free_port()
    ));
    let app = spawn_app(options).await;
    let reply = app.forward_auth("GET", "/api/x", &[]).await;
    assert_eq!(
        (reply.status, &reply.body["error"]),
        (503, &json!("limiter_unavailable"))
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    // A request no policy covers does not need the store.
    assert_eq!(app.forward_auth("GET", "/public", &[]).await.status, 200);
}

#[tokio::test]
async fn a_shadow_policy_that_would_deny_neither_stops_nor_answers_for_the_enforced_ones() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    // Catalog rules are checked by policy name: the shadow one comes first.
    for (name, limit, shadow) in [("a-shadow", 1, true), ("b-enforced", 3, false)] {
        let created = app
            .admin(
                Method::POST,
                "/policies",
                Some(json!({
                    "name": name, "algorithm": "sliding_log", "limit": limit, "window": "1h",
                    "match": { "path_prefix": "/api" }, "shadow": shadow,
                })),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        let reply = app.forward_auth("GET", "/api/orders", &[]).await;
        answers.push((
            reply.status,
            reply.body["policy"].as_str().unwrap_or_default().to_owned(),
            reply.header("slidegate-shadow-decision").map(str::to_owned),
        ));
    }
    // From the second request on the shadow policy would deny; the enforced
    // one is still checked (and counted) on every request and answers, so
    // clients never see the shadow's "0 remaining" and the fourth is denied
    // by the limit that is enforced.
    let enforced = |status| (status, "b-enforced".to_owned(), None);
    assert_eq!(
        answers,
        [enforced(200), enforced(200), enforced(200), enforced(429)]
    );
}
