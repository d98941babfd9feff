//! Limits that change under a used key (lowered, raised, a tenant's override lowered or gone) and a rolling upgrade of `sliding_log`'s layout.
//!
//! A key holding more than its new limit is a full key: 429 with `remaining`
//! 0, never a failure. The property tests vary (units held, old limit, new
//! limit, cost, elapsed time): the embedded store with a fake clock covers
//! time; Redis, whose clock a test cannot move, is compared with it at
//! elapsed 0 over windows far longer than the test.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;
use slidegate::store::{MemoryStore, RedisOptions, RedisStore};
use slidegate_core::{Algorithm, Clock, FakeClock, LimiterKey, Policy, PolicyName, Store, Window};

use crate::helpers::{
    CheckReply, TestApp, TestDatabase, TestOptions, read_reply, redis_connection, redis_url,
    spawn_app, unique_prefix,
};
use crate::store_contract::{assert_steps_same_on_both_stores, window_for};

const MS: u64 = 1_000;
const HOUR_US: u64 = 3_600_000_000;

/// A policy named `changed`: the same state whatever its limit.
pub fn policy(algorithm: Algorithm, limit: u64, window: Duration) -> Policy {
    Policy::new(
        PolicyName::parse("changed").unwrap(),
        algorithm,
        limit,
        Window::try_from(window).unwrap(),
        1,
    )
    .unwrap()
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::SlidingLog),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::Gcra),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Fill a key under one limit, let time pass, check it under another.
    #[test]
    fn a_changed_limit_decides_by_the_new_limit_and_its_retry_after_holds(
        algorithm in algorithm(),
        window_ms in 1u64..60_000,
        old_limit in 1u64..100,
        fills in prop::collection::vec((0u64..5_000_000, 0u64..100), 0..40),
        elapsed in 0u64..120_000_000,
        new_limit in 1u64..100,
        cost in 0u64..100,
    ) {
        let window = window_ms * MS;
        let old = policy(algorithm, old_limit, Duration::from_millis(window_ms));
        let new = policy(algorithm, new_limit, Duration::from_millis(window_ms));
        let clock = FakeClock::default();
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let key = LimiterKey::parse("k").unwrap();
        let mut admitted = Vec::new();
        for (gap, fill) in fills {
            clock.advance(Duration::from_micros(gap));
            let fill = fill.min(old_limit);
            if store.decide(&old, key, fill).allowed && fill > 0 {
                admitted.push((clock.now(), fill));
            }
        }
        clock.advance(Duration::from_micros(elapsed));
        let now = clock.now();
        let (cost, need) = (cost.min(new_limit), cost.min(new_limit).max(1));

        // What the key holds, as its old limit sees it (a peek changes
        // nothing): more than old - remaining - 1, at most old - remaining.
        let old_remaining = store.decide(&old, key, 0).remaining;
        let held_above = (old_limit - old_remaining).checked_sub(1);

        let outcome = store.decide(&new, key, cost);
        prop_assert!(outcome.remaining <= new_limit, "{outcome:?}");
        if old_limit + need <= new_limit {
            prop_assert!(outcome.allowed, "a raised limit admits at once: {outcome:?}");
        }
        if held_above.is_some_and(|held_above| held_above >= new_limit) {
            prop_assert!(!outcome.allowed, "{outcome:?}");
            prop_assert_eq!(outcome.remaining, 0, "a key over its limit is a full key");
        }
        if algorithm == Algorithm::SlidingLog {
            let held: u64 = admitted
                .iter()
                .filter(|&&(at, _)| at + window > now)
                .map(|&(_, units)| units)
                .sum();
            prop_assert_eq!(held, old_limit - old_remaining);
            prop_assert_eq!(outcome.allowed, held + need <= new_limit);
            let consumed = if outcome.allowed { cost } else { 0 };
            prop_assert_eq!(outcome.remaining, new_limit.saturating_sub(held + consumed));
        }
        if outcome.allowed {
            prop_assert_eq!(outcome.retry_after_us, 0);
        } else {
            let retry = outcome.retry_after_us;
            prop_assert!(outcome.remaining < need, "{outcome:?}");
            prop_assert!(retry >= 1);
            prop_assert!(outcome.reset_after_us + 1 >= retry, "{outcome:?}");
            // The same check, at the new limit, is denied just before
            // retry_after and admitted at it, also after the store swept
            // what it thinks is idle. gcra and sliding_window round a
            // floating-point instant up: one microsecond either side.
            let (early, late) = if algorithm == Algorithm::SlidingLog { (1, 0) } else { (2, 1) };
            if retry > early {
                clock.set(now + retry - early);
                store.evict_idle();
                let before = store.decide(&new, key, cost);
                prop_assert!(!before.allowed, "admitted {early} us before retry_after {retry}");
            }
            clock.set(now + retry + late);
            store.evict_idle();
            let at = store.decide(&new, key, cost);
            prop_assert!(at.allowed, "denied at retry_after {retry}: {at:?}");
        }
    }
}

proptest! {
    // Each case is a few dozen round-trips to the shared Redis.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The same changed-limit traffic decided alike by Redis and the embedded store.
    #[test]
    fn redis_and_the_embedded_store_decide_a_changed_limit_alike(
        algorithm in algorithm(),
        old_limit in 1u64..60,
        fills in prop::collection::vec(0u64..60, 0..10),
        new_limit in 1u64..60,
        cost in 0u64..60,
    ) {
        let window = Window::parse(window_for(algorithm)).unwrap();
        let old = policy(algorithm, old_limit, window.as_duration());
        let new = policy(algorithm, new_limit, window.as_duration());
        let mut steps: Vec<(&Policy, u64)> =
            fills.iter().map(|&fill| (&old, fill.min(old_limit))).collect();
        let fills = steps.len();
        steps.extend([(&new, cost.min(new_limit)), (&new, 0), (&new, new_limit), (&old, 1)]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcomes = runtime.block_on(assert_steps_same_on_both_stores(&steps));
        for (outcome, &(policy, _)) in outcomes[fills..].iter().zip(&steps[fills..]) {
            prop_assert!(outcome.remaining <= policy.limit(), "{outcome:?}");
            prop_assert!(outcome.allowed || outcome.retry_after_us >= 1, "{outcome:?}");
        }
    }
}

// --- A rolling upgrade: replicas of the previous sliding_log layout on the same Redis ---

/// The previous version's `sliding_log.lua` (one member per unit in `:log`,
/// a sequence in `:seq`), as replicas not yet upgraded run it.
fn per_unit_script() -> redis::Script {
    redis::Script::new(include_str!("fixtures/sliding_log_per_unit.lua"))
}

/// One check by an old replica: `{allowed, remaining}` as it sees them.
async fn old_replica_check(tag: &str, limit: u64, cost: u64) -> (u8, i64) {
    let mut redis = redis_connection().await;
    let script = per_unit_script();
    let mut invocation = script.prepare_invoke();
    invocation
        .key(format!("{tag}:log"))
        .key(format!("{tag}:seq"))
        .arg(HOUR_US)
        .arg(limit)
        .arg(cost);
    let (allowed, remaining, _, _): (u8, i64, i64, i64) =
        invocation.invoke_async(&mut redis).await.unwrap();
    (allowed, remaining)
}

/// A Redis store on the shared Redis under `prefix`, for reading its keys afterwards.
pub fn store_with_prefix(prefix: &str) -> RedisStore {
    RedisStore::new(RedisOptions {
        url: redis_url(),
        tls: None,
        key_prefix: prefix.to_owned(),
        pool_size: 1,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        sentinel: None,
    })
    .unwrap()
}

async fn redis_time() -> u64 {
    let mut redis = redis_connection().await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    seconds * 1_000_000 + micros
}

/// The times (scores) of a sorted set's members, oldest first.
async fn scores(key: &str) -> Vec<u64> {
    let mut redis = redis_connection().await;
    let pairs: Vec<(String, f64)> = redis.zrange_withscores(key, 0, -1).await.unwrap();
    pairs.into_iter().map(|(_, score)| score as u64).collect()
}

/// The admission times in the new log (`<time>:<units>` members), oldest first.
async fn log_times(key: &str) -> Vec<u64> {
    let mut redis = redis_connection().await;
    let members: Vec<String> = redis.zrange(key, 0, -1).await.unwrap();
    members
        .iter()
        .map(|member| member.split(':').next().unwrap().parse().unwrap())
        .collect()
}

/// A denial's retry instant must be `expected` (absolute, Redis clock): the
/// reply's duration is measured from a `TIME` between `before` and `after`.
fn assert_retry_at(retry_after_us: u64, expected: u64, before: u64, after: u64) {
    assert!(
        retry_after_us >= expected - after && retry_after_us <= expected - before,
        "retry_after {retry_after_us} us, expected {} .. {} us",
        expected - after,
        expected - before
    );
}

#[tokio::test]
async fn a_rolling_upgrade_counts_the_units_old_replicas_admitted_and_fails_nothing() {
    let prefix = unique_prefix();
    let tag = format!("{prefix}{{changed:k}}");
    let store = store_with_prefix(&prefix);
    let limit = 10;
    let policy = policy(Algorithm::SlidingLog, limit, Duration::from_secs(3600));
    let key = LimiterKey::parse("k").unwrap();

    // An old replica admits 3 and then 2: five members in the old layout.
    assert_eq!(old_replica_check(&tag, limit, 3).await, (1, 7));
    assert_eq!(old_replica_check(&tag, limit, 2).await, (1, 5));
    // A unit an hour and a half old, long out of its window, counts nowhere.
    let mut redis = redis_connection().await;
    let stale = redis_time().await - 90 * 60 * 1_000_000;
    let _: () = redis
        .zadd(format!("{tag}:log"), format!("{stale}:0"), stale)
        .await
        .unwrap();

    // The upgraded replica sees them, and admits only what is left.
    let peek = store.check(&policy, key, 0).await.unwrap();
    assert!(peek.allowed);
    assert_eq!(peek.remaining, 5, "the old layout's units count");
    let admitted = store.check(&policy, key, 5).await.unwrap();
    assert!(admitted.allowed);
    assert_eq!(admitted.remaining, 0);
    let before = redis_time().await;
    let denied = store.check(&policy, key, 1).await.unwrap();
    let after = redis_time().await;
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    // The old units are older than the new entry, so they leave first and
    // the retry is exact: 9 may stay, so the oldest old unit must go.
    let old_times = scores(&format!("{tag}:log")).await;
    let new_times = log_times(&format!("{tag}:wlog")).await;
    assert_retry_at(denied.retry_after_us, old_times[1] + HOUR_US, before, after);
    assert_retry_at(denied.reset_after_us, new_times[0] + HOUR_US, before, after);

    // An old replica still running does not see the new layout: it admits
    // its own 5 more, the documented excess while both versions serve a key.
    assert_eq!(old_replica_check(&tag, limit, 5).await, (1, 0));
    // The upgraded replica now sees 15 held of 10: a full key, not a failure.
    let over = store.check(&policy, key, 0).await.unwrap();
    assert!(!over.allowed);
    assert_eq!(over.remaining, 0);
}

#[tokio::test]
async fn old_and_new_units_that_interleave_get_a_retry_after_that_is_never_early() {
    let prefix = unique_prefix();
    let tag = format!("{prefix}{{changed:k}}");
    let store = store_with_prefix(&prefix);
    let limit = 5;
    let policy = policy(Algorithm::SlidingLog, limit, Duration::from_secs(3600));
    let key = LimiterKey::parse("k").unwrap();

    // The new replica admits first, then an old one: the old units are newer.
    assert!(store.check(&policy, key, 2).await.unwrap().allowed);
    assert_eq!(
        old_replica_check(&tag, limit, 3).await,
        (1, 2),
        "it sees only its own"
    );
    let before = redis_time().await;
    let denied = store.check(&policy, key, 1).await.unwrap();
    let after = redis_time().await;
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    // 4 may stay: the new entry (2 units, the oldest) leaving is enough.
    let new_times = log_times(&format!("{tag}:wlog")).await;
    let old_times = scores(&format!("{tag}:log")).await;
    assert_retry_at(denied.retry_after_us, new_times[0] + HOUR_US, before, after);
    assert_retry_at(denied.reset_after_us, old_times[2] + HOUR_US, before, after);
    // Cost 3: at most 2 may stay, so the old units must go too.
    let before = redis_time().await;
    let denied = store.check(&policy, key, 3).await.unwrap();
    let after = redis_time().await;
    assert_retry_at(denied.retry_after_us, old_times[2] + HOUR_US, before, after);
}

// --- End to end: the admin API lowers a live limit (Postgres catalog, Redis store) ---

/// A check of `cost`, presenting `api_key` when given.
async fn check(
    app: &TestApp,
    policy: &str,
    key: &str,
    cost: u64,
    api_key: Option<&str>,
) -> CheckReply {
    let mut request = app
        .client
        .post(format!("{}/v1/check", app.address))
        .json(&json!({ "policy": policy, "key": key, "cost": cost }));
    if let Some(api_key) = api_key {
        request = request.bearer_auth(api_key);
    }
    read_reply(request.send().await.expect("the request reaches the app")).await
}

/// The replica is ready, its breaker closed, and no store call failed.
async fn assert_ready_and_closed(app: &TestApp, context: &str) {
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{context}: {:?}", ready.body);
    let limiter = &ready.body["checks"]["limiter"];
    assert_eq!(limiter["breaker"]["state"], "closed", "{context}");
    assert_eq!(limiter["counters"]["store_failures"], 0, "{context}");
}

fn policy_body(name: &str, algorithm: &str, limit: u64) -> serde_json::Value {
    json!({ "name": name, "algorithm": algorithm, "limit": limit, "window": "1h" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_live_limit_denies_the_used_key_admits_a_fresh_one_and_keeps_the_replica_ready()
{
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    for algorithm in ["sliding_log", "gcra", "sliding_window"] {
        let name = algorithm.replace('_', "-");
        let created = app
            .admin(
                Method::POST,
                "/policies",
                Some(policy_body(&name, algorithm, 100)),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        // Two keys holding 50 of 100 each, in checks of 10.
        for key in ["used", "raised"] {
            for _ in 0..5 {
                assert_eq!(check(&app, &name, key, 10, None).await.status, 200);
            }
        }

        let lowered = app
            .admin(
                Method::PUT,
                &format!("/policies/{name}"),
                Some(policy_body(&name, algorithm, 10)),
            )
            .await;
        assert_eq!(lowered.status, 200, "{:?}", lowered.body);
        let denied = check(&app, &name, "used", 1, None).await;
        assert_eq!(denied.status, 429, "{algorithm}: {:?}", denied.body);
        assert_eq!(denied.body["limit"], 10, "{algorithm}");
        assert_eq!(denied.body["remaining"], 0, "{algorithm}");
        assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
        let retry_ms = denied.body["retry_after_ms"].as_u64().unwrap();
        let expected_ms = match algorithm {
            // The 50 units leave together, an hour after they were admitted.
            "sliding_log" => 3_590_000..=3_600_000,
            // 50 in the bucket drain at 10 per hour: 41 must go, 6 min each.
            "gcra" => 14_700_000..=14_760_000,
            // Within this fixed window or the next.
            _ => 1..=7_200_000,
        };
        assert!(
            expected_ms.contains(&retry_ms),
            "{algorithm}: retry_after_ms {retry_ms}"
        );
        assert!(denied.header("retry-after").is_some(), "{algorithm}");
        let peek = check(&app, &name, "used", 0, None).await;
        assert_eq!(
            peek.status, 429,
            "{algorithm}: a peek of a key over its limit"
        );
        assert_eq!(
            check(&app, &name, "used", 10, None).await.status,
            429,
            "{algorithm}: a cost of the whole new limit"
        );
        let fresh = check(&app, &name, "fresh", 1, None).await;
        assert_eq!(fresh.status, 200, "{algorithm}: {:?}", fresh.body);
        assert_eq!(fresh.body["remaining"], 9, "{algorithm}");
        assert_ready_and_closed(&app, algorithm).await;

        // Raised above what the key holds: admitted at once. (This key was
        // denied for a larger cost, which is never cached; a cached cost-1
        // denial is dropped by the catalog change too, see deny_cache.rs.)
        assert_eq!(check(&app, &name, "raised", 2, None).await.status, 429);
        let raised = app
            .admin(
                Method::PUT,
                &format!("/policies/{name}"),
                Some(policy_body(&name, algorithm, 200)),
            )
            .await;
        assert_eq!(raised.status, 200, "{:?}", raised.body);
        let admitted = check(&app, &name, "raised", 1, None).await;
        assert_eq!(admitted.status, 200, "{algorithm}: {:?}", admitted.body);
        assert_eq!(admitted.body["remaining"], 149, "{algorithm}");
        assert_ready_and_closed(&app, algorithm).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_override_lowered_or_removed_under_a_key_in_use_denies_it_and_fails_nothing() {
    let database = TestDatabase::create().await;
    let app = spawn_app(TestOptions::catalog(&database, &unique_prefix())).await;
    for algorithm in ["sliding_log", "gcra", "sliding_window"] {
        let name = algorithm.replace('_', "-");
        app.admin(
            Method::POST,
            "/policies",
            Some(policy_body(&name, algorithm, 3)),
        )
        .await;
        let created = app
            .admin(
                Method::POST,
                "/keys",
                Some(json!({ "tenant": "acme", "overrides": { name.as_str(): 20 } })),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let api_key = created.body["key"].as_str().unwrap().to_owned();
        let id = created.body["id"].as_i64().unwrap();
        let api_key = Some(api_key.as_str());
        // The tenant's key holds 12 of its 20.
        for _ in 0..4 {
            assert_eq!(check(&app, &name, "user", 3, api_key).await.status, 200);
        }

        let lowered = app
            .admin(
                Method::PUT,
                &format!("/keys/{id}/overrides"),
                Some(json!({ "overrides": { name.as_str(): 8 } })),
            )
            .await;
        assert_eq!(lowered.status, 200, "{:?}", lowered.body);
        let denied = check(&app, &name, "user", 2, api_key).await;
        assert_eq!(denied.status, 429, "{algorithm}: {:?}", denied.body);
        assert_eq!(
            (&denied.body["limit"], &denied.body["remaining"]),
            (&json!(8), &json!(0)),
            "{algorithm}"
        );
        assert_ready_and_closed(&app, &format!("{algorithm}, override lowered")).await;

        // No override: the policy's own 3, far below the 12 held.
        let removed = app
            .admin(
                Method::PUT,
                &format!("/keys/{id}/overrides"),
                Some(json!({ "overrides": {} })),
            )
            .await;
        assert_eq!(removed.status, 200, "{:?}", removed.body);
        let denied = check(&app, &name, "user", 1, api_key).await;
        assert_eq!(denied.status, 429, "{algorithm}: {:?}", denied.body);
        assert_eq!(
            (&denied.body["limit"], &denied.body["remaining"]),
            (&json!(3), &json!(0)),
            "{algorithm}"
        );
        let fresh = check(&app, &name, "someone-else", 1, api_key).await;
        assert_eq!(fresh.status, 200, "{algorithm}: {:?}", fresh.body);
        assert_eq!(fresh.body["limit"], 3, "{algorithm}");
        assert_ready_and_closed(&app, &format!("{algorithm}, override removed")).await;
    }
}
