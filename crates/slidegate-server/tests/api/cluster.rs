//! Redis Cluster is not supported (yet): a replica pointed at a cluster node says so in readiness, and the node's redirects are counted and logged as a misconfiguration.

use std::time::Duration;

use crate::helpers::{Replica, eventually};
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
            body["checks"]["redis"]["error"]
                .is_string()
                .then_some((status, body))
        },
    )
    .await
    .1;
    assert_eq!(ready["ready"], false, "{ready}");
    let error = ready["checks"]["redis"]["error"].as_str().unwrap();
    assert!(
        error.contains("Redis is a cluster node") && error.contains("not supported"),
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
