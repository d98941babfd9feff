//! `spawn_app`: the real server on port 0, on the machine's Redis, with data no other test can see.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slidegate::configuration::{LogSettings, PolicySettings, Settings};
use slidegate::limiter::{Clock, SystemClock};
use slidegate::startup::Application;

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

pub fn policy(name: &str, algorithm: &str, limit: u64, window: &str) -> PolicySettings {
    PolicySettings {
        name: name.into(),
        algorithm: algorithm.into(),
        limit,
        window: window.into(),
        cost: 1,
        failure_mode: None,
    }
}

/// What a test may change about the replica it spawns.
pub struct TestOptions {
    pub redis_url: Option<String>,
    pub key_prefix: String,
    pub policies: Vec<PolicySettings>,
    pub clock: Arc<dyn Clock>,
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
    pub fn redis(policies: Vec<PolicySettings>) -> Self {
        let mut settings = Settings::default();
        settings.redis.command_timeout = Duration::from_secs(1);
        settings.redis.connect_timeout = Duration::from_secs(1);
        Self {
            redis_url: Some(redis_url()),
            key_prefix: unique_prefix(),
            policies,
            clock: Arc::new(SystemClock),
            settings,
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
    pub fn memory(policies: Vec<PolicySettings>) -> Self {
        Self {
            redis_url: None,
            ..Self::redis(policies)
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
}

fn init_test_logging() {
    // Quiet unless asked: TEST_LOG=1 cargo test
    if std::env::var_os("TEST_LOG").is_some() {
        slidegate::telemetry::init(&LogSettings {
            level: "debug".into(),
            ..LogSettings::default()
        });
    }
}

pub async fn spawn_app(options: TestOptions) -> TestApp {
    init_test_logging();
    let mut settings = options.settings;
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = Some(2);
    settings.redis.url = options.redis_url.map(Into::into);
    settings.limiter.key_prefix = options.key_prefix;
    settings.policies = Some(options.policies);
    let application = Application::build_with_clock(&settings, options.clock)
        .await
        .expect("the test app builds");
    let address = format!("http://{}", application.address());
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
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

    pub async fn get(&self, path: &str) -> CheckReply {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the request reaches the app");
        read_reply(response).await
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
