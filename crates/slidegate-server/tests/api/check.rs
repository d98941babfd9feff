//! The decision API as a client sees it: statuses, bodies, headers, costs and peeks.

use crate::helpers::{TestOptions, policy, spawn_app};

#[tokio::test]
async fn admits_up_to_the_limit_then_answers_429_with_the_denial_message() {
    let app = spawn_app(TestOptions::redis(vec![policy(
        "api",
        "sliding_log",
        3,
        "1m",
    )]))
    .await;

    for expected_remaining in [2, 1, 0] {
        let reply = app.check("api", "user-42", None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["allowed"], true);
        assert_eq!(reply.body["policy"], "api");
        assert_eq!(reply.body["limit"], 3);
        assert_eq!(reply.body["remaining"], expected_remaining);
        assert_eq!(reply.body["retry_after_ms"], 0);
        assert!(reply.body.get("message").is_none());
    }

    let denied = app.check("api", "user-42", None).await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["remaining"], 0);
    assert_eq!(
        denied.body["message"],
        "Rate limit exceeded. Please try again later."
    );
    let retry_ms = denied.body["retry_after_ms"].as_u64().unwrap();
    assert!(retry_ms > 59_000 && retry_ms <= 60_000, "{retry_ms}");

    // Another key has its own budget.
    assert_eq!(app.check("api", "user-43", None).await.status, 200);
}

#[tokio::test]
async fn every_decision_carries_ratelimit_headers_in_both_dialects() {
    let app = spawn_app(TestOptions::redis(vec![policy("api", "gcra", 2, "1m")])).await;

    let allowed = app.check("api", "k", None).await;
    assert_eq!(allowed.header("ratelimit-policy"), Some("\"api\";q=2;w=60"));
    assert_eq!(allowed.header("ratelimit"), Some("\"api\";r=1;t=30"));
    assert_eq!(allowed.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(allowed.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(allowed.header("x-ratelimit-reset"), Some("30"));
    assert_eq!(allowed.header("retry-after"), None);

    app.check("api", "k", None).await;
    let denied = app.check("api", "k", None).await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("ratelimit"), Some("\"api\";r=0;t=60"));
    // One unit drains every 30 s; Retry-After is whole seconds, rounded up.
    assert_eq!(denied.header("retry-after"), Some("30"));
    let retry_ms = denied.body["retry_after_ms"].as_u64().unwrap();
    assert!(retry_ms > 29_000 && retry_ms <= 30_000, "{retry_ms}");
}

#[tokio::test]
async fn a_cost_consumes_that_many_units_or_none() {
    let app = spawn_app(TestOptions::redis(vec![policy(
        "bytes",
        "sliding_window",
        10,
        "1h",
    )]))
    .await;

    assert_eq!(app.check("bytes", "k", Some(7)).await.body["remaining"], 3);
    let too_much = app.check("bytes", "k", Some(4)).await;
    assert_eq!(too_much.status, 429);
    assert_eq!(
        too_much.body["remaining"], 3,
        "a denied cost consumes nothing"
    );
    assert_eq!(app.check("bytes", "k", Some(3)).await.status, 200);
}

#[tokio::test]
async fn a_cost_of_zero_peeks_without_consuming() {
    let app = spawn_app(TestOptions::redis(vec![policy(
        "api",
        "sliding_log",
        2,
        "1m",
    )]))
    .await;

    for _ in 0..5 {
        let peek = app.check("api", "k", Some(0)).await;
        assert_eq!(peek.status, 200);
        assert_eq!(peek.body["remaining"], 2);
    }
    app.check("api", "k", Some(2)).await;
    let peek = app.check("api", "k", Some(0)).await;
    assert_eq!(
        peek.status, 429,
        "a peek says whether one more unit would pass"
    );
    assert_eq!(peek.body["remaining"], 0);
}

#[tokio::test]
async fn the_embedded_store_answers_the_same_api() {
    let app = spawn_app(TestOptions::memory(vec![policy(
        "api",
        "sliding_log",
        1,
        "1m",
    )]))
    .await;
    assert_eq!(app.check("api", "k", None).await.status, 200);
    let denied = app.check("api", "k", None).await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after"), Some("60"));
}
