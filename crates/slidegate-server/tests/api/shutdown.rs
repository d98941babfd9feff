//! Graceful shutdown of the real binary: readiness fails first, requests are still served during the drain, in-flight ones finish, exit code 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::{Replica, eventually};

const CONFIG: &str = r#"
[[policies]]
name = "p"
algorithm = "sliding_log"
limit = 1000
window = "1m"
"#;

const BODY: &str = r#"{"policy": "p", "key": "in-flight"}"#;

fn host_port(address: &str) -> &str {
    address.trim_start_matches("http://")
}

async fn status_of(request: reqwest::RequestBuilder) -> Option<u16> {
    request
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_at_once_keeps_serving_through_the_drain_finishes_in_flight_requests_and_exits_0()
 {
    let mut replica = Replica::spawn(
        CONFIG,
        &[
            ("SLIDEGATE__SERVER__DRAIN_DELAY", "1s".into()),
            ("SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT", "5s".into()),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ready = format!("{}/health/ready", replica.address);
    let check = format!("{}/v1/check", replica.address);
    assert_eq!(status_of(client.get(&ready)).await, Some(200));
    let before = client
        .post(&check)
        .json(&serde_json::json!({"policy": "p", "key": "before"}))
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);
    assert_eq!(
        before.headers().get("connection"),
        None,
        "kept alive before the drain"
    );

    // A request in flight across the whole shutdown: headers and half its
    // body now, the rest once the listener has closed.
    let mut in_flight = TcpStream::connect(host_port(&replica.address)).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (first, rest) = BODY.split_at(10);
    write!(
        in_flight,
        "POST /v1/check HTTP/1.1\r\nHost: slidegate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        BODY.len()
    )
    .unwrap();
    in_flight.flush().unwrap();

    let signalled = Instant::now();
    replica.signal("TERM");
    eventually(
        Duration::from_millis(500),
        "readiness to answer 503",
        || async { (status_of(client.get(&ready)).await == Some(503)).then_some(()) },
    )
    .await;
    // Still within the drain: new checks are answered as usual, on a
    // connection closed after the answer, so that a proxy keeping
    // connections alive stops reusing this replica's.
    let during_drain = client
        .post(&check)
        .json(&serde_json::json!({"policy": "p", "key": "k"}))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "the drain check came too late to prove anything"
    );
    assert_eq!(during_drain.status(), 200, "a check during the drain");
    assert_eq!(
        during_drain
            .headers()
            .get("connection")
            .map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "a response during the drain closes its connection"
    );

    // After the drain the listener closes…
    eventually(Duration::from_secs(5), "the listener to close", || async {
        TcpStream::connect(host_port(&replica.address))
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "closed before the drain ended"
    );

    // …and the request in flight still gets its answer.
    in_flight.write_all(rest.as_bytes()).unwrap();
    let mut response = String::new();
    let mut buffer = [0; 4096];
    while !response.contains("\r\n\r\n{") || !response.ends_with('}') {
        let read = in_flight
            .read(&mut buffer)
            .expect("the in-flight request is answered");
        assert!(
            read > 0,
            "connection closed before the answer: {response:?}"
        );
        response.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "begun before the drain, answered during it: the connection closes: {response}"
    );

    let status = replica.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_replica_the_same_way_with_exit_code_0() {
    let mut replica = Replica::spawn(
        CONFIG,
        &[("SLIDEGATE__SERVER__DRAIN_DELAY", "100ms".into())],
    )
    .await;
    replica.signal("INT");
    let status = replica.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let logs = replica.logs();
    assert!(
        logs.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains("stop signal received"))),
        "{logs:?}"
    );
}

#[tokio::test]
async fn an_idle_client_connection_is_closed_after_server_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut options =
        crate::helpers::TestOptions::memory(vec![crate::helpers::policy("p", "gcra", 100, "1m")]);
    // Far below actix's own default (5 s), so the test shows the setting is applied.
    options.settings.server.keep_alive = Duration::from_millis(300);
    let app = crate::helpers::spawn_app(options).await;
    let mut connection = tokio::net::TcpStream::connect(host_port(&app.address))
        .await
        .unwrap();
    connection
        .write_all(
            format!(
                "POST /v1/check HTTP/1.1\r\nHost: slidegate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0; 4096];
    while !response.ends_with(b"}") {
        let read = connection.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before the answer");
        response.extend_from_slice(&buffer[..read]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();

    // Kept alive for about keep_alive, then closed by the replica.
    let closed = tokio::time::timeout(Duration::from_secs(3), connection.read(&mut buffer))
        .await
        .expect("the idle connection was still open 3 s after the answer");
    assert_eq!(closed.unwrap(), 0, "EOF, not more data");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(250),
        "closed after {idle:?}, before keep_alive (300 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_drains_and_closes_with_the_public_one_and_finishes_its_in_flight_request()
 {
    let database = crate::helpers::TestDatabase::create().await;
    let mut replica = Replica::spawn(
        CONFIG,
        &[
            ("SLIDEGATE__SERVER__DRAIN_DELAY", "1s".into()),
            ("SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT", "5s".into()),
            ("SLIDEGATE__SERVER__ADMIN_BIND", "127.0.0.1:0".into()),
            ("SLIDEGATE__POSTGRES__URL", database.url.clone()),
            (
                "SLIDEGATE__ADMIN__TOKEN",
                crate::helpers::ADMIN_TOKEN.to_owned(),
            ),
        ],
    )
    .await;
    let admin = replica
        .admin_address
        .clone()
        .expect("the listening line names the admin address");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for base in [&replica.address, &admin] {
        assert_eq!(
            status_of(client.get(format!("{base}/health/ready"))).await,
            Some(200)
        );
    }
    // An admin write in flight across the shutdown: headers and half its
    // body now, the rest once both listeners have closed.
    let policy = r#"{"name": "in-flight", "algorithm": "gcra", "limit": 5, "window": "1m"}"#;
    let (first, rest) = policy.split_at(20);
    let mut in_flight = TcpStream::connect(host_port(&admin)).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        in_flight,
        "POST /v1/admin/policies HTTP/1.1\r\nHost: slidegate\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        crate::helpers::ADMIN_TOKEN,
        policy.len()
    )
    .unwrap();
    in_flight.flush().unwrap();

    let signalled = Instant::now();
    replica.signal("TERM");
    for base in [&replica.address, &admin] {
        eventually(
            Duration::from_millis(500),
            "readiness to answer 503 on both listeners",
            || async {
                (status_of(client.get(format!("{base}/health/ready"))).await == Some(503))
                    .then_some(())
            },
        )
        .await;
    }
    // Operators are still served during the drain, on connections that close.
    let scrape = client
        .get(format!("{admin}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "the scrape came too late to prove anything"
    );
    assert_eq!(scrape.status(), 200);
    assert_eq!(
        scrape.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );

    // Both listeners close after the drain...
    for base in [&replica.address, &admin] {
        eventually(Duration::from_secs(5), "the listener to close", || async {
            TcpStream::connect(host_port(base)).is_err().then_some(())
        })
        .await;
    }
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "closed before the drain ended"
    );
    // ...and the admin write in flight still gets its answer.
    in_flight.write_all(rest.as_bytes()).unwrap();
    let mut response = String::new();
    let mut buffer = [0; 4096];
    while !response.contains("\r\n\r\n{") || !response.ends_with('}') {
        let read = in_flight
            .read(&mut buffer)
            .expect("the in-flight write is answered");
        assert!(
            read > 0,
            "connection closed before the answer: {response:?}"
        );
        response.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let status = replica.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}
