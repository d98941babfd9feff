//! The Lua scripts against real Redis: reloading after NOSCRIPT, expiry of every key, hash tags, argument checks.

use redis::AsyncCommands;

use std::time::Duration;

use slidegate_core::{Algorithm, LimiterKey, Store};

use crate::helpers::{TestOptions, eventually, policy, redis_connection, spawn_app, unique_prefix};
use crate::limit_changes::{self, store_with_prefix};
use crate::private_redis::PrivateRedis;

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
    // SCRIPT FLUSH on a Redis of its own: on the shared one it lands between
    // another test's reload and its EVALSHA, and that check fails NOSCRIPT.
    let private = PrivateRedis::start();
    let mut options = TestOptions::redis(vec![
        policy("log", "sliding_log", 3, "1m"),
        policy("window", "sliding_window", 3, "1m"),
        policy("bucket", "gcra", 3, "1m"),
    ]);
    options.redis_url = Some(private.url());
    let app = spawn_app(options).await;
    let mut redis = private.connection().await;
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
        let reply = app.check(name, "user-1", Some(2)).await;
        assert_eq!(reply.status, 200, "{name}: {:?}", reply.body);
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
            format!("{prefix}{{log:user-1}}:wlog"),
            format!("{prefix}{{replicas}}"),
            format!("{prefix}{{window:user-1}}:sw"),
        ],
        "keys carry the {{policy:key}} hash tag, and the replicas key its own"
    );
    let mut redis = redis_connection().await;
    // What each algorithm keeps per key (the memory column of docs/algorithms.md's
    // table): a sorted-set entry per admission instant, or a small fixed hash.
    let entries: u64 = redis
        .zcard(format!("{prefix}{{log:user-1}}:wlog"))
        .await
        .unwrap();
    assert_eq!(
        entries, 1,
        "one entry for the cost-2 check, not one per unit"
    );
    let window_fields: u64 = redis
        .hlen(format!("{prefix}{{window:user-1}}:sw"))
        .await
        .unwrap();
    assert_eq!(window_fields, 3);
    let bucket_fields: u64 = redis
        .hlen(format!("{prefix}{{bucket:user-1}}:gcra"))
        .await
        .unwrap();
    assert_eq!(bucket_fields, 4, "level, time, and the rate it drains at");
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
    let script = redis::Script::new(include_str!("../../../slidegate-redis/lua/heartbeat.lua"));
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
        (
            include_str!("../../../slidegate-redis/lua/sliding_log.lua"),
            2,
            limiter_args,
        ),
        (
            include_str!("../../../slidegate-redis/lua/sliding_window.lua"),
            1,
            limiter_args,
        ),
        (
            include_str!("../../../slidegate-redis/lua/gcra.lua"),
            1,
            limiter_args,
        ),
        (
            include_str!("../../../slidegate-redis/lua/heartbeat.lua"),
            1,
            &[7, 1_000_000],
        ),
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

#[tokio::test]
async fn a_sliding_log_check_takes_one_entry_of_redis_memory_whatever_its_cost() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix);
    let limit = slidegate_core::policy::MAX_SLIDING_LOG_LIMIT;
    let policy = limit_changes::policy(Algorithm::SlidingLog, limit, Duration::from_secs(3600));
    let mut redis = redis_connection().await;
    let mut usage = Vec::new();
    for (key, cost) in [("one", 1), ("all", limit)] {
        let outcome = store
            .check(&policy, LimiterKey::parse(key).unwrap(), cost)
            .await
            .unwrap();
        assert!(outcome.allowed, "{key}");
        let log = format!("{prefix}{{changed:{key}}}:wlog");
        let entries: u64 = redis.zcard(&log).await.unwrap();
        assert_eq!(entries, 1, "{key}: one entry per check, not per unit");
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&log)
            .query_async(&mut redis)
            .await
            .unwrap();
        usage.push(bytes);
    }
    // The member spells the units out: "<time>:1" against "<time>:100000".
    assert!(usage[1] <= usage[0] + 16, "MEMORY USAGE {usage:?}");
}

#[tokio::test]
async fn a_lowered_gcra_limit_keeps_the_hash_until_it_has_drained_at_the_new_rate() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix);
    let hour = Duration::from_secs(3600);
    let key = LimiterKey::parse("k").unwrap();
    let hash = format!("{prefix}{{changed:k}}:gcra");
    let mut redis = redis_connection().await;
    // 50 units at 100 per hour: empty in 30 minutes.
    let old = limit_changes::policy(Algorithm::Gcra, 100, hour);
    assert!(store.check(&old, key, 50).await.unwrap().allowed);
    let ttl_ms: i64 = redis.pttl(&hash).await.unwrap();
    assert!((1_790_000..=1_800_000).contains(&ttl_ms), "PTTL {ttl_ms}");
    // At 10 per hour the same 50 units take 5 hours; the denied check says so,
    // and the hash now lives that long instead of forgetting them after 30 minutes.
    let new = limit_changes::policy(Algorithm::Gcra, 10, hour);
    let denied = store.check(&new, key, 0).await.unwrap();
    assert!(!denied.allowed);
    assert!(denied.reset_after_us > 17_990_000_000, "{denied:?}");
    let ttl_ms: i64 = redis.pttl(&hash).await.unwrap();
    assert!((17_990_000..=18_000_000).contains(&ttl_ms), "PTTL {ttl_ms}");
    // A later check at the same limit writes nothing more.
    assert!(!store.check(&new, key, 1).await.unwrap().allowed);
    let again: i64 = redis.pttl(&hash).await.unwrap();
    assert!(again <= ttl_ms, "PTTL {again} after {ttl_ms}");
}

#[tokio::test]
async fn sliding_log_drops_exactly_the_entries_that_left_the_window_however_many() {
    // Redis's clock cannot be moved, so the log is written by hand, relative
    // to Redis TIME: `gone` entries older than the window, `live` ones inside
    // it, with units 1, 2, 3, 1, 2, 3, ... and cumulative scores.
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix);
    let hour_us: u64 = 3_600_000_000;
    let policy = limit_changes::policy(Algorithm::SlidingLog, 100_000, Duration::from_secs(3600));
    let mut redis = redis_connection().await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let now = seconds * 1_000_000 + micros;
    for gone in [0u64, 1, 2, 3, 5, 8, 13, 64, 100] {
        for live in [0u64, 1, 5] {
            let key = format!("g{gone}-l{live}");
            let log = format!("{prefix}{{changed:{key}}}:wlog");
            let (mut score, mut live_units) = (0, 0);
            for index in 0..gone + live {
                let units = index % 3 + 1;
                score += units;
                let at = if index < gone {
                    now - 2 * hour_us + index * 1_000
                } else {
                    live_units += units;
                    now - hour_us / 2 + index * 1_000
                };
                let _: () = redis
                    .zadd(&log, format!("{at}:{units}"), score)
                    .await
                    .unwrap();
            }
            let _: () = redis.pexpire(&log, 60_000).await.unwrap();
            let peek = store
                .check(&policy, LimiterKey::parse(&key).unwrap(), 0)
                .await
                .unwrap();
            assert_eq!(peek.remaining, 100_000 - live_units, "{key}");
            let entries: u64 = redis.zcard(&log).await.unwrap();
            assert_eq!(entries, live, "{key}: the entries that left are gone");
            if live > 0 {
                // One unit more than remains: the oldest live entry must leave.
                let denied = store
                    .check(
                        &policy,
                        LimiterKey::parse(&key).unwrap(),
                        100_000 - live_units + 1,
                    )
                    .await
                    .unwrap();
                assert!(!denied.allowed, "{key}");
                let oldest_live = now - hour_us / 2 + gone * 1_000;
                let retry_at = oldest_live + hour_us;
                assert!(
                    denied.retry_after_us <= retry_at - now
                        && denied.retry_after_us + 5_000_000 > retry_at - now,
                    "{key}: {denied:?}"
                );
            }
        }
    }
}
