//! Bad input gets a 4xx with `{"error", "message"}`: never a 500, never a panic.

use crate::helpers::{TestApp, TestOptions, policy, spawn_app};

async fn app() -> TestApp {
    spawn_app(TestOptions::redis(vec![policy(
        "api",
        "sliding_log",
        5,
        "1m",
    )]))
    .await
}

#[track_caller]
fn assert_error(reply: &crate::helpers::CheckReply, status: u16, code: &str, mentions: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.body["error"], code, "{:?}", reply.body);
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "message {message:?} does not mention {mentions:?}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = app().await;
    for body in ["{", "not json", "{\"policy\": \"api\",}", ""] {
        let reply = app.post_raw("application/json", body).await;
        assert_error(&reply, 400, "malformed_json", "JSON");
    }
}

#[tokio::test]
async fn missing_or_mistyped_fields_are_named() {
    let app = app().await;
    let cases = [
        (serde_json::json!({"key": "k"}), "policy"),
        (serde_json::json!({"policy": "api"}), "key"),
        (serde_json::json!({"policy": "api", "key": 7}), "string"),
        (
            serde_json::json!({"policy": "api", "key": "k", "cost": -1}),
            "-1",
        ),
        (
            serde_json::json!({"policy": "api", "key": "k", "cost": 1.5}),
            "1.5",
        ),
        (
            serde_json::json!({"policy": "api", "key": "k", "cots": 1}),
            "cots",
        ),
        (serde_json::json!(["api", "k"]), "struct"),
    ];
    for (body, mentions) in cases {
        let reply = app.post_check(body).await;
        assert_error(&reply, 422, "invalid_request", mentions);
    }
}

#[tokio::test]
async fn an_unknown_policy_is_named() {
    let app = app().await;
    let reply = app.check("nope", "k", None).await;
    assert_error(&reply, 422, "unknown_policy", "nope");
}

#[tokio::test]
async fn empty_and_oversized_keys_are_refused() {
    let app = app().await;
    assert_error(
        &app.check("api", "", None).await,
        422,
        "invalid_key",
        "empty",
    );
    assert_error(
        &app.check("api", &"k".repeat(257), None).await,
        422,
        "invalid_key",
        "257 bytes",
    );
    // Exactly 256 bytes is a valid key.
    assert_eq!(app.check("api", &"k".repeat(256), None).await.status, 200);
}

#[tokio::test]
async fn a_cost_that_can_never_fit_is_an_error_not_a_denial() {
    let app = app().await;
    let reply = app.check("api", "k", Some(6)).await;
    assert_error(&reply, 422, "cost_exceeds_limit", "limit of 5");
    let reply = app.check("api", "k", Some(u64::MAX)).await;
    assert_error(&reply, 422, "cost_exceeds_limit", "never");
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_a_413() {
    let app = app().await;
    let huge = format!("{{\"policy\":\"api\",\"key\":\"{}\"}}", "k".repeat(10_000));
    let reply = app.post_raw("application/json", huge).await;
    assert_error(&reply, 413, "payload_too_large", "4096 bytes");
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_a_415() {
    let app = app().await;
    let body = "{\"policy\":\"api\",\"key\":\"k\"}";
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let reply = app.post_raw(content_type, body).await;
        assert_error(&reply, 415, "unsupported_media_type", "application/json");
    }
    // Parameters on the media type are fine.
    let reply = app.post_raw("application/json; charset=utf-8", body).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let app = app().await;
    let reply = app.get("/v2/nothing").await;
    assert_error(&reply, 404, "not_found", "route");
    let reply = app.get("/v1/check").await;
    assert_error(&reply, 405, "method_not_allowed", "method");
}
