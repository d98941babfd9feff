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

#[tokio::test]
async fn keys_with_nul_other_control_characters_or_del_are_refused_naming_the_byte() {
    let app = app().await;
    for byte in (0u8..0x20).chain([0x7F]) {
        let key = format!("user{}x", char::from(byte));
        let reply = app.check("api", &key, None).await;
        assert_error(
            &reply,
            422,
            "invalid_key",
            &format!("control character 0x{byte:02X} at byte 4"),
        );
    }
    // JSON's own escape for NUL, as a client library writes it.
    let reply = app
        .post_raw(
            "application/json",
            r#"{"policy": "api", "key": "a\u0000b"}"#,
        )
        .await;
    assert_error(&reply, 422, "invalid_key", "0x00");
    // Printable text, whatever the script, is a key.
    for key in ["user@example.com", "日本語", "emoji-🦀", "with space"] {
        assert_eq!(app.check("api", key, None).await.status, 200, "{key:?}");
    }
}

/// A replica whose forward-auth counts per `X-User` header, per API key and per address.
async fn forward_auth_app() -> TestApp {
    let mut by_header = policy("by-header", "gcra", 1000, "1m");
    by_header.matches = Some(slidegate_core::MatchSpec {
        path_prefix: Some("/".into()),
        ..Default::default()
    });
    by_header.key = Some(vec!["header:x-user".into()]);
    let mut by_key = policy("by-key", "gcra", 1000, "1m");
    by_key.matches = by_header.matches.clone();
    by_key.key = Some(vec!["api_key".into(), "client_ip".into()]);
    spawn_app(TestOptions::redis(vec![by_header, by_key])).await
}

#[tokio::test]
async fn forward_auth_turns_header_values_with_control_characters_into_decisions_not_errors() {
    let app = forward_auth_app().await;
    // What an HTTP client can put in a header value: tab and bytes 0x80-0xFF
    // (obs-text, not UTF-8). Values that read as text are digested, so the
    // key is always valid; the others count as absent (the policy keyed on
    // them does not apply, as for a request without the header).
    let values: [(&[u8], bool); 4] = [
        (b"a\tb", true),
        (b"\xff\xfe", false),
        (b"caf\xe9", false),
        (b"\t", false),
    ];
    for (value, applies) in values {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        let reply = app
            .client
            .get(format!("{}/v1/forward-auth", app.address))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api%00/x%0a%7f")
            .header("x-user", value.clone())
            .header("x-api-key", value.clone())
            .send()
            .await
            .unwrap();
        let reply = crate::helpers::read_reply(reply).await;
        assert_eq!(reply.status, 200, "{value:?}: {:?}", reply.body);
        assert_eq!(reply.body["allowed"], true, "{value:?}");
        assert_eq!(
            !reply.body["policy"].is_null(),
            applies,
            "{value:?}: {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn a_header_with_a_nul_byte_is_refused_by_the_http_parser_before_forward_auth_runs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = forward_auth_app().await;
    let address = app.address.trim_start_matches("http://");
    for value in [&b"a\x00b"[..], b"a\x01b", b"a\x7fb", b"a\x1bb"] {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut request =
            b"GET /v1/forward-auth HTTP/1.1\r\nHost: t\r\nX-Forwarded-Uri: /\r\nX-User: ".to_vec();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{value:?}: {response:?}"
        );
    }
    // The replica is unharmed and answers the same request without the byte.
    let reply = app.forward_auth("GET", "/", &[("x-user", "ab")]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}
