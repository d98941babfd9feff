//! Live catalog updates across replicas on a real Postgres: propagation, overrides and revocation, an outage, concurrent start.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    CheckReply, TestApp, TestDatabase, TestOptions, eventually, spawn_app, unique_prefix,
};

/// The promise: a change through any replica is in force on every replica within a second.
const PROPAGATION: Duration = Duration::from_secs(1);

fn policy_body(name: &str, limit: u64) -> serde_json::Value {
    json!({ "name": name, "algorithm": "sliding_log", "limit": limit, "window": "1m" })
}

/// Two replicas on one database and one Redis key prefix.
async fn two_replicas(database: &TestDatabase) -> (TestApp, TestApp) {
    let prefix = unique_prefix();
    let a = spawn_app(TestOptions::catalog(database, &prefix)).await;
    let b = spawn_app(TestOptions::catalog(database, &prefix)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_created_changed_and_deleted_through_one_replica_decides_at_the_other_within_a_second()
 {
    let database = TestDatabase::create().await;
    let (a, b) = two_replicas(&database).await;

    let created = a
        .admin(Method::POST, "/policies", Some(policy_body("api", 3)))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let reply = b
        .eventually(
            "the new policy at the other replica",
            PROPAGATION,
            || b.check("api", "k1", Some(0)),
            |reply| reply.status == 200,
        )
        .await;
    assert_eq!(reply.body["limit"], 3);

    let replaced = a
        .admin(Method::PUT, "/policies/api", Some(policy_body("api", 7)))
        .await;
    assert_eq!(replaced.status, 200);
    b.eventually(
        "the new limit at the other replica",
        PROPAGATION,
        || b.check("api", "k2", Some(0)),
        |reply| reply.body["limit"] == 7,
    )
    .await;

    assert_eq!(
        a.admin(Method::DELETE, "/policies/api", None).await.status,
        204
    );
    b.eventually(
        "the deletion at the other replica",
        PROPAGATION,
        || b.check("api", "k3", None),
        |reply| reply.status == 422 && reply.body["error"] == "unknown_policy",
    )
    .await;
}

/// Forward-auth for `POST /orders/1`, as user `user` (`X-User`) when given.
async fn orders(replica: &TestApp, user: Option<&str>) -> CheckReply {
    let headers: Vec<(&str, &str)> = user.map(|user| ("x-user", user)).into_iter().collect();
    replica
        .forward_auth("POST", "/orders/1?x=1", &headers)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_follows_the_catalogs_match_rules_and_keys_on_every_replica() {
    let database = TestDatabase::create().await;
    let (a, b) = two_replicas(&database).await;

    // A policy without match conditions limits `/v1/check` only.
    let plain = a
        .admin(Method::POST, "/policies", Some(policy_body("plain", 1)))
        .await;
    assert_eq!(plain.status, 201, "{:?}", plain.body);
    assert_eq!(plain.body["key"], json!(["client_ip"]), "the default key");

    let mut body = policy_body("orders", 2);
    body["match"] = json!({ "methods": ["POST"], "path_prefix": "/orders" });
    let created = a.admin(Method::POST, "/policies", Some(body)).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let first = b
        .eventually(
            "the new rule at the other replica",
            PROPAGATION,
            || orders(&b, None),
            |reply| reply.body["policy"] == "orders",
        )
        .await;
    assert_eq!(
        (first.status, first.body["remaining"].as_u64()),
        (200, Some(1))
    );
    assert_eq!(orders(&b, None).await.status, 200);
    let denied = orders(&a, None).await;
    assert_eq!(
        denied.status, 429,
        "shared across replicas: {:?}",
        denied.body
    );
    assert!(denied.header("retry-after").is_some());
    // Not covered: another method, another path.
    for (method, uri) in [("GET", "/orders/1"), ("POST", "/ordersx")] {
        let reply = b.forward_auth(method, uri, &[]).await;
        assert_eq!(
            (reply.status, &reply.body["policy"]),
            (200, &json!(null)),
            "{method} {uri}"
        );
    }

    // A new key spec: counted per `X-User`; a request without it is not covered.
    let mut body = policy_body("orders", 1);
    body["match"] = json!({ "path_prefix": "/orders" });
    body["key"] = json!(["header:x-user"]);
    let replaced = a.admin(Method::PUT, "/policies/orders", Some(body)).await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert_eq!(replaced.body["key"], json!(["header:x-user"]));
    b.eventually(
        "the new key at the other replica",
        PROPAGATION,
        || orders(&b, Some("alice")),
        |reply| reply.status == 200 && reply.body["limit"] == 1,
    )
    .await;
    assert_eq!(orders(&b, Some("alice")).await.status, 429);
    assert_eq!(orders(&b, Some("bob")).await.status, 200);
    let anonymous = orders(&b, None).await;
    assert_eq!(
        (anonymous.status, &anonymous.body["policy"]),
        (200, &json!(null))
    );

    // Deleted: nothing matches, and no match allows by default.
    assert_eq!(
        a.admin(Method::DELETE, "/policies/orders", None)
            .await
            .status,
        204
    );
    b.eventually(
        "the deletion at the other replica",
        PROPAGATION,
        || orders(&b, Some("alice")),
        |reply| reply.status == 200 && reply.body["policy"].is_null(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_changes_the_admitted_count_and_a_revoked_key_is_refused_on_every_replica() {
    let database = TestDatabase::create().await;
    let (a, b) = two_replicas(&database).await;
    a.admin(Method::POST, "/policies", Some(policy_body("api", 2)))
        .await;
    let created = a
        .admin(
            Method::POST,
            "/keys",
            Some(json!({ "tenant": "acme", "overrides": { "api": 4 } })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_i64().unwrap();

    b.eventually(
        "the key at the other replica",
        PROPAGATION,
        || b.check_with_key("api", "peek", &key),
        |reply| reply.status == 200,
    )
    .await;
    let mut admitted = 0;
    for _ in 0..6 {
        if b.check_with_key("api", "user", &key).await.status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "the tenant's override, not the policy's 2");
    // Without the key, the policy's own limit.
    let plain: Vec<u16> = [
        a.check("api", "user", None).await.status,
        a.check("api", "user", None).await.status,
        a.check("api", "user", None).await.status,
    ]
    .into();
    assert_eq!(plain, [200, 200, 429]);

    // A lower override through the other replica takes effect for a fresh key.
    let lowered = b
        .admin(
            Method::PUT,
            &format!("/keys/{id}/overrides"),
            Some(json!({ "overrides": { "api": 1 } })),
        )
        .await;
    assert_eq!(lowered.status, 200, "{:?}", lowered.body);
    a.eventually(
        "the lowered override",
        PROPAGATION,
        || a.check_with_key("api", "fresh", &key),
        |reply| reply.body["limit"] == 1,
    )
    .await;

    let revoked = a
        .admin(Method::POST, &format!("/keys/{id}/revoke"), None)
        .await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body["revoked_at"].is_string());
    for replica in [&a, &b] {
        replica
            .eventually(
                "the revocation",
                PROPAGATION,
                || replica.check_with_key("api", "user", &key),
                |reply| reply.status == 401,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_keeps_deciding_and_catches_up_after_reconnecting() {
    let database = TestDatabase::create().await;
    let proxy = FaultProxy::start(5432).await;
    let prefix = unique_prefix();
    let direct = spawn_app(TestOptions::catalog(&database, &prefix)).await;
    let mut through_proxy = TestOptions::catalog(&database, &prefix);
    through_proxy.postgres_url = Some(format!(
        "postgres://postgres@{}/{}",
        proxy.address(),
        database.name
    ));
    let cut_off = spawn_app(through_proxy).await;

    direct
        .admin(Method::POST, "/policies", Some(policy_body("before", 100)))
        .await;
    cut_off
        .eventually(
            "the first policy",
            PROPAGATION,
            || cut_off.check("before", "k", Some(0)),
            |reply| reply.status == 200,
        )
        .await;

    proxy.cut();
    let ready = cut_off
        .eventually(
            "readiness to show Postgres failing",
            Duration::from_secs(5),
            || cut_off.get("/health/ready"),
            |reply| reply.body["checks"]["postgres"]["ok"] == false,
        )
        .await;
    assert_eq!(
        ready.status, 200,
        "a loaded replica stays ready: {:?}",
        ready.body
    );
    assert!(ready.body["checks"]["postgres"]["error"].is_string());
    for _ in 0..3 {
        assert_eq!(cut_off.check("before", "k", None).await.status, 200);
    }
    let refused = cut_off
        .admin(Method::POST, "/policies", Some(policy_body("lost", 1)))
        .await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "catalog_unavailable");
    assert!(
        !refused.body["message"]
            .as_str()
            .unwrap()
            .contains("postgres://"),
        "{:?}",
        refused.body
    );

    // Changed meanwhile, through the replica that still reaches Postgres.
    assert_eq!(
        direct
            .admin(Method::POST, "/policies", Some(policy_body("during", 100)))
            .await
            .status,
        201
    );
    assert_eq!(
        direct
            .admin(Method::GET, "/policies/lost", None)
            .await
            .status,
        404,
        "the refused write left nothing"
    );
    assert_eq!(cut_off.check("during", "k", None).await.status, 422);

    proxy.restore();
    cut_off
        .eventually(
            "the change made during the outage",
            Duration::from_secs(5),
            || cut_off.check("during", "k", Some(0)),
            |reply| reply.status == 200,
        )
        .await;
    let ready = cut_off.get("/health/ready").await;
    assert_eq!(
        ready.body["checks"]["postgres"]["ok"], true,
        "{:?}",
        ready.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_loaded_policies_is_not_ready() {
    let database = TestDatabase::create().await;
    let proxy = FaultProxy::start(5432).await;
    proxy.cut();
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.postgres_url = Some(format!(
        "postgres://postgres@{}/{}",
        proxy.address(),
        database.name
    ));
    let app = spawn_app(options).await;
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["checks"]["limiter"]["ok"], false);

    proxy.restore();
    app.eventually(
        "readiness once Postgres answers",
        Duration::from_secs(5),
        || app.get("/health/ready"),
        |reply| reply.status == 200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_started_together_on_an_empty_database_migrate_once_and_become_ready() {
    let database = TestDatabase::create().await;
    let prefix = unique_prefix();
    let (a, b, c) = tokio::join!(
        spawn_app(TestOptions::catalog(&database, &prefix)),
        spawn_app(TestOptions::catalog(&database, &prefix)),
        spawn_app(TestOptions::catalog(&database, &prefix)),
    );
    for replica in [&a, &b, &c] {
        let ready = replica.get("/health/ready").await;
        assert_eq!(ready.status, 200, "{:?}", ready.body);
        assert_eq!(ready.body["checks"]["limiter"]["policy_version"], 0);
    }
    let client = database.client().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM slidegate_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 2, "every migration, each applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_to_start_on_a_schema_newer_than_it_understands() {
    let database = TestDatabase::create().await;
    let _first = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    database
        .client()
        .await
        .execute(
            "INSERT INTO slidegate_schema_history (version, name) VALUES (999, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    let mut settings = slidegate::configuration::Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.postgres.url = Some(database.url.clone().into());
    let error = slidegate::startup::Application::build(settings.validate().unwrap())
        .await
        .err()
        .expect("start-up is refused");
    let message = error.to_string();
    assert!(message.contains("newer than this build"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_asks_for_tls_gets_tls_with_the_certificate_verified() {
    // The local server offers TLS with a self-signed certificate: a replica
    // that asks for TLS must try it and refuse the unverifiable certificate,
    // rather than fall back to plain text.
    let database = TestDatabase::create().await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.postgres_url = Some(format!("{}?sslmode=require", database.url));
    let app = spawn_app(options).await;
    // The reason under test, past a probe that ran out of time on a loaded
    // machine (a true answer too, but not this one).
    let ready = app
        .eventually(
            "readiness to say the certificate was refused",
            Duration::from_secs(10),
            || app.get("/health/ready"),
            |reply| {
                reply.body["checks"]["postgres"]["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("TLS") || error.contains("certificate"))
            },
        )
        .await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_catalog_version_applied_is_logged_once_with_its_policy_count() {
    let database = TestDatabase::create().await;
    let replica = crate::helpers::Replica::spawn(
        // Reloads every 200 ms: the same version reloaded must not be logged again.
        "[postgres]\nresync_interval = \"200ms\"\n",
        &[
            ("SLIDEGATE__POSTGRES__URL", database.url.clone()),
            (
                "SLIDEGATE__ADMIN__TOKEN",
                crate::helpers::ADMIN_TOKEN.to_owned(),
            ),
        ],
    )
    .await;
    let applied = |line: &serde_json::Value| line["message"] == "catalog applied";
    let first = replica.wait_for_log("the catalog at start", applied).await;
    assert_eq!(first["policies"], 0, "{first}");
    let version = first["version"].as_i64().unwrap();

    let app = TestApp {
        address: replica.address.clone(),
        admin_address: replica.admin_address.clone(),
        envoy_address: None,
        client: replica.client.clone(),
    };
    assert_eq!(
        app.admin(Method::POST, "/policies", Some(policy_body("api", 5)))
            .await
            .status,
        201
    );
    let next = replica
        .wait_for_log("the new version", |line| {
            applied(line) && line["version"] == version + 1
        })
        .await;
    assert_eq!(next["policies"], 1, "{next}");
    assert_eq!(next["previous_version"], version, "{next}");
    // The writer's reload, the notification's and several periodic ones of
    // the same version must not log it again: wait until three more reloads
    // have completed (counted in /metrics), then count the lines.
    let reloads = || async {
        let samples = crate::metrics::scrape(&replica.address).await;
        crate::metrics::value(
            &samples,
            "slidegate_catalog_reloads_total",
            &[("result", "ok")],
        )
    };
    let after_write = reloads().await;
    eventually(
        Duration::from_secs(10),
        "three periodic reloads",
        || async { (reloads().await >= after_write + 3.0).then_some(()) },
    )
    .await;
    let logged: Vec<_> = replica
        .logs()
        .into_iter()
        .filter(|line| applied(line))
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
}

#[tokio::test]
async fn a_reload_never_replaces_a_newer_catalog_version_with_an_older_one() {
    use slidegate::store::MemoryStore;
    use slidegate_catalog::{Catalog, CatalogOptions, CatalogUpdate};
    use slidegate_core::{Bundle, Limiter, PolicySet, SystemClock};
    // Building a catalog connects to nothing: apply only compares versions.
    let catalog = Catalog::new(CatalogOptions {
        url: "postgres://postgres@127.0.0.1:1/none".into(),
        pool_size: 1,
        connect_timeout: Duration::from_millis(100),
        statement_timeout: Duration::from_millis(100),
        resync_interval: Duration::from_secs(60),
    })
    .unwrap();
    let limiter = Limiter::awaiting_bundle(
        MemoryStore::new(Arc::new(SystemClock)),
        slidegate_core::unobserved(),
    );
    let update = |version: i64, policies: &[&str]| CatalogUpdate {
        bundle: Bundle {
            policies: PolicySet::new(policies.iter().map(|name| {
                crate::helpers::policy(name, "gcra", 5, "1m")
                    .to_policy(slidegate_core::FailureMode::Closed)
                    .unwrap()
            }))
            .unwrap(),
            ..Bundle::default()
        },
        version,
    };
    let apply = |version, policies| {
        catalog.apply(update(version, policies), |bundle| limiter.replace(bundle))
    };
    assert!(apply(7, &["a", "b"]));
    // Two reloads that finished out of order: the older one arrives last.
    assert!(!apply(6, &["a"]));
    let synced = catalog.synced();
    assert_eq!((synced.version, synced.policies), (Some(7), 2));
    assert_eq!(
        limiter.policies().len(),
        2,
        "the older bundle was not put in force"
    );
    assert!(apply(8, &["c"]));
    let synced = catalog.synced();
    assert_eq!((synced.version, synced.policies), (Some(8), 1));
    assert!(limiter.policies().get("c").is_some());
}
