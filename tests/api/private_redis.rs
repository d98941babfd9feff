//! Fault injection on real Redis: a private `redis-server` a test can kill, restart, pause and inspect, and a proxy that delays its replies.
//!
//! Everything listens on 127.0.0.1 only, and every process or task a test
//! starts here stops when its guard is dropped, also when the test fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A free port on 127.0.0.1: bind one, note it, close it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` owned by one test, stopped when dropped (also when the test fails).
pub struct PrivateRedis {
    port: u16,
    process: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            process: None,
        };
        redis.restart();
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a fresh server (no data, no scripts) on the same port and
    /// returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs it)");
        // Wait for the server to say it is ready, reading its log on a thread
        // that keeps draining it afterwards so the server never blocks on it.
        let (ready, is_ready) = mpsc::channel();
        let log = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                }
            }
        });
        self.process = Some(child);
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .expect("redis-server did not become ready within 10 s");
    }

    /// SIGKILL: the server vanishes mid-conversation, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing, as a hung server does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the paused server carries on, answering everything queued meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the private Redis answers")
    }

    /// How many times the server has run `command` (from `INFO commandstats`):
    /// the round-trips slidegate made, counted by Redis itself.
    pub async fn calls_of(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) process too.
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 that delays every reply from its target by a
/// settable time: a slow Redis, seen from the app. Requests pass at once;
/// replies keep their order. Stops (with all its connections) when dropped.
pub struct DelayingProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayingProxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let delay = Arc::clone(&delay);
                connections.spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let (mut from_app, mut to_app) = inbound.into_split();
                    let (mut from_redis, mut to_redis) = outbound.into_split();
                    let requests = tokio::io::copy(&mut from_app, &mut to_redis);
                    let replies = async {
                        let (chunks, mut due_chunks) = tokio::sync::mpsc::unbounded_channel();
                        let read = async move {
                            let mut buffer = vec![0; 16 * 1024];
                            while let Ok(read @ 1..) = from_redis.read(&mut buffer).await {
                                let due = tokio::time::Instant::now()
                                    + Duration::from_millis(delay.load(Ordering::Relaxed));
                                if chunks.send((due, buffer[..read].to_vec())).is_err() {
                                    break;
                                }
                            }
                        };
                        let write = async {
                            while let Some((due, chunk)) = due_chunks.recv().await {
                                // The delay is the fault under test, not a wait for a condition.
                                tokio::time::sleep_until(due).await;
                                if to_app.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        };
                        tokio::join!(read, write);
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = replies => {}
                    }
                });
            }
        });
        Self {
            port,
            delay_ms,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
