//! Redis Cluster: with `mode = "cluster"` every replica decides on the cluster, exactly; a standalone replica pointed at a cluster node says so in readiness, and the node's redirects are counted and logged as a misconfiguration.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use slidegate_redis::RedisMode;
use tokio::sync::Barrier;

use crate::helpers::{
    Replica, TestApp, TestOptions, eventually, one_load_test_at_a_time, policy, spawn_app,
    unique_prefix,
};
use crate::metrics::{scrape, value};
use crate::private_redis::PrivateCluster;

const POLICY: &str = r#"
[[policies]]
name = "api"
algorithm = "sliding_log"
limit = 100
window = "1m"
"#;

#[tokio::test]
async fn a_cluster_node_is_not_ready_and_its_redirects_are_a_logged_misconfiguration() {
    let cluster = PrivateCluster::start(3, 0).await;
    let replica = Replica::spawn(
        POLICY,
        &[
            ("SLIDEGATE__REDIS__URL", cluster.url(0)),
            // Timeouts and a breaker that stay out of the way: every check
            // below reaches the node, and is answered by it.
            ("SLIDEGATE__REDIS__CONNECT_TIMEOUT", "1s".into()),
            ("SLIDEGATE__REDIS__COMMAND_TIMEOUT", "1s".into()),
            ("SLIDEGATE__REDIS__BREAKER__FAILURES", "1000".into()),
            ("SLIDEGATE__REDIS__BREAKER__MIN_CALLS", "1000".into()),
        ],
    )
    .await;
    let ready_url = format!("{}/health/ready", replica.address);
    let ready: serde_json::Value = eventually(
        Duration::from_secs(10),
        "readiness to report the cluster node",
        || async {
            let response = replica.client.get(&ready_url).send().await.ok()?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.ok()?;
            // The reason under test, past a probe that ran out of time on
            // a loaded machine.
            body["checks"]["redis"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("Redis is a cluster node"))
                .then_some((status, body))
        },
    )
    .await
    .1;
    assert_eq!(ready["ready"], false, "{ready}");
    let error = ready["checks"]["redis"]["error"].as_str().unwrap();
    assert!(
        error.contains("Redis is a cluster node") && error.contains("redis.mode = \"cluster\""),
        "{error}"
    );

    // Each key lives on one of three masters: this node decides its own
    // and answers MOVED for the others, which must not pass for an outage.
    let (mut decided, mut refused) = (0, 0);
    for index in 0..30 {
        let reply = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "api", "key": format!("user-{index}")}))
            .send()
            .await
            .unwrap();
        match reply.status().as_u16() {
            200 => decided += 1,
            503 => {
                let body: serde_json::Value = reply.json().await.unwrap();
                assert_eq!(body["error"], "limiter_unavailable");
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(
        decided > 0 && refused > 0,
        "{decided} decided, {refused} refused"
    );
    let samples = scrape(&replica.address).await;
    let errors = |kind: &str| {
        value(
            &samples,
            "slidegate_store_errors_total",
            &[("store", "redis"), ("kind", kind)],
        )
    };
    assert_eq!(errors("misconfigured"), f64::from(refused));
    assert_eq!(errors("unavailable"), 0.0);

    // A master stops answering: once the node sees the cluster fail, every
    // key gets CLUSTERDOWN, the node's own keys included.
    cluster.nodes()[2].pause();
    eventually(
        Duration::from_secs(20),
        "the node to see the cluster fail",
        || async {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut cluster.nodes()[0].connection().await)
                .await
                .ok()?;
            info.contains("cluster_state:fail").then_some(())
        },
    )
    .await;
    for index in 0..10 {
        let reply = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "api", "key": format!("user-{index}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 503);
    }
    let samples = scrape(&replica.address).await;
    let errors = |kind: &str| {
        value(
            &samples,
            "slidegate_store_errors_total",
            &[("store", "redis"), ("kind", kind)],
        )
    };
    assert_eq!(errors("misconfigured"), f64::from(refused + 10));

    // One error line for the whole episode, naming the problem.
    let logs = replica.logs();
    let misconfigured: Vec<_> = logs
        .iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("Redis is misconfigured"))
        })
        .collect();
    assert_eq!(misconfigured.len(), 1, "{logs:#?}");
    assert_eq!(misconfigured[0]["level"], "ERROR");
    let problem = misconfigured[0]["problem"].as_str().unwrap();
    assert!(problem.contains("cluster"), "{problem}");
    assert!(
        !logs
            .iter()
            .any(|line| line.to_string().contains("cannot reach Redis")),
        "a redirect is not an outage: {logs:#?}"
    );
}

/// `replicas` slidegate replicas on `cluster` (found through every node as a
/// seed), sharing one key prefix, each ready.
async fn replicas_on(cluster: &PrivateCluster, replicas: usize, limit: u64) -> Arc<Vec<TestApp>> {
    replicas_with(
        cluster,
        replicas,
        policy("shared", "sliding_log", limit, "1h"),
        &unique_prefix(),
    )
    .await
}

async fn replicas_with(
    cluster: &PrivateCluster,
    replicas: usize,
    shared: slidegate_core::PolicySpec,
    prefix: &str,
) -> Arc<Vec<TestApp>> {
    let prefix = prefix.to_owned();
    let mut apps = Vec::new();
    for _ in 0..replicas {
        let mut options = TestOptions::redis(vec![shared.clone()]);
        options.redis_url = None;
        options.key_prefix = prefix.clone();
        options.settings.redis.mode = RedisMode::Cluster;
        options.settings.redis.nodes = (0..cluster.nodes().len())
            .map(|index| SecretString::from(cluster.url(index)))
            .collect();
        let app = spawn_app(options).await;
        app.eventually(
            "the replica to be ready on the cluster",
            Duration::from_secs(15),
            || app.get("/health/ready"),
            |reply| reply.status == 200,
        )
        .await;
        apps.push(app);
    }
    Arc::new(apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_admit_exactly_the_limit_of_one_key_under_150_clients() {
    let _turn = one_load_test_at_a_time().await;
    let cluster = PrivateCluster::start(3, 1).await;
    const LIMIT: u64 = 100;
    const CLIENTS: usize = 150;
    let apps = replicas_on(&cluster, 3, LIMIT).await;
    let ready = apps[0].get("/health/ready").await;
    assert_eq!(ready.body["checks"]["limiter"]["store"], "redis_cluster");
    assert_eq!(
        ready.body["checks"]["redis"]["ok"], true,
        "{:?}",
        ready.body
    );
    // Readiness reports the topology: the state, every master, its slots.
    let topology = &ready.body["checks"]["redis"]["topology"];
    assert_eq!(topology["cluster_state"], "ok", "{topology}");
    assert_eq!(topology["covered_slots"], 16_384);
    let masters = topology["masters"].as_array().unwrap();
    assert_eq!(masters.len(), 3, "{topology}");
    assert!(masters.iter().all(|master| master["reachable"] == true));
    let slots: u64 = masters
        .iter()
        .map(|master| master["slots"].as_u64().unwrap())
        .sum();
    assert_eq!(slots, 16_384);

    let start = Arc::new(Barrier::new(CLIENTS));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let apps = Arc::clone(&apps);
        let start = Arc::clone(&start);
        clients.push(tokio::spawn(async move {
            let app = &apps[client % apps.len()];
            start.wait().await;
            let mut statuses = Vec::new();
            for _ in 0..2 {
                statuses.push(app.check("shared", "one-key", None).await.status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    let admitted = statuses.iter().filter(|&&status| status == 200).count();
    let denied = statuses.iter().filter(|&&status| status == 429).count();
    assert_eq!(
        (admitted, denied, statuses.len()),
        (100, 2 * CLIENTS - 100, 2 * CLIENTS),
        "exactly the limit across the fleet, and only 200/429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_master_are_each_admitted_exactly_their_limit() {
    let _turn = one_load_test_at_a_time().await;
    let cluster = PrivateCluster::start(3, 0).await;
    const LIMIT: u64 = 3;
    const KEYS: usize = 120;
    let apps = replicas_on(&cluster, 3, LIMIT).await;
    let mut checks = Vec::new();
    for key in 0..KEYS {
        for attempt in 0..=LIMIT as usize {
            let apps = Arc::clone(&apps);
            checks.push(tokio::spawn(async move {
                let app = &apps[(key + attempt) % apps.len()];
                (
                    key,
                    app.check("shared", &format!("k{key}"), None).await.status,
                )
            }));
        }
    }
    let mut admitted = vec![0; KEYS];
    for check in checks {
        let (key, status) = check.await.unwrap();
        match status {
            200 => admitted[key] += 1,
            429 => {}
            other => panic!("key {key}: status {other}"),
        }
    }
    assert!(
        admitted.iter().all(|&count| count == LIMIT),
        "every key admitted exactly {LIMIT}: {admitted:?}"
    );
    // The keys really are spread: every master holds some of them.
    for (index, node) in cluster.nodes().iter().enumerate() {
        let mut connection = node.connection().await;
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(keys > 0, "master {index} holds none of the keys");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_slot_migration_under_load_answers_every_check_from_redis() {
    let _turn = one_load_test_at_a_time().await;
    let cluster = PrivateCluster::start(3, 0).await;
    // Limits far above the traffic: every answer should be 200, decided by
    // Redis (the default failure mode is closed, so an error would be a 503).
    let apps = replicas_on(&cluster, 3, 100_000).await;
    let node_id = |index: usize| {
        let output = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &cluster.nodes()[index].port().to_string(),
                "CLUSTER",
                "MYID",
            ])
            .output()
            .expect("redis-cli is installed");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let (from, to) = (node_id(0), node_id(1));

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut clients = Vec::new();
    for client in 0..30usize {
        let apps = Arc::clone(&apps);
        let running = Arc::clone(&running);
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut n = client;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let app = &apps[n % apps.len()];
                let reply = app.check("shared", &format!("k{}", n % 5000), None).await;
                let from_redis = reply.status == 200 && reply.body["fallback"].is_null();
                // The body of any other answer, so that a failure says why.
                let body = (!from_redis).then_some(reply.body);
                statuses.push((reply.status, from_redis, body));
                n += 30;
            }
            statuses
        }));
    }
    // Moves 2,000 slots (a third of a master's) key by key while checks run:
    // clients meet ASK during the move and MOVED after it.
    let port = cluster.nodes()[0].port().to_string();
    let resharded = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{port}")])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("redis-cli is installed")
    })
    .await
    .unwrap();
    assert!(
        resharded.status.success(),
        "redis-cli --cluster reshard: {}",
        String::from_utf8_lossy(&resharded.stdout)
    );
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let not_from_redis: Vec<_> = answers
        .iter()
        .filter(|(_, from_redis, _)| !from_redis)
        .collect();
    assert!(answers.len() > 300, "too few checks ran: {}", answers.len());
    assert!(
        not_from_redis.is_empty(),
        "{} of {} checks were not a Redis-backed 200, e.g. {:?}",
        not_from_redis.len(),
        answers.len(),
        &not_from_redis[..not_from_redis.len().min(5)]
    );
    // The redirections the replicas were sent are reported, in readiness
    // and in the metrics, under the master that sent them (the source).
    let source = format!("127.0.0.1:{}", cluster.nodes()[0].port());
    let redirected = |master: &serde_json::Value| {
        master["moved_replies"].as_u64().unwrap_or(0) + master["ask_replies"].as_u64().unwrap_or(0)
    };
    let ready = apps[0]
        .eventually(
            "readiness to report the source's redirections",
            Duration::from_secs(15),
            || apps[0].get("/health/ready"),
            |reply| {
                reply.body["checks"]["redis"]["topology"]["masters"]
                    .as_array()
                    .is_some_and(|masters| {
                        masters.iter().any(|master| {
                            master["address"] == source.as_str() && redirected(master) > 0
                        })
                    })
            },
        )
        .await;
    let samples = scrape(&apps[0].address).await;
    let sent = |kind: &str| {
        value(
            &samples,
            "slidegate_cluster_node_redirect_replies",
            &[("node", source.as_str()), ("kind", kind)],
        )
    };
    assert!(
        sent("moved") + sent("ask") > 0.0,
        "metrics show no redirection from the source; readiness: {}",
        ready.body["checks"]["redis"]["topology"]
    );
}

/// The slot of `key` as Redis computes it, asked of node `index`.
pub async fn keyslot(cluster: &PrivateCluster, index: usize, key: &str) -> i64 {
    let mut connection = cluster.nodes()[index].connection().await;
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// The port of the master serving `slot`, as node `index` sees it now.
pub async fn master_of(cluster: &PrivateCluster, index: usize, slot: i64) -> Option<u16> {
    let mut connection = cluster.nodes()[index].connection().await;
    // Each range: start, end, [host, port, id], then its replicas.
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .ok()?;
    let int = |value: &redis::Value| match value {
        redis::Value::Int(number) => Some(*number),
        _ => None,
    };
    ranges.iter().find_map(|range| {
        let (start, end) = (int(range.first()?)?, int(range.get(1)?)?);
        let redis::Value::Array(master) = range.get(2)? else {
            return None;
        };
        ((start..=end).contains(&slot))
            .then(|| int(master.get(1)?).and_then(|port| u16::try_from(port).ok()))
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_sends_only_its_own_keys_to_their_failure_mode_until_its_replica_is_promoted()
 {
    let _turn = one_load_test_at_a_time().await;
    // As operators who want a failed master to stop only its own slots run
    // it: cluster-require-full-coverage no.
    let mut cluster = PrivateCluster::start_serving_partial(3, 1).await;
    let prefix = unique_prefix();
    let open = slidegate_core::PolicySpec {
        failure_mode: Some("open".into()),
        ..policy("shared", "sliding_log", 100_000, "1h")
    };
    let apps = replicas_with(&cluster, 1, open, &prefix).await;
    let victim = cluster.nodes()[0].port();
    // Which keys the killed master serves: Redis's own slot of each key name.
    const KEYS: usize = 90;
    let mut on_victim = [false; KEYS];
    for (key, on) in on_victim.iter_mut().enumerate() {
        let slot = keyslot(&cluster, 1, &format!("{prefix}{{shared:k{key}}}:wlog")).await;
        *on = master_of(&cluster, 1, slot).await == Some(victim);
    }
    assert!(on_victim.iter().any(|&on| on) && on_victim.iter().any(|&on| !on));
    let victim_slot = keyslot(
        &cluster,
        1,
        &format!(
            "{prefix}{{shared:k{}}}:wlog",
            on_victim.iter().position(|&on| on).unwrap()
        ),
    )
    .await;

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let started = std::time::Instant::now();
    let mut clients = Vec::new();
    for client in 0..15usize {
        let apps = Arc::clone(&apps);
        let running = Arc::clone(&running);
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = client;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let key = n % KEYS;
                let sent = started.elapsed();
                let reply = apps[0].check("shared", &format!("k{key}"), None).await;
                answers.push((key, sent, reply.status, reply.body["fallback"].is_null()));
                n += 15;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A replica holds no scripts (EVALSHA reaches masters only, and Redis
    // does not replicate its script cache): the promoted one answers the
    // first decision NOSCRIPT, and the store must load the script there.
    for replica in &cluster.nodes()[3..] {
        assert_eq!(cached_scripts(replica).await, 0, "a replica holds a script");
    }
    let killed = started.elapsed();
    cluster.kill(0);
    // Its replica is promoted once the others see it failed (node timeout 2 s).
    let (promoted, new_master) = eventually(
        Duration::from_secs(30),
        "the killed master's replica to be promoted",
        || async {
            let master = master_of(&cluster, 1, victim_slot).await?;
            (master != victim).then(|| (started.elapsed(), master))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    println!(
        "killed at {killed:?}, promoted at {promoted:?}, {} checks",
        answers.len()
    );
    let errors: Vec<_> = answers.iter().filter(|answer| answer.2 != 200).collect();
    assert!(
        errors.is_empty(),
        "open mode answers 200: {:?}",
        &errors[..errors.len().min(5)]
    );
    let elsewhere_degraded: Vec<_> = answers
        .iter()
        .filter(|(key, _, _, from_redis)| !on_victim[*key] && !from_redis)
        .collect();
    assert!(
        elsewhere_degraded.is_empty(),
        "{} checks of keys on other masters were not decided by Redis, e.g. {:?}",
        elsewhere_degraded.len(),
        &elsewhere_degraded[..elsewhere_degraded.len().min(5)]
    );
    let victim_degraded = answers
        .iter()
        .filter(|(key, _, _, from_redis)| on_victim[*key] && !from_redis)
        .count();
    assert!(
        victim_degraded > 0,
        "the killed master's keys went to their failure mode"
    );
    // A few seconds after the promotion its keys are decided by Redis again.
    let late = promoted + Duration::from_secs(4);
    let late_degraded: Vec<_> = answers
        .iter()
        .filter(|(key, sent, _, from_redis)| on_victim[*key] && *sent > late && !from_redis)
        .collect();
    // The metrics say which master failed, and that the topology changed.
    // (The replica's admin routes are on its public listener in tests.)
    let samples = scrape(&apps[0].address).await;
    let node = |port: u16, result: &str| {
        value(
            &samples,
            "slidegate_cluster_node_checks_total",
            &[("node", &format!("127.0.0.1:{port}")), ("result", result)],
        )
    };
    assert!(
        node(victim, "failed") + node(victim, "timeout") > 0.0,
        "the killed master's failed checks are counted under its address"
    );
    let other = cluster.nodes()[1].port();
    assert!(node(other, "decided") > 0.0);
    assert_eq!(node(other, "failed") + node(other, "timeout"), 0.0);
    assert!(value(&samples, "slidegate_cluster_topology_changes_total", &[]) >= 1.0);
    assert!(
        late_degraded.is_empty(),
        "{} checks of the failed master's keys sent 4 s after the promotion were not decided by Redis, e.g. {:?}",
        late_degraded.len(),
        &late_degraded[..late_degraded.len().min(5)]
    );
    let promoted_node = cluster
        .nodes()
        .iter()
        .find(|node| node.port() == new_master)
        .unwrap();
    assert!(
        cached_scripts(promoted_node).await >= 1,
        "the promoted master decided without the script loaded on it"
    );
}

/// How many scripts `node`'s script cache holds (`INFO memory`).
async fn cached_scripts(node: &crate::private_redis::PrivateRedis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut node.connection().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("INFO memory reports number_of_cached_scripts")
}

/// A replica on `cluster` (TLS, password protected) with `tls` as its
/// `redis.tls_*` files and `password` in every node URL; not waited on.
async fn tls_replica_on(
    cluster: &PrivateCluster,
    password: &str,
    ca: Option<&std::path::Path>,
    client: Option<&crate::private_redis::Certificate>,
) -> TestApp {
    let mut options = TestOptions::redis(vec![policy("shared", "sliding_log", 3, "1h")]);
    options.redis_url = None;
    options.key_prefix = unique_prefix();
    options.settings.redis.mode = RedisMode::Cluster;
    options.settings.redis.nodes = cluster
        .nodes()
        .iter()
        .map(|node| SecretString::from(format!("rediss://:{password}@127.0.0.1:{}", node.port())))
        .collect();
    options.settings.redis.tls_ca_file = ca.map(std::path::Path::to_path_buf);
    options.settings.redis.tls_cert_file = client.map(|client| client.cert.clone());
    options.settings.redis.tls_key_file = client.map(|client| client.key.clone());
    spawn_app(options).await
}

/// Readiness's Redis error once it names `reason` (past a probe that ran out
/// of time on a loaded machine, also a true answer).
async fn redis_error_naming(app: &TestApp, reason: &str) -> String {
    app.eventually(
        &format!("readiness to name {reason:?}"),
        Duration::from_secs(15),
        || app.get("/health/ready"),
        |reply| {
            reply.status == 503
                && reply.body["checks"]["redis"]["error"]
                    .as_str()
                    .is_some_and(|error| error.contains(reason))
        },
    )
    .await
    .body["checks"]["redis"]["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_a_password_is_decided_exactly_and_refuses_what_it_should() {
    use crate::private_redis::{CLUSTER_PASSWORD, TestPki};
    let pki = TestPki::new();
    let cluster = PrivateCluster::start_tls(3, 0, &pki).await;

    // The CA, a client certificate and the password: ready, every master
    // reached over TLS, and each key admitted exactly its limit.
    let app = tls_replica_on(
        &cluster,
        CLUSTER_PASSWORD,
        Some(&pki.ca.cert),
        Some(&pki.client),
    )
    .await;
    let ready = app
        .eventually(
            "the replica to be ready on the TLS cluster",
            Duration::from_secs(15),
            || app.get("/health/ready"),
            |reply| reply.status == 200,
        )
        .await;
    let topology = &ready.body["checks"]["redis"]["topology"];
    assert_eq!(topology["cluster_state"], "ok", "{topology}");
    let masters = topology["masters"].as_array().unwrap();
    assert_eq!(masters.len(), 3, "{topology}");
    assert!(masters.iter().all(|master| master["reachable"] == true));
    // The TLS ports: the cluster told a TLS client where its TLS listeners are.
    let tls_ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    for master in masters {
        let address = master["address"].as_str().unwrap();
        let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
        assert!(tls_ports.contains(&port), "{address} is not a TLS port");
    }
    for key in 0..30 {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(app.check("shared", &format!("k{key}"), None).await.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429], "key k{key}");
    }
    for (index, node) in cluster.nodes().iter().enumerate() {
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut node.connection().await)
            .await
            .unwrap();
        assert!(keys > 0, "master {index} holds none of the keys");
    }

    // No private CA: the system's roots do not know the test CA.
    let untrusting = tls_replica_on(&cluster, CLUSTER_PASSWORD, None, Some(&pki.client)).await;
    let error = redis_error_naming(&untrusting, "invalid peer certificate: UnknownIssuer").await;
    assert!(!error.contains(CLUSTER_PASSWORD), "{error}");
    assert_eq!(untrusting.check("shared", "k0", None).await.status, 503);

    // No client certificate: the nodes refuse the handshake.
    let anonymous = tls_replica_on(&cluster, CLUSTER_PASSWORD, Some(&pki.ca.cert), None).await;
    let error = redis_error_naming(&anonymous, "CertificateRequired").await;
    assert!(!error.contains(CLUSTER_PASSWORD), "{error}");

    // The wrong password: refused, and the password is never repeated.
    let wrong = tls_replica_on(
        &cluster,
        "not-the-password",
        Some(&pki.ca.cert),
        Some(&pki.client),
    )
    .await;
    let error = redis_error_naming(&wrong, "AuthenticationFailed").await;
    assert!(!error.contains("not-the-password"), "{error}");
}

/// `INFO errorstats` count of `code` replies `node` has sent.
async fn replies_of(node: &crate::private_redis::PrivateRedis, code: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(&mut node.connection().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("errorstat_{code}:count=")))
        .and_then(|count| count.split(',').next()?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_a_slot_in_mid_migration_waits_out_tryagain_and_is_answered_by_redis() {
    let cluster = PrivateCluster::start(3, 0).await;
    let prefix = unique_prefix();
    let apps = replicas_with(
        &cluster,
        1,
        policy("shared", "sliding_log", 100, "1h"),
        &prefix,
    )
    .await;
    let app = &apps[0];
    let first = app.check("shared", "moving", None).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // The master holding the key, and its slot.
    let mut holder = None;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut node.connection().await)
            .await
            .unwrap();
        // The limiter's log, not the replicas' heartbeat set.
        if let Some(key) = keys.into_iter().find(|key| key.ends_with(":wlog")) {
            holder = Some((index, key));
        }
    }
    let (source, key) = holder.expect("one master holds the log");
    let target = (source + 1) % cluster.nodes().len();
    let node = |index: usize| &cluster.nodes()[index];
    let id = |index: usize| async move {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut node(index).connection().await)
            .await
            .unwrap();
        id
    };
    let (source_id, target_id) = (id(source).await, id(target).await);
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut node(source).connection().await)
        .await
        .unwrap();
    let setslot = |index: usize, state: &'static str, id: String| async move {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query_async(&mut node(index).connection().await)
            .await
            .unwrap();
    };
    // The slot's move begins, as `redis-cli --cluster reshard` begins it.
    setslot(target, "IMPORTING", source_id.clone()).await;
    setslot(source, "MIGRATING", target_id.clone()).await;

    // The script names the log and the log of the previous layout (which
    // does not exist): a source that holds one of a call's keys but not the
    // other answers TRYAGAIN until the move completes.
    let tryagain_before = replies_of(node(source), "TRYAGAIN").await;
    let checking = {
        let apps = Arc::clone(&apps);
        tokio::spawn(async move { apps[0].check("shared", "moving", None).await })
    };
    eventually(
        Duration::from_secs(10),
        "the source to answer TRYAGAIN",
        || async { (replies_of(node(source), "TRYAGAIN").await > tryagain_before).then_some(()) },
    )
    .await;

    // The move completes: the key goes to the target, then every master
    // learns the slot's new owner (target first, as redis-cli does).
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(node(target).port())
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&key)
        .query_async(&mut node(source).connection().await)
        .await
        .unwrap();
    setslot(target, "NODE", target_id.clone()).await;
    for index in (0..cluster.nodes().len()).filter(|&index| index != target) {
        setslot(index, "NODE", target_id.clone()).await;
    }

    // Within the command timeout: retried, not given up on or left waiting
    // for redis-rs's default back-off (over a second).
    let answered = checking.await.unwrap();
    assert_eq!(answered.status, 200, "{}", answered.body);
    assert!(answered.body["fallback"].is_null(), "{}", answered.body);
    assert_eq!(answered.body["remaining"], 98, "{}", answered.body);
}
