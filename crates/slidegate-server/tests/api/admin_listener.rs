//! `server.admin_bind`: the admin API and `/metrics` only on the operators' listener, health on both, checks only on the public one.

use reqwest::Method;

use crate::helpers::{TestApp, TestDatabase, TestOptions, policy, spawn_app, unique_prefix};

async fn get(app: &TestApp, base: &str, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(format!("{base}{path}"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("the request reaches the app");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn is_not_found(status: u16, body: &str) -> bool {
    status == 404
        && serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|body| body["error"] == "not_found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_listener_the_admin_api_and_metrics_are_served_only_there_and_health_on_both()
{
    let database = TestDatabase::create().await;
    let mut options = TestOptions::catalog(&database, &unique_prefix());
    options.settings.server.admin_bind = Some("127.0.0.1:9090".into());
    let app = spawn_app(options).await;
    let public = app.address.clone();
    let admin = app.admin_listener().to_owned();
    assert_ne!(public, admin);

    // The admin API: on the admin listener only (TestApp::admin goes there).
    let created = app
        .admin(
            Method::POST,
            "/policies",
            Some(
                serde_json::json!({"name": "api", "algorithm": "gcra", "limit": 5, "window": "1m"}),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let (status, body) = get(&app, &admin, "/v1/admin/policies").await;
    assert_eq!(status, 200, "{body}");
    for path in ["/v1/admin/policies", "/v1/admin/keys", "/metrics"] {
        let (status, body) = get(&app, &public, path).await;
        assert!(
            is_not_found(status, &body),
            "public {path}: {status} {body}"
        );
    }
    let refused = app
        .client
        .post(format!("{public}/v1/admin/policies"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(
            &serde_json::json!({"name": "sneaky", "algorithm": "gcra", "limit": 5, "window": "1m"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404, "no write through the public side");

    // Metrics: on the admin listener, and they count the public side's checks.
    assert_eq!(app.check("api", "k", None).await.status, 200);
    let (status, metrics) = get(&app, &admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("slidegate_decisions_total{policy=\"api\",outcome=\"allowed\"} 1"),
        "{metrics}"
    );

    // Health on both; checks only on the public side.
    for base in [&public, &admin] {
        assert_eq!(get(&app, base, "/health/live").await.0, 200, "{base}");
        let (status, body) = get(&app, base, "/health/ready").await;
        assert_eq!(status, 200, "{base}: {body}");
    }
    let check_on_admin = app
        .client
        .post(format!("{admin}/v1/check"))
        .json(&serde_json::json!({"policy": "api", "key": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(check_on_admin.status(), 404);
    let (status, body) = get(&app, &admin, "/v1/forward-auth").await;
    assert!(is_not_found(status, &body), "{status} {body}");
}

#[tokio::test]
async fn without_an_admin_listener_metrics_stay_on_the_one_listener() {
    let app = spawn_app(TestOptions::memory(vec![policy("p", "gcra", 5, "1m")])).await;
    assert!(app.admin_address.is_none());
    let (status, metrics) = get(&app, &app.address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("slidegate_build_info"), "{metrics}");
}
