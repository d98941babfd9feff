//! The Lua scripts against real Redis: reloading after NOSCRIPT, expiry of every key, hash tags, argument checks.

use redis::AsyncCommands;

use std::time::Duration;

use crate::helpers::{TestOptions, eventually, policy, redis_connection, spawn_app, unique_prefix};

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
    eventually(Duration::from_secs(5), "a first heartbeat", || async {
        (app.limiter_health().await["counters"]["heartbeats"] != 0).then_some(())
    })
    .await;
    let keys = keys_under(&prefix).await;
    assert_eq!(
        keys,
        vec![
            format!("{prefix}{{bucket:user-1}}:gcra"),
            format!("{prefix}{{log:user-1}}:log"),
            format!("{prefix}{{log:user-1}}:seq"),
            format!("{prefix}{{replicas}}"),
            format!("{prefix}{{window:user-1}}:sw"),
        ],
        "keys carry the {{policy:key}} hash tag, and the replicas key its own"
    );
    let mut redis = redis_connection().await;
    // What each algorithm keeps per key (the memory column of the README's
    // table): a sorted-set member per admitted unit, or a small fixed hash.
    let units: u64 = redis
        .zcard(format!("{prefix}{{log:user-1}}:log"))
        .await
        .unwrap();
    assert_eq!(units, 2, "one member per unit of the cost-2 check");
    let window_fields: u64 = redis
        .hlen(format!("{prefix}{{window:user-1}}:sw"))
        .await
        .unwrap();
    assert_eq!(window_fields, 3);
    let bucket_fields: u64 = redis
        .hlen(format!("{prefix}{{bucket:user-1}}:gcra"))
        .await
        .unwrap();
    assert_eq!(bucket_fields, 2);
    for key in keys {
        let ttl_ms: i64 = redis.pttl(&key).await.unwrap();
        // The two-counter window keeps its count through the next window; a
        // replica counts as live for three heartbeat periods (1 s by default).
        let ceiling = if key.ends_with(":sw") {
            60_000
        } else if key.ends_with("{replicas}") {
            3_000
        } else {
            30_000
        };
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
    let keys = keys_under(&prefix).await;
    assert!(
        keys.iter().all(|key| key.ends_with("{replicas}")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn the_heartbeat_script_counts_live_replicas_and_forgets_silent_ones() {
    let mut redis = redis_connection().await;
    let key = format!("{}{{replicas}}", unique_prefix());
    let script = redis::Script::new(include_str!("../../lua/heartbeat.lua"));
    let beat = |replica: &'static str, stale_after_us: u64| {
        let mut invocation = script.prepare_invoke();
        invocation.key(&key).arg(replica).arg(stale_after_us);
        invocation
    };
    let minute = 60_000_000;
    assert_eq!(
        beat("a", minute)
            .invoke_async::<u64>(&mut redis)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        beat("b", minute)
            .invoke_async::<u64>(&mut redis)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        beat("a", minute)
            .invoke_async::<u64>(&mut redis)
            .await
            .unwrap(),
        2,
        "a beats again"
    );
    let ttl_ms: i64 = redis.pttl(&key).await.unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 60_000, "PTTL {ttl_ms}");

    // With a 1 ms horizon, only the replica beating now is live.
    let mut redis_again = redis.clone();
    eventually(Duration::from_secs(2), "a and b go stale", || {
        let invocation = beat("c", 1_000);
        let mut redis = redis_again.clone();
        async move { (invocation.invoke_async::<u64>(&mut redis).await.unwrap() == 1).then_some(()) }
    })
    .await;
    let members: Vec<String> = redis_again.zrange(&key, 0, -1).await.unwrap();
    assert_eq!(members, vec!["c".to_owned()]);
}

#[tokio::test]
async fn scripts_refuse_calls_with_the_wrong_keys_or_arguments() {
    let mut redis = redis_connection().await;
    let prefix = unique_prefix();
    // Each script with valid arguments; the last one is made negative below.
    let limiter_args: &[i64] = &[1_000_000, 5, 1];
    for (source, keys, args) in [
        (include_str!("../../lua/sliding_log.lua"), 2, limiter_args),
        (
            include_str!("../../lua/sliding_window.lua"),
            1,
            limiter_args,
        ),
        (include_str!("../../lua/gcra.lua"), 1, limiter_args),
        (include_str!("../../lua/heartbeat.lua"), 1, &[7, 1_000_000]),
    ] {
        let script = redis::Script::new(source);
        // One key too few, and a negative last argument (cost, stale_after).
        let mut missing = script.prepare_invoke();
        for index in 0..keys - 1 {
            missing.key(format!("{prefix}{{t}}:{index}"));
        }
        for arg in args {
            missing.arg(*arg);
        }
        let error = missing
            .invoke_async::<redis::Value>(&mut redis)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("expected"), "{error}");

        let mut negative = script.prepare_invoke();
        for index in 0..keys {
            negative.key(format!("{prefix}{{t}}:{index}"));
        }
        let (last, rest) = args.split_last().unwrap();
        for arg in rest {
            negative.arg(*arg);
        }
        negative.arg(-last);
        let error = negative
            .invoke_async::<redis::Value>(&mut redis)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid"), "{error}");
    }
    assert!(keys_under(&prefix).await.is_empty());
}
