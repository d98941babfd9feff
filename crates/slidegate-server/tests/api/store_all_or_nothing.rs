//! All or nothing over several checks (`Store::check_all`): one contract for the embedded store, one Redis (one script, atomic) and a Redis Cluster whose requests span masters (a reservation per master, given back when the request is refused).
//!
//! Every case runs for each algorithm on each store with the same
//! assertions. On the cluster, the keys of a case's two policies are chosen
//! on different masters, so a request is decided by two scripts and a
//! refused one is undone by `release.lua`. Windows are far longer than a
//! test (Redis `TIME` cannot be moved), as in `store_contract.rs`.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use slidegate::store::{MemoryStore, RedisOptions, RedisStore};
use slidegate_core::{
    Algorithm, Check, LimiterKey, Outcome, Policy, PolicyName, Store, SystemClock, Window,
};
use slidegate_redis::{ClusterOptions, ClusterStore};
use tokio::sync::Barrier;

use crate::cluster::{keyslot, master_of};
use crate::helpers::{redis_connection, redis_url, unique_prefix};
use crate::private_redis::{PrivateCluster, PrivateRedis};
use crate::store_contract::window_for;

/// Durations in the outcomes are hours; two readings of one key a moment
/// apart (one machine's clock, or one master's) differ by far less.
const TOLERANCE_US: u64 = 2_000_000;

fn memory_store() -> MemoryStore {
    MemoryStore::new(Arc::new(SystemClock))
}

fn redis_options(url: String) -> RedisOptions {
    RedisOptions {
        url,
        tls: None,
        key_prefix: unique_prefix(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        sentinel: None,
    }
}

fn redis_store_at(url: String) -> RedisStore {
    RedisStore::new(redis_options(url)).unwrap()
}

fn redis_store() -> RedisStore {
    redis_store_at(redis_url())
}

fn cluster_store(cluster: &PrivateCluster, command_timeout: Duration) -> ClusterStore {
    ClusterStore::new(ClusterOptions {
        nodes: (0..cluster.nodes().len())
            .map(|index| cluster.url(index))
            .collect(),
        tls: None,
        key_prefix: unique_prefix(),
        connect_timeout: Duration::from_secs(2),
        command_timeout,
    })
    .unwrap()
}

/// `<name>-<algorithm>`, limit `limit`, over [`window_for`] the algorithm.
fn policy(name: &str, algorithm: Algorithm, limit: u64) -> Policy {
    Policy::new(
        PolicyName::parse(&format!("{name}-{algorithm}")).unwrap(),
        algorithm,
        limit,
        Window::parse(window_for(algorithm)).unwrap(),
        1,
    )
    .unwrap()
}

fn check<'a>(policy: &'a Policy, key: &'a str, cost: u64) -> Check<'a> {
    Check {
        policy,
        key: LimiterKey::parse(key).unwrap(),
        cost,
        enforced: true,
    }
}

/// A check of a shadow policy: counted when it admits, refusing nothing.
fn shadow<'a>(policy: &'a Policy, key: &'a str, cost: u64) -> Check<'a> {
    Check {
        enforced: false,
        ..check(policy, key, cost)
    }
}

async fn request(store: &impl Store, checks: &[Check<'_>]) -> Vec<Outcome> {
    let outcomes = store.check_all(checks).await.unwrap();
    assert_eq!(outcomes.len(), checks.len());
    outcomes
}

async fn peek(store: &impl Store, policy: &Policy, key: &str) -> Outcome {
    store
        .check(policy, LimiterKey::parse(key).unwrap(), 0)
        .await
        .unwrap()
}

/// The units `key` holds under `policy`'s name, full or not: a peek under
/// the same name and algorithm with a limit of 1000 (more than any case
/// here fills), which sees the same state.
async fn held(store: &impl Store, policy: &Policy, key: &str) -> u64 {
    let roomy = Policy::new(
        policy.name().clone(),
        policy.algorithm(),
        1000,
        policy.window(),
        1,
    )
    .unwrap();
    1000 - peek(store, &roomy, key).await.remaining
}

/// Names the key of a case. On a cluster, [`Keys::apart`] finds one whose
/// checks under two policies are served by different masters (the slot is
/// the hash tag's, `{<policy>:<key>}`; the prefix is outside it).
#[derive(Clone, Copy)]
enum Keys<'c> {
    Anywhere,
    Apart(&'c PrivateCluster),
}

impl Keys<'_> {
    async fn apart(&self, a: &Policy, b: &Policy, base: &str) -> String {
        let Keys::Apart(cluster) = self else {
            return base.to_owned();
        };
        for attempt in 0.. {
            let key = format!("{base}-{attempt}");
            let master = |policy: &Policy| {
                let tag = format!("{{{}:{key}}}", policy.name().as_str());
                async move { master_of(cluster, 0, keyslot(cluster, 0, &tag).await).await }
            };
            let (of_a, of_b) = (master(a).await, master(b).await);
            if of_a.is_some() && of_b.is_some() && of_a != of_b {
                return key;
            }
        }
        unreachable!()
    }
}

/// A (limit 10) and B (limit 3) in one request, ten times: three admitted,
/// each refused one consumes nothing, and reports B's denial and A's state
/// without it.
async fn two_limits_admit_the_smaller(store: &impl Store, keys: Keys<'_>, algorithm: Algorithm) {
    let (a, b) = (policy("a", algorithm, 10), policy("b", algorithm, 3));
    let key = keys.apart(&a, &b, "two").await;
    let mut admitted = 0;
    let mut refused = Vec::new();
    for _ in 0..10 {
        let outcomes = request(store, &[check(&a, &key, 1), check(&b, &key, 1)]).await;
        if outcomes.iter().all(|outcome| outcome.allowed) {
            admitted += 1;
            assert_eq!(outcomes[0].remaining, 10 - admitted, "{algorithm}");
            assert_eq!(outcomes[1].remaining, 3 - admitted, "{algorithm}");
        } else {
            refused.push(outcomes);
        }
    }
    assert_eq!(admitted, 3, "{algorithm}");
    assert_eq!(held(store, &a, &key).await, 3, "{algorithm}: A");
    assert_eq!(held(store, &b, &key).await, 3, "{algorithm}: B");
    let peek_a = peek(store, &a, &key).await;
    assert_eq!(peek_a.remaining, 7, "{algorithm}");
    for outcomes in refused {
        let (of_a, of_b) = (outcomes[0], outcomes[1]);
        assert!(!of_b.allowed, "{algorithm}: {of_b:?}");
        assert_eq!(of_b.remaining, 0, "{algorithm}");
        assert!(of_b.retry_after_us > 0, "{algorithm}: {of_b:?}");
        assert!(of_b.reset_after_us >= of_b.retry_after_us, "{algorithm}");
        // Admitted, not consumed: what A holds without this request.
        assert!(of_a.allowed, "{algorithm}: {of_a:?}");
        assert_eq!(of_a.retry_after_us, 0, "{algorithm}");
        assert_eq!(of_a.remaining, 7, "{algorithm}");
        assert!(
            of_a.reset_after_us.abs_diff(peek_a.reset_after_us) <= TOLERANCE_US,
            "{algorithm}: {of_a:?} against a peek {peek_a:?}"
        );
    }
}

/// A shadow check that denies refuses nothing and consumes nothing; one that
/// admits in a request an enforced check refused is not consumed either.
async fn shadow_checks_refuse_nothing(store: &impl Store, keys: Keys<'_>, algorithm: Algorithm) {
    let (a, s) = (policy("a", algorithm, 10), policy("s", algorithm, 3));
    let key = keys.apart(&a, &s, "shadow").await;
    assert!(request(store, &[check(&s, &key, 2)]).await[0].allowed);

    let outcomes = request(store, &[check(&a, &key, 1), shadow(&s, &key, 2)]).await;
    assert!(outcomes[0].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(outcomes[0].remaining, 9, "{algorithm}");
    assert!(!outcomes[1].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(outcomes[1].remaining, 1, "{algorithm}");
    assert!(outcomes[1].retry_after_us > 0, "{algorithm}");
    assert_eq!(held(store, &a, &key).await, 1, "{algorithm}: A consumed");
    assert_eq!(held(store, &s, &key).await, 2, "{algorithm}: S unchanged");

    // A fills up; a request it refuses does not consume the shadow check's unit.
    assert!(request(store, &[check(&a, &key, 9)]).await[0].allowed);
    let outcomes = request(store, &[shadow(&s, &key, 1), check(&a, &key, 1)]).await;
    assert!(outcomes[0].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(
        outcomes[0].remaining, 1,
        "{algorithm}: as without the request"
    );
    assert_eq!(outcomes[0].retry_after_us, 0, "{algorithm}");
    assert!(!outcomes[1].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(
        held(store, &s, &key).await,
        2,
        "{algorithm}: S not consumed"
    );
    assert_eq!(held(store, &a, &key).await, 10, "{algorithm}: A");
}

/// Two checks of one key are judged one after the other: the second sees
/// the first; refused, neither consumes.
async fn one_key_twice_sees_itself(store: &impl Store, keys: Keys<'_>, algorithm: Algorithm) {
    let (a, b) = (policy("a", algorithm, 10), policy("b", algorithm, 3));
    let key = keys.apart(&a, &b, "twice").await;
    let outcomes = request(store, &[check(&b, &key, 2), check(&b, &key, 2)]).await;
    assert!(outcomes[0].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(
        outcomes[0].remaining, 3,
        "{algorithm}: as without the request"
    );
    assert!(!outcomes[1].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(
        outcomes[1].remaining, 1,
        "{algorithm}: judged after the first"
    );
    assert_eq!(held(store, &b, &key).await, 0, "{algorithm}");

    // The same with a check on another master before them.
    let outcomes = request(
        store,
        &[check(&a, &key, 2), check(&b, &key, 2), check(&b, &key, 2)],
    )
    .await;
    assert!(outcomes[0].allowed && outcomes[1].allowed && !outcomes[2].allowed);
    assert_eq!(outcomes[0].remaining, 10, "{algorithm}");
    assert_eq!(outcomes[1].remaining, 3, "{algorithm}");
    assert_eq!(held(store, &a, &key).await, 0, "{algorithm}");
    assert_eq!(held(store, &b, &key).await, 0, "{algorithm}");

    let outcomes = request(store, &[check(&b, &key, 2), check(&b, &key, 1)]).await;
    assert!(
        outcomes.iter().all(|outcome| outcome.allowed),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[0].remaining, 1, "{algorithm}");
    assert_eq!(outcomes[1].remaining, 0, "{algorithm}");
    assert_eq!(held(store, &b, &key).await, 3, "{algorithm}");
}

/// A peek (cost 0) in a request consumes nothing and is judged like a
/// single peek: one unit, so a peek of a full key denies, and refuses the
/// request if enforced.
async fn peeks_inside_a_request(store: &impl Store, keys: Keys<'_>, algorithm: Algorithm) {
    let (a, b) = (policy("a", algorithm, 10), policy("b", algorithm, 3));
    let key = keys.apart(&a, &b, "peeks").await;
    let outcomes = request(
        store,
        &[check(&a, &key, 0), check(&b, &key, 2), check(&a, &key, 0)],
    )
    .await;
    assert!(
        outcomes.iter().all(|outcome| outcome.allowed),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().map(|o| o.remaining).collect::<Vec<_>>(),
        [10, 1, 10],
        "{algorithm}"
    );
    assert_eq!(held(store, &a, &key).await, 0, "{algorithm}");
    assert_eq!(held(store, &b, &key).await, 2, "{algorithm}");

    assert!(request(store, &[check(&b, &key, 1)]).await[0].allowed);
    let outcomes = request(store, &[check(&a, &key, 1), check(&b, &key, 0)]).await;
    assert!(!outcomes[1].allowed, "{algorithm}: a peek of a full key");
    assert!(outcomes[0].allowed, "{algorithm}: {outcomes:?}");
    assert_eq!(outcomes[0].remaining, 10, "{algorithm}: not consumed");
    assert_eq!(held(store, &a, &key).await, 0, "{algorithm}");

    let outcomes = request(store, &[check(&a, &key, 1), shadow(&b, &key, 0)]).await;
    assert!(outcomes[0].allowed && !outcomes[1].allowed, "{outcomes:?}");
    assert_eq!(
        held(store, &a, &key).await,
        1,
        "{algorithm}: a shadow peek refuses nothing"
    );
}

/// 200 checks in one request, each of its own key at the largest cost (its
/// limit, the algorithm's largest): one full key among them refuses them
/// all and none consumes; 200 fresh ones are all admitted. On a cluster the
/// keys fall on every master; some are a tenant's, some hold a `}` (the hash
/// tag ends there), so the store must group them by Redis's own slots.
async fn many_checks_at_the_largest_cost(store: &impl Store, prefix: &str, algorithm: Algorithm) {
    let limit = match algorithm {
        Algorithm::SlidingLog => slidegate_core::policy::MAX_SLIDING_LOG_LIMIT,
        _ => slidegate_core::policy::MAX_LIMIT,
    };
    let many = policy("many", algorithm, limit);
    let names: Vec<String> = (0..200)
        .map(|index| match index % 4 {
            3 => format!("{prefix}-{index}}}x"),
            _ => format!("{prefix}-{index}"),
        })
        .collect();
    fn checks<'a>(policy: &'a Policy, names: &'a [String]) -> Vec<Check<'a>> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut check = check(policy, name, policy.limit());
                if index % 4 == 1 {
                    check.key = check.key.scoped("tenant-1");
                }
                check
            })
            .collect()
    }
    let full = format!("{prefix}-full");
    assert!(request(store, &[check(&many, &full, limit)]).await[0].allowed);
    let mut refused = names[..199].to_vec();
    refused.push(full);
    let outcomes = request(store, &checks(&many, &refused)).await;
    assert!(!outcomes[199].allowed, "{algorithm}");
    for (index, outcome) in outcomes[..199].iter().enumerate() {
        assert!(outcome.allowed, "{algorithm} check {index}: {outcome:?}");
        assert_eq!(outcome.remaining, limit, "{algorithm} check {index}");
    }
    let outcomes = request(store, &checks(&many, &names)).await;
    for (index, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.allowed, "{algorithm} check {index}: {outcome:?}");
        assert_eq!(outcome.remaining, 0, "{algorithm} check {index}");
    }
    // Each key is full now: the largest cost again is denied everywhere.
    let outcomes = store.check_all(&checks(&many, &names)).await.unwrap();
    assert!(
        outcomes.iter().all(|outcome| !outcome.allowed),
        "{algorithm}"
    );
}

/// 50 requests of A (10) and B (3) at once, on fresh keys: never more than
/// B's 3 admitted, and afterwards each key holds exactly what was admitted
/// (no reservation left behind). `exact`: the store decides a request
/// atomically, so exactly 3 (a reserving store may under-admit).
async fn racing_requests<S: Store>(
    store: Arc<S>,
    keys: Keys<'_>,
    algorithm: Algorithm,
    exact: bool,
) {
    const REQUESTS: usize = 50;
    let a = Arc::new(policy("a", algorithm, 10));
    let b = Arc::new(policy("b", algorithm, 3));
    let key: Arc<str> = keys.apart(&a, &b, "race").await.into();
    let start = Arc::new(Barrier::new(REQUESTS));
    let mut requests = Vec::new();
    for _ in 0..REQUESTS {
        let (store, a, b, key, start) = (
            Arc::clone(&store),
            Arc::clone(&a),
            Arc::clone(&b),
            Arc::clone(&key),
            Arc::clone(&start),
        );
        requests.push(tokio::spawn(async move {
            start.wait().await;
            store
                .check_all(&[check(&a, &key, 1), check(&b, &key, 1)])
                .await
                .unwrap()
        }));
    }
    let mut admitted = 0;
    for request in requests {
        let outcomes = request.await.unwrap();
        if outcomes.iter().all(|outcome| outcome.allowed) {
            admitted += 1;
        }
    }
    if exact {
        assert_eq!(admitted, 3, "{algorithm}");
    } else {
        assert!(
            (1..=3).contains(&admitted),
            "{algorithm}: {admitted} admitted"
        );
    }
    // A gcra release gives back its units less what the bucket drained
    // since they were reserved. One request after another, the units held
    // drain at least as much meanwhile; with reservations overlapping in
    // time, the bucket can be left a tiny fraction of a unit above the
    // admitted units (10 a day drain 0.0001 a second), which `remaining`
    // floors to a whole unit until it has drained.
    let slack = u64::from(algorithm == Algorithm::Gcra && !exact);
    for (name, policy) in [("A", &a), ("B", &b)] {
        let held = held(&*store, policy, &key).await;
        assert!(
            (admitted..=admitted + slack).contains(&held),
            "{algorithm}: {name} holds {held}, {admitted} admitted"
        );
    }
}

/// Every case above, for every algorithm, on one store.
async fn every_case<S: Store>(store: Arc<S>, keys: Keys<'_>, exact: bool) {
    for algorithm in Algorithm::ALL {
        two_limits_admit_the_smaller(&*store, keys, algorithm).await;
        shadow_checks_refuse_nothing(&*store, keys, algorithm).await;
        one_key_twice_sees_itself(&*store, keys, algorithm).await;
        peeks_inside_a_request(&*store, keys, algorithm).await;
        many_checks_at_the_largest_cost(&*store, "many", algorithm).await;
        racing_requests(Arc::clone(&store), keys, algorithm, exact).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_is_all_or_nothing() {
    // Reservations under a lock per key: concurrent requests may under-admit.
    every_case(Arc::new(memory_store()), Keys::Anywhere, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_is_all_or_nothing_in_one_script() {
    every_case(Arc::new(redis_store()), Keys::Anywhere, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_all_or_nothing_across_masters() {
    let cluster = PrivateCluster::start(3, 0).await;
    let store = Arc::new(cluster_store(&cluster, Duration::from_secs(2)));
    // The topology, for the per-master counters.
    assert!(store.health().await.ok);
    every_case(Arc::clone(&store), Keys::Apart(&cluster), false).await;
    // Every check was counted on the master that decided it.
    let stats = store.cluster_stats().unwrap();
    let decided: u64 = stats.nodes.iter().map(|node| node.decided).sum();
    assert!(decided > 0, "{stats:?}");
    assert!(
        stats
            .nodes
            .iter()
            .all(|node| node.failed == 0 && node.timeouts == 0),
        "{stats:?}"
    );
}

/// A mixed sequence of requests, decided by one Redis and by the embedded
/// store: the same outcomes, field by field (durations within the tolerance).
#[tokio::test]
async fn one_redis_decides_every_request_as_the_embedded_store_does() {
    let (memory, redis) = (memory_store(), redis_store());
    for algorithm in Algorithm::ALL {
        let (a, b, c) = (
            policy("a", algorithm, 10),
            policy("b", algorithm, 3),
            policy("c", algorithm, 5),
        );
        let steps: Vec<Vec<Check<'_>>> = vec![
            vec![check(&a, "k", 4), check(&b, "k", 1), shadow(&c, "k", 5)],
            vec![check(&a, "k", 4), check(&b, "k", 2), check(&c, "k", 1)],
            vec![check(&a, "k", 1), shadow(&c, "k", 1), check(&b, "k", 1)],
            vec![check(&b, "k", 0), check(&a, "k", 0)],
            vec![check(&a, "k", 2), check(&a, "k", 0), check(&c, "k", 0)],
            vec![check(&c, "k", 0), check(&a, "k", 3), check(&a, "k", 3)],
            vec![check(&a, "k", 1), check(&a, "k", 1), check(&b, "k", 3)],
        ];
        for (step, checks) in steps.iter().enumerate() {
            let expected = request(&memory, checks).await;
            let got = request(&redis, checks).await;
            for (index, (m, r)) in expected.iter().zip(&got).enumerate() {
                let context =
                    format!("{algorithm} step {step} check {index}: memory {m:?} redis {r:?}");
                assert_eq!(
                    (m.allowed, m.remaining),
                    (r.allowed, r.remaining),
                    "{context}"
                );
                assert!(
                    m.reset_after_us.abs_diff(r.reset_after_us) <= TOLERANCE_US,
                    "{context}"
                );
                assert!(
                    m.retry_after_us.abs_diff(r.retry_after_us) <= TOLERANCE_US,
                    "{context}"
                );
            }
        }
    }
}

#[tokio::test]
async fn no_checks_is_no_call() {
    // Nothing listens on port 1: any call would fail.
    let nowhere = redis_store_at("redis://127.0.0.1:1".into());
    assert!(nowhere.check_all(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_request_is_one_evalsha_after_a_script_flush_too_and_every_key_it_writes_expires() {
    let private = PrivateRedis::start();
    let store = redis_store_at(private.url());
    let policies: Vec<Policy> = Algorithm::ALL
        .into_iter()
        .map(|algorithm| policy("e", algorithm, 3))
        .collect();
    let checks: Vec<Check<'_>> = policies
        .iter()
        .flat_map(|policy| [check(policy, "k1", 1), check(policy, "k2", 2)])
        .collect();
    // The first loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA again).
    let peeks: Vec<Check<'_>> = checks
        .iter()
        .map(|check| Check { cost: 0, ..*check })
        .collect();
    assert!(request(&store, &peeks).await.iter().all(|o| o.allowed));
    let before = private.calls_of("evalsha").await;
    assert!(request(&store, &checks).await.iter().all(|o| o.allowed));
    assert_eq!(
        private.calls_of("evalsha").await,
        before + 1,
        "one round-trip"
    );

    let mut redis = private.connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    // NOSCRIPT: loaded and sent again. The second request is refused (k2 is full).
    let outcomes = request(&store, &checks).await;
    assert!(outcomes.iter().any(|o| !o.allowed), "{outcomes:?}");
    for (check, outcome) in checks.iter().zip(&outcomes) {
        if check.key.as_str() == "k1" {
            assert!(outcome.allowed, "{outcome:?}");
            assert_eq!(outcome.remaining, 2, "not consumed: {outcome:?}");
        }
    }
    let keys: Vec<String> = redis.keys("*").await.unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let ttl_ms: i64 = redis.pttl(&key).await.unwrap();
        // At most the time until every unit counted has left: a window
        // (sliding_log, 1 h; gcra, 24 h), or two for sliding_window (24 h).
        let window_ms = if key.ends_with(":sw") {
            2 * 86_400_000
        } else if key.ends_with(":wlog") {
            3_600_000
        } else {
            86_400_000
        };
        assert!(
            ttl_ms > 0 && ttl_ms <= window_ms,
            "{key} has PTTL {ttl_ms} ms"
        );
    }
}

/// A Redis store whose keys start with `prefix`.
fn redis_store_with_prefix(prefix: &str) -> RedisStore {
    RedisStore::new(RedisOptions {
        key_prefix: prefix.to_owned(),
        ..redis_options(redis_url())
    })
    .unwrap()
}

#[tokio::test]
async fn a_request_that_fails_half_way_keeps_nothing_and_is_an_invalid_reply() {
    let prefix = unique_prefix();
    let store = redis_store_with_prefix(&prefix);
    let (a, b) = (
        policy("a", Algorithm::Gcra, 3),
        policy("b", Algorithm::SlidingLog, 3),
    );
    // A log holding what the scripts did not write: the second check raises
    // an error after the first has reserved its units.
    let mut redis = redis_connection().await;
    let log = format!("{prefix}{{{}:k}}:wlog", b.name().as_str());
    let _: () = redis.zadd(&log, "not-an-entry", 1).await.unwrap();
    let _: () = redis.pexpire(&log, 60_000).await.unwrap();
    let error = store
        .check_all(&[check(&a, "k", 2), check(&b, "k", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(error, slidegate_core::StoreError::InvalidReply(_)),
        "{error:?}"
    );
    assert_eq!(
        held(&store, &a, "k").await,
        0,
        "given back before the error"
    );
}

/// check_all.lua as the store assembles it: each algorithm up to its line
/// `-- Single check.`, checks.lua, then the script (see `Scripts::new`).
fn assembled(script: &str) -> String {
    let mut source = String::new();
    for algorithm in [
        include_str!("../../../slidegate-redis/lua/sliding_log.lua"),
        include_str!("../../../slidegate-redis/lua/sliding_window.lua"),
        include_str!("../../../slidegate-redis/lua/gcra.lua"),
    ] {
        let cut = algorithm.find("\n-- Single check.\n").unwrap();
        source.push_str(&algorithm[..=cut]);
    }
    source.push_str(include_str!("../../../slidegate-redis/lua/checks.lua"));
    source.push_str(script);
    source
}

#[tokio::test]
async fn the_scripts_of_several_checks_refuse_a_call_they_cannot_read_before_touching_a_key() {
    let mut redis = redis_connection().await;
    let prefix = unique_prefix();
    for (name, script, fifth) in [
        (
            "check_all",
            assembled(include_str!("../../../slidegate-redis/lua/check_all.lua")),
            "1",
        ),
        (
            "release",
            assembled(include_str!("../../../slidegate-redis/lua/release.lua")),
            "1",
        ),
    ] {
        let script = redis::Script::new(&script);
        let call = |keys: &[&str], args: &[&str]| {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(format!("{prefix}{{t}}:{key}"));
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation
        };
        let gcra = ["gcra", "1000000", "5", "1", fifth];
        let log = ["sliding_log", "1000000", "5", "1", fifth];
        for (keys, args, expected) in [
            (&[][..], &[][..], "expected 5 arguments per check"),
            (&["g"][..], &gcra[..4], "expected 5 arguments per check"),
            (&["g"][..], &log[..], "these checks take 2 keys, got 1"),
            (
                &["g", "h"][..],
                &gcra[..],
                "these checks take 1 keys, got 2",
            ),
            (
                &["g"][..],
                &["fixed", "1000000", "5", "1", fifth][..],
                "check 1: unknown algorithm",
            ),
            (
                &["g"][..],
                &["gcra", "999", "5", "1", fifth][..],
                "check 1: invalid window, limit or cost",
            ),
            (
                &["g"][..],
                &["gcra", "1000000", "0", "0", fifth][..],
                "check 1: invalid window",
            ),
            (
                &["g"][..],
                &["gcra", "1000000", "5", "6", fifth][..],
                "check 1: invalid window",
            ),
            (
                &["g"][..],
                &["gcra", "1000000", "5", "1.5", fifth][..],
                "check 1: invalid window",
            ),
            (
                &["g"][..],
                &["gcra", "1000000", "5", "-1", fifth][..],
                "check 1: invalid window",
            ),
            (
                &["g"][..],
                &["gcra", "nan", "5", "1", fifth][..],
                "check 1: invalid window",
            ),
            (
                &["g", "h"][..],
                &[&gcra[..], &["gcra", "1000000", "5", "1", "-1"][..]].concat()[..],
                "check 2: invalid",
            ),
        ] {
            let error = call(keys, args)
                .invoke_async::<redis::Value>(&mut redis)
                .await
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(&format!("{name}: {expected}")),
                "{name} {args:?}: {message}"
            );
        }
        // check_all's fifth is 0 or 1.
        if name == "check_all" {
            let error = call(&["g"], &["gcra", "1000000", "5", "1", "2"])
                .invoke_async::<redis::Value>(&mut redis)
                .await
                .unwrap_err();
            assert!(
                error.to_string().contains("check 1: invalid enforced"),
                "{error}"
            );
        }
    }
    // Refused before anything was written.
    let mut keys: redis::AsyncIter<String> = redis.scan_match(format!("{prefix}*")).await.unwrap();
    assert!(keys.next_item().await.is_none());
}

/// A request whose checks span two masters, one of which is gone (killed,
/// no replica to take over): the request fails, and the units its other
/// group reserved are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_request_whose_other_master_fails_gives_back_what_it_reserved() {
    // Without full coverage the other masters keep serving their slots.
    let mut cluster = PrivateCluster::start_serving_partial(3, 0).await;
    let store = cluster_store(&cluster, Duration::from_millis(500));
    // The topology, for the per-master counters.
    assert!(store.health().await.ok);
    let victim = cluster.nodes()[2].port();
    let master = |policy: &Policy, key: &str| {
        let tag = format!("{{{}:{key}}}", policy.name().as_str());
        let cluster = &cluster;
        async move { master_of(cluster, 0, keyslot(cluster, 0, &tag).await).await }
    };
    let mut cases = Vec::new();
    for algorithm in Algorithm::ALL {
        let (a, b) = (policy("a", algorithm, 10), policy("b", algorithm, 3));
        let mut attempt = 0;
        let key = loop {
            let key = format!("fails-{attempt}");
            let (of_a, of_b) = (master(&a, &key).await, master(&b, &key).await);
            if of_a.is_some() && of_a != Some(victim) && of_b == Some(victim) {
                break key;
            }
            attempt += 1;
        };
        // Both masters decide while they answer; the scripts are loaded.
        assert!(
            request(&store, &[check(&a, &key, 1), check(&b, &key, 1)])
                .await
                .iter()
                .all(|outcome| outcome.allowed)
        );
        cases.push((algorithm, a, b, key));
    }

    cluster.kill(2);
    for (algorithm, a, b, key) in &cases {
        let error = store
            .check_all(&[check(a, key, 2), check(b, key, 1)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                slidegate_core::StoreError::Timeout { .. }
                    | slidegate_core::StoreError::Unavailable(_)
            ),
            "{algorithm}: {error:?}"
        );
        assert_eq!(
            held(&store, a, key).await,
            1,
            "{algorithm}: A's 2 given back"
        );
    }
    let stats = store.cluster_stats().unwrap();
    let node = |port: u16| {
        stats
            .nodes
            .iter()
            .find(|node| node.node == format!("127.0.0.1:{port}"))
            .unwrap()
    };
    assert_eq!(node(victim).timeouts + node(victim).failed, 3, "{stats:?}");
    // A's master decided every reservation: the units above were given
    // back by a release, not left unreserved by a failure.
    for live in &cluster.nodes()[..2] {
        let live = node(live.port());
        assert_eq!(live.timeouts + live.failed, 0, "{stats:?}");
    }
}
