//! `spawn_app`: the real server on port 0, on the machine's Redis, with data no other test can see; `Replica`: the binary in a process of its own.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use slidegate::configuration::{LogSettings, Settings, TracingSettings};
use slidegate::startup::Application;
use slidegate_core::PolicySpec;
use slidegate_core::{Clock, SystemClock};

/// The Redis every test shares; keys are isolated by a unique prefix per test.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test (nor an earlier run) uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "sgtest:{}:{nanos}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn policy(name: &str, algorithm: &str, limit: u64, window: &str) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        algorithm: algorithm.into(),
        limit,
        window: window.into(),
        cost: 1,
        matches: None,
        key: None,
        failure_mode: None,
    }
}

/// What a test may change about the replica it spawns.
pub struct TestOptions {
    pub redis_url: Option<String>,
    pub key_prefix: String,
    pub policies: Vec<PolicySpec>,
    pub clock: Arc<dyn Clock>,
    /// Set: policies and API keys come from this database.
    pub postgres_url: Option<String>,
    /// Set: the admin API is on with this token.
    pub admin_token: Option<String>,
    /// Every other setting (timeouts, failure modes, breaker, deny cache);
    /// the fields above and the bind address override it.
    pub settings: Settings,
}

impl TestOptions {
    /// A replica on the shared Redis with a fresh key prefix.
    ///
    /// Its Redis timeouts are 1 s, not the production 50/100 ms: most tests
    /// are about decisions, and on a loaded 2-core CI a scheduling stall can
    /// outlast 50 ms, turning a decision into a 503 for the wrong reason.
    /// Tests about timeouts use [`TestOptions::with_production_timeouts`].
    pub fn redis(policies: Vec<PolicySpec>) -> Self {
        let mut settings = Settings::default();
        settings.redis.command_timeout = Duration::from_secs(1);
        settings.redis.connect_timeout = Duration::from_secs(1);
        Self {
            redis_url: Some(redis_url()),
            key_prefix: unique_prefix(),
            policies,
            clock: Arc::new(SystemClock),
            postgres_url: None,
            admin_token: None,
            settings,
        }
    }

    /// A replica on the shared Redis (key prefix `key_prefix`, so several
    /// replicas can share limits) whose policies come from `database`, with the admin API on.
    pub fn catalog(database: &TestDatabase, key_prefix: &str) -> Self {
        Self {
            key_prefix: key_prefix.to_owned(),
            postgres_url: Some(database.url.clone()),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            ..Self::redis(Vec::new())
        }
    }

    /// The built-in Redis timeouts: for tests about them, and for tests of an
    /// unreachable Redis, where each check waits out the connect timeout.
    pub fn with_production_timeouts(mut self) -> Self {
        let defaults = Settings::default().redis;
        self.settings.redis.command_timeout = defaults.command_timeout;
        self.settings.redis.connect_timeout = defaults.connect_timeout;
        self
    }

    /// A replica on the embedded store.
    pub fn memory(policies: Vec<PolicySpec>) -> Self {
        Self {
            redis_url: None,
            ..Self::redis(policies)
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// The admin listener, when the test set `server.admin_bind` (its address becomes port 0).
    pub admin_address: Option<String>,
    /// The Envoy rate-limit gRPC listener, with `envoy_rls.bind` set (it becomes port 0).
    pub envoy_address: Option<std::net::SocketAddr>,
    pub client: reqwest::Client,
}

/// The admin token of test replicas.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The Postgres server tests create their databases on.
pub fn postgres_server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own for one test, created from the `postgres`
/// maintenance database and dropped (best effort) when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "sgtest_{}_{nanos}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = maintenance_client().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let url = format!("{}/{name}", postgres_server_url());
        Self { name, url }
    }

    /// A client on this database, for looking at what the replicas wrote.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("the test database answers");
        tokio::spawn(connection);
        client
    }
}

async fn maintenance_client() -> tokio_postgres::Client {
    let url = format!("{}/postgres", postgres_server_url());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the machine's Postgres answers (bash .ci/run starts it)");
    tokio::spawn(connection);
    client
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we may block: a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let admin = maintenance_client().await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

fn init_test_logging() {
    // Quiet unless asked: TEST_LOG=1 cargo test
    if std::env::var_os("TEST_LOG").is_some() {
        // Logs only: tests that need traces run the binary in a process of its own.
        let _logs = slidegate::telemetry::init(
            &LogSettings {
                level: "debug".into(),
                ..LogSettings::default()
            },
            &TracingSettings::default(),
        );
    }
}

pub async fn spawn_app(options: TestOptions) -> TestApp {
    init_test_logging();
    let mut settings = options.settings;
    settings.server.bind = "127.0.0.1:0".into();
    if settings.server.admin_bind.is_some() {
        settings.server.admin_bind = Some("127.0.0.1:0".into());
    }
    settings.server.workers = Some(2);
    if settings.envoy_rls.bind.is_some() {
        settings.envoy_rls.bind = Some(([127, 0, 0, 1], 0).into());
    }
    settings.redis.url = options.redis_url.map(Into::into);
    settings.limiter.key_prefix = options.key_prefix;
    settings.policies = Some(options.policies);
    settings.postgres.url = options.postgres_url.map(Into::into);
    settings.admin.token = options.admin_token.map(Into::into);
    let valid = settings
        .validate()
        .expect("the test app's settings are valid");
    let application = Application::build_with_clock(valid, options.clock)
        .await
        .expect("the test app builds");
    let address = format!("http://{}", application.address());
    let admin_address = application
        .admin_address()
        .map(|admin| format!("http://{admin}"));
    let envoy_address = application.envoy_rls_address();
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
        admin_address,
        envoy_address,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(200)
            .build()
            .unwrap(),
    }
}

/// A decision as a test reads it.
#[derive(Debug)]
pub struct CheckReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl CheckReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub async fn post_check(&self, body: serde_json::Value) -> CheckReply {
        self.post_raw("application/json", body.to_string()).await
    }

    pub async fn check(&self, policy: &str, key: &str, cost: Option<u64>) -> CheckReply {
        let mut body = serde_json::json!({ "policy": policy, "key": key });
        if let Some(cost) = cost {
            body["cost"] = cost.into();
        }
        self.post_check(body).await
    }

    pub async fn post_raw(&self, content_type: &str, body: impl Into<reqwest::Body>) -> CheckReply {
        let response = self
            .client
            .post(format!("{}/v1/check", self.address))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("the request reaches the app");
        read_reply(response).await
    }

    /// A check presenting `api_key` as `Authorization: Bearer`.
    pub async fn check_with_key(&self, policy: &str, key: &str, api_key: &str) -> CheckReply {
        let response = self
            .client
            .post(format!("{}/v1/check", self.address))
            .bearer_auth(api_key)
            .json(&serde_json::json!({ "policy": policy, "key": key }))
            .send()
            .await
            .expect("the request reaches the app");
        read_reply(response).await
    }

    /// An admin request with the test token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> CheckReply {
        self.admin_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    /// An admin request with `token` (none: no `Authorization` header), on
    /// the admin listener if the replica has one.
    pub async fn admin_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> CheckReply {
        // On the admin listener when there is one, as an operator would.
        let base = self.admin_address.as_deref().unwrap_or(&self.address);
        let mut request = self
            .client
            .request(method, format!("{base}/v1/admin{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the request reaches the app");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        CheckReply {
            status,
            headers,
            body: if text.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"))
            },
        }
    }

    /// Repeats `probe` until `accept` holds for its reply, failing the test after `deadline`.
    pub async fn eventually<F, Fut>(
        &self,
        what: &str,
        deadline: Duration,
        mut probe: F,
        accept: impl Fn(&CheckReply) -> bool,
    ) -> CheckReply
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = CheckReply>,
    {
        let give_up = Instant::now() + deadline;
        loop {
            let reply = probe().await;
            if accept(&reply) {
                return reply;
            }
            assert!(
                Instant::now() < give_up,
                "not within {deadline:?}: {what}; last reply {} {:?}",
                reply.status,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A check that reports transport errors (a reset, a refused or dropped
    /// connection, an unreadable body) as `Err` rather than panicking, so a
    /// test can count them apart from statuses.
    pub async fn try_check(&self, policy: &str, key: &str) -> Result<CheckReply, String> {
        let response = self
            .client
            .post(format!("{}/v1/check", self.address))
            .json(&serde_json::json!({ "policy": policy, "key": key }))
            .send()
            .await
            .map_err(|error| format!("{error:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|error| format!("{error:?}"))?;
        let body = serde_json::from_str(&text)
            .map_err(|_| format!("status {status}: body is not JSON: {text:?}"))?;
        Ok(CheckReply {
            status,
            headers,
            body,
        })
    }

    /// `GET /health/ready`: the readiness body (whatever its status).
    pub async fn readiness(&self) -> serde_json::Value {
        self.get("/health/ready").await.body
    }

    /// The limiter's part of readiness: breaker, failure modes, counters.
    pub async fn limiter_health(&self) -> serde_json::Value {
        self.readiness().await["checks"]["limiter"].clone()
    }

    /// `GET /v1/forward-auth` for a protected request (`X-Forwarded-Method`,
    /// `X-Forwarded-Uri`) with extra `headers`.
    pub async fn forward_auth(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> CheckReply {
        let mut request = self
            .client
            .get(format!("{}/v1/forward-auth", self.address))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read_reply(request.send().await.expect("the request reaches the app")).await
    }

    pub async fn get(&self, path: &str) -> CheckReply {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the request reaches the app");
        read_reply(response).await
    }

    /// The admin listener's address; the test must have set `server.admin_bind`.
    pub fn admin_listener(&self) -> &str {
        self.admin_address
            .as_deref()
            .expect("the test set server.admin_bind")
    }
}

pub async fn read_reply(response: reqwest::Response) -> CheckReply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    CheckReply {
        status,
        headers,
        body,
    }
}

/// A raw Redis connection for inspecting what the scripts wrote.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the machine's Redis answers (bash .ci/run starts it)")
}

/// Units a `sliding_log` key holds in Redis: the sum over the `<time>:<units>`
/// entries of its log, `<tagged key>:wlog` (see `lua/sliding_log.lua`).
pub async fn sliding_log_units(
    redis: &mut redis::aio::MultiplexedConnection,
    log_key: &str,
) -> u64 {
    let entries: Vec<String> = redis::cmd("ZRANGE")
        .arg(log_key)
        .arg(0)
        .arg(-1)
        .query_async(redis)
        .await
        .unwrap();
    entries
        .iter()
        .map(|entry| {
            let (_, units) = entry.rsplit_once(':').expect("a <time>:<units> entry");
            units.parse::<u64>().expect("whole units")
        })
        .sum()
}

/// Waits until `condition` holds, re-checking whenever `changed` is notified,
/// and fails the test at `deadline`. No fixed sleeps: it returns as soon as
/// the condition is true.
pub async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    changed: &Notify,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        let left = give_up.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {deadline:?} waiting for {what}"
        );
        // A notification sent between the check above and this wait is kept
        // as a permit by `notify_one`, so none is missed.
        let _ = tokio::time::timeout(left, changed.notified()).await;
    }
}

/// The real `slidegate` binary in a process of its own, for what a process can
/// set up only once: the global log subscriber and the tracer. Its JSON log
/// lines are collected; it is killed when dropped (also when a test fails).
pub struct Replica {
    pub address: String,
    /// The admin listener's, when `SLIDEGATE__SERVER__ADMIN_BIND` was given.
    pub admin_address: Option<String>,
    /// The Envoy rate-limit gRPC listener's, when `SLIDEGATE__ENVOY_RLS__BIND` was given.
    pub envoy_rls_address: Option<std::net::SocketAddr>,
    pub client: reqwest::Client,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    logged: Arc<Notify>,
    child: Option<Child>,
    _config: tempfile::NamedTempFile,
}

impl Replica {
    /// Starts the binary with `config` as its file and only the `env` given
    /// (plus JSON logs on port 0): nothing leaks in from the test's environment.
    pub async fn spawn(config: &str, env: &[(&str, String)]) -> Replica {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_slidegate"));
        command
            .env_clear()
            .arg("--config")
            .arg(file.path())
            .env("SLIDEGATE__SERVER__BIND", "127.0.0.1:0")
            .env("SLIDEGATE__SERVER__WORKERS", "1")
            .env("SLIDEGATE__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the slidegate binary starts");
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Notify::new());
        {
            let (logs, logged) = (Arc::clone(&logs), Arc::clone(&logged));
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let line = match serde_json::from_str(&line) {
                        Ok(json) => json,
                        Err(_) => serde_json::Value::String(line),
                    };
                    logs.lock().unwrap().push(line);
                    logged.notify_one();
                }
            });
        }
        let mut replica = Replica {
            address: String::new(),
            admin_address: None,
            envoy_rls_address: None,
            client: reqwest::Client::new(),
            logs,
            logged,
            child: Some(child),
            _config: file,
        };
        let listening = replica
            .wait_for_log("the replica to listen", |line| {
                line["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("slidegate is listening"))
            })
            .await;
        let address = listening["address"]
            .as_str()
            .expect("the listening line names the address");
        replica.address = format!("http://{address}");
        replica.admin_address = listening["admin_address"]
            .as_str()
            .map(|admin| format!("http://{admin}"));
        replica.envoy_rls_address = listening["envoy_rls_address"]
            .as_str()
            .map(|envoy| envoy.parse().expect("a socket address"));
        replica
    }

    /// The first log line for which `matches` holds, waiting for it up to 20 s.
    pub async fn wait_for_log(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let logs = Arc::clone(&self.logs);
        wait_until(what, Duration::from_secs(20), &self.logged, || {
            logs.lock()
                .unwrap()
                .iter()
                .find(|line| matches(line))
                .cloned()
        })
        .await
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM, as an orchestrator does, and waits up to 20 s for the exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_for_exit(Duration::from_secs(20)).await
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) to the running replica.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the replica is running");
        let signalled = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(signalled.success(), "kill -{name} failed");
    }

    /// Waits for the replica to exit, failing the test after `within`.
    pub async fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the replica is running");
        let pid = child.id().to_string();
        let exited = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(within, exited).await {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                // The waiting thread owns the child now: kill it by pid so
                // nothing outlives the failed test.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("the replica did not exit within {within:?}")
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `probe` until it yields `Some`, failing the test after `within`.
/// Waiting on a condition, not for a time: the test goes on as soon as it holds.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    loop {
        ticks.tick().await;
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
    }
}

/// Tests that put many concurrent clients on the machine take turns, so each
/// measures its own load rather than its neighbours' (CI has 2 cores; the
/// exactness and fault tests each run 20 to 160 clients plus replicas).
pub async fn one_load_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
