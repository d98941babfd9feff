//! A private `redis-server` the test can kill and restart: the replica answers 503 meanwhile, then recovers by itself.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{TestOptions, policy, spawn_app};

/// A `redis-server` owned by one test, stopped when dropped (also when the test fails).
struct PrivateRedis {
    port: u16,
    process: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs it)");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_fail_closed_while_redis_is_down_and_recover_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let mut options = TestOptions::redis(vec![policy("p", "sliding_log", 100, "1m")]);
    options.redis_url = Some(redis.url());
    let app = spawn_app(options).await;
    assert_eq!(app.check("p", "k", None).await.status, 200);

    redis.kill();
    for _ in 0..5 {
        let reply = app.check("p", "k", None).await;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["error"], "limiter_unavailable");
    }
    assert_eq!(app.get("/health/ready").await.status, 503);

    // A fresh server has no scripts and no state: the replica reconnects,
    // reloads the scripts after NOSCRIPT and decides again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let recovered = loop {
        let reply = app.check("p", "k", None).await;
        if reply.status == 200 {
            break reply;
        }
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert!(Instant::now() < deadline, "no recovery within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(recovered.body["remaining"], 99);
    assert_eq!(app.get("/health/ready").await.status, 200);
}
