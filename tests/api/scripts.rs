//! The Lua scripts against real Redis: reloading after NOSCRIPT, expiry of every key, hash tags, argument checks.

use redis::AsyncCommands;

use crate::helpers::{TestOptions, policy, redis_connection, spawn_app, unique_prefix};

/// Every key under `prefix`, found with SCAN (never KEYS on a shared server).
async fn keys_under(prefix: &str) -> Vec<String> {
    let mut connection = redis_connection().await;
    let mut keys: Vec<String> = Vec::new();
    let mut iter: redis::AsyncIter<String> =
        connection.scan_match(format!("{prefix}*")).await.unwrap();
    while let Some(key) = iter.next_item().await {
        keys.push(key.unwrap());
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn a_check_after_script_flush_still_decides_correctly() {
    let app = spawn_app(TestOptions::redis(vec![
        policy("log", "sliding_log", 3, "1m"),
        policy("window", "sliding_window", 3, "1m"),
        policy("bucket", "gcra", 3, "1m"),
    ]))
    .await;
    let mut redis = redis_connection().await;
    for name in ["log", "window", "bucket"] {
        assert_eq!(app.check(name, "k", None).await.body["remaining"], 2);
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut redis)
            .await
            .unwrap();
        let after_flush = app.check(name, "k", None).await;
        assert_eq!(after_flush.status, 200, "{name}: {:?}", after_flush.body);
        assert_eq!(
            after_flush.body["remaining"], 1,
            "{name}: state survived the flush"
        );
    }
    // The scripts are loaded again: Redis holds every SHA that readiness lists.
    for name in ["log", "window", "bucket"] {
        app.check(name, "again", None).await;
    }
    let ready = app.get("/health/ready").await;
    for algorithm in ["sliding_log", "sliding_window", "gcra"] {
        let sha = ready.body["checks"]["limiter"]["algorithms"][algorithm]
            .as_str()
            .unwrap()
            .to_owned();
        let exists: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(exists, vec![true], "{algorithm} was not reloaded");
    }
}

#[tokio::test]
async fn every_key_the_scripts_write_expires_close_to_its_window() {
    let options = TestOptions::redis(vec![
        policy("log", "sliding_log", 5, "30s"),
        policy("window", "sliding_window", 5, "30s"),
        policy("bucket", "gcra", 5, "30s"),
    ]);
    let prefix = options.key_prefix.clone();
    let app = spawn_app(options).await;
    for name in ["log", "window", "bucket"] {
        app.check(name, "user-1", Some(2)).await;
    }
    let keys = keys_under(&prefix).await;
    assert_eq!(
        keys,
        vec![
            format!("{prefix}{{bucket:user-1}}:gcra"),
            format!("{prefix}{{log:user-1}}:log"),
            format!("{prefix}{{log:user-1}}:seq"),
            format!("{prefix}{{window:user-1}}:sw"),
        ],
        "keys carry the {{policy:key}} hash tag"
    );
    let mut redis = redis_connection().await;
    for key in keys {
        let ttl_ms: i64 = redis.pttl(&key).await.unwrap();
        // The two-counter window keeps its count through the next window.
        let ceiling = if key.ends_with(":sw") { 60_000 } else { 30_000 };
        assert!(
            ttl_ms > 0 && ttl_ms <= ceiling,
            "{key} has PTTL {ttl_ms} ms, expected 0 < ttl <= {ceiling}"
        );
    }
}

#[tokio::test]
async fn peeks_and_denials_write_nothing_new() {
    let options = TestOptions::redis(vec![policy("log", "sliding_log", 1, "30s")]);
    let prefix = options.key_prefix.clone();
    let app = spawn_app(options).await;
    app.check("log", "peeker", Some(0)).await;
    assert!(keys_under(&prefix).await.is_empty());
}

#[tokio::test]
async fn scripts_refuse_calls_with_the_wrong_keys_or_arguments() {
    let mut redis = redis_connection().await;
    let prefix = unique_prefix();
    for (source, keys) in [
        (include_str!("../../lua/sliding_log.lua"), 2),
        (include_str!("../../lua/sliding_window.lua"), 1),
        (include_str!("../../lua/gcra.lua"), 1),
    ] {
        let script = redis::Script::new(source);
        // One key too few, and a negative cost.
        let mut missing = script.prepare_invoke();
        for index in 0..keys - 1 {
            missing.key(format!("{prefix}{{t}}:{index}"));
        }
        missing.arg(1_000_000).arg(5).arg(1);
        let error = missing
            .invoke_async::<redis::Value>(&mut redis)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("expected"), "{error}");

        let mut negative = script.prepare_invoke();
        for index in 0..keys {
            negative.key(format!("{prefix}{{t}}:{index}"));
        }
        negative.arg(1_000_000).arg(5).arg(-1);
        let error = negative
            .invoke_async::<redis::Value>(&mut redis)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid"), "{error}");
    }
    assert!(keys_under(&prefix).await.is_empty());
}
