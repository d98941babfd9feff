//! Settings: built-in defaults, then an optional TOML file, then `SLIDEGATE__SECTION__KEY` environment variables.
//!
//! Everything is validated once, at start-up, into typed values; an invalid
//! setting stops the process with a message naming the field and the problem,
//! rather than surfacing later as a strange decision.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::limiter::breaker::MAX_PROBES;
use crate::limiter::{
    Algorithm, BreakerSettings, FailoverSettings, FailureMode, Policy, PolicyError, PolicyName,
    PolicySet, Window,
};

/// Prefix of every environment variable read: `SLIDEGATE__REDIS__URL` sets `redis.url`.
pub const ENV_PREFIX: &str = "SLIDEGATE";
/// Nesting separator in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl ConfigurationError {
    fn invalid(field: impl Into<String>, problem: impl ToString) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// Every setting of a replica. Each field has a default, so an empty file (or none) is valid.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub limiter: LimiterSettings,
    pub log: LogSettings,
    /// Policies in force. Absent: one demo policy, so a bare `cargo run` answers checks.
    pub policies: Option<Vec<PolicySettings>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Port 0 picks a free port (tests use it).
    pub bind: String,
    /// HTTP worker threads; default: one per CPU core.
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish after a stop signal.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Largest request body accepted, in bytes; a check body is well under 1 KiB.
    pub max_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: None,
            shutdown_timeout: Duration::from_secs(30),
            max_body_bytes: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`. Unset or empty: the embedded
    /// in-process store, whose limits are per replica.
    pub url: Option<SecretString>,
    /// Pooled multiplexed connections; each carries many concurrent checks.
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including opening one.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for one script's reply. A check waits on Redis at most
    /// `connect_timeout + command_timeout`, then gets its failure mode's answer.
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// When to stop waiting on Redis altogether, and how to come back.
    pub breaker: BreakerConfig,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            // Tens of milliseconds: a check sits on a request path, and a
            // local Redis answers in well under one.
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(50),
            breaker: BreakerConfig::default(),
        }
    }
}

/// The circuit breaker in front of Redis (`[redis.breaker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed checks (errors or timeouts) that open the breaker.
    pub failures: u32,
    /// Share of failed checks, above 0 and at most 1, that also opens it...
    pub failure_ratio: f64,
    /// ...once at least this many checks went to Redis...
    pub min_calls: u64,
    /// ...within this window, which starts at a failure.
    #[serde(deserialize_with = "duration")]
    pub ratio_window: Duration,
    /// How long an open breaker answers every check by its failure mode without asking Redis.
    #[serde(deserialize_with = "duration")]
    pub cool_down: Duration,
    /// Successful probe checks, after the cool-down, that close the breaker.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let defaults = BreakerSettings::default();
        Self {
            failures: defaults.failures,
            failure_ratio: defaults.failure_ratio,
            min_calls: defaults.min_calls,
            ratio_window: defaults.ratio_window,
            cool_down: defaults.cool_down,
            probes: defaults.probes,
        }
    }
}

impl BreakerConfig {
    fn to_settings(&self) -> BreakerSettings {
        BreakerSettings {
            failures: self.failures,
            failure_ratio: self.failure_ratio,
            min_calls: self.min_calls,
            ratio_window: self.ratio_window,
            cool_down: self.cool_down,
            probes: self.probes,
        }
    }
}

impl RedisSettings {
    /// The URL if one is configured (an empty string counts as none).
    pub fn url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(|url| url.expose_secret().trim())
            .filter(|url| !url.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterSettings {
    /// Prefix of every Redis key; lets several deployments share one Redis.
    pub key_prefix: String,
    /// How often in-process state (the embedded store, the deny cache, the
    /// `local` mode's limiter) is swept of keys that no longer matter.
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// What checks get when Redis cannot decide them: `closed` (503), `open`
    /// (admitted, marked) or `local` (limit / live replicas, in process).
    /// A policy may override it with its own `failure_mode`.
    #[serde(deserialize_with = "failure_mode")]
    pub failure_mode: FailureMode,
    /// How often a replica records itself as live in Redis; the `local` mode
    /// divides limits by the number of replicas heard from within 3 periods.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Answering keys Redis denied without asking it again (`[limiter.deny_cache]`).
    pub deny_cache: DenyCacheSettings,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            key_prefix: "slidegate:".into(),
            sweep_interval: Duration::from_secs(10),
            failure_mode: FailureMode::Closed,
            heartbeat_interval: Duration::from_secs(1),
            deny_cache: DenyCacheSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenyCacheSettings {
    /// Whether a key Redis denied is answered 429 in process until its retry
    /// time, for checks of cost 0 or 1 (where that is exact; see README).
    pub enabled: bool,
    /// Most keys held; denials beyond it are not cached (and are counted).
    pub max_keys: usize,
}

impl Default for DenyCacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Filter directives (as in `RUST_LOG`, which overrides this).
    pub level: String,
    /// `auto` (JSON unless standard output is a terminal), `json` or `pretty`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// A policy as written in the file: `[[policies]]` with name, algorithm, limit, window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub name: String,
    pub algorithm: String,
    pub limit: u64,
    /// "250ms", "10s", "1m", "1h" … between 1ms and 24h.
    pub window: String,
    /// Units a check consumes when it names no cost.
    #[serde(default = "one")]
    pub cost: u64,
    /// This policy's failure mode (`closed`, `open`, `local`); default: `limiter.failure_mode`.
    #[serde(default)]
    pub failure_mode: Option<String>,
}

fn one() -> u64 {
    1
}

impl PolicySettings {
    /// # Errors
    /// The first problem found, with the message a person needs to fix it.
    /// The policy, failing by `default_mode` unless it names its own.
    ///
    /// # Errors
    /// The first problem found, with the message a person needs to fix it.
    pub fn to_policy(
        &self,
        default_mode: FailureMode,
    ) -> Result<Policy, (&'static str, PolicyError)> {
        let name = PolicyName::parse(&self.name).map_err(|e| ("name", e))?;
        let algorithm: Algorithm = self.algorithm.parse().map_err(|e| ("algorithm", e))?;
        let window = Window::parse(&self.window).map_err(|e| ("window", e))?;
        let failure_mode = match &self.failure_mode {
            Some(mode) => mode.trim().parse().map_err(|e| ("failure_mode", e))?,
            None => default_mode,
        };
        let policy = Policy::new(name, algorithm, self.limit, window, self.cost).map_err(|e| {
            let field = match e {
                PolicyError::CostOutOfRange { .. } => "cost",
                _ => "limit",
            };
            (field, e)
        })?;
        Ok(policy.with_failure_mode(failure_mode))
    }
}

impl Settings {
    /// Reads defaults, then `file` if given, then the environment.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or a value has the wrong type;
    /// the message names the key. Call [`Settings::validate`] next.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigurationError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize::<Settings>()?;
        Ok(settings)
    }

    /// Checks every value the types alone cannot, and builds the policy set.
    ///
    /// # Errors
    /// The first invalid setting, naming its field.
    pub fn validate(&self) -> Result<PolicySet, ConfigurationError> {
        self.server.bind.parse::<SocketAddr>().map_err(|e| {
            ConfigurationError::invalid("server.bind", format!("{:?}: {e}", self.server.bind))
        })?;
        if self.server.workers == Some(0) {
            return Err(ConfigurationError::invalid(
                "server.workers",
                "must be at least 1",
            ));
        }
        if self.server.max_body_bytes < 64 {
            return Err(ConfigurationError::invalid(
                "server.max_body_bytes",
                "must be at least 64",
            ));
        }
        if self.redis.pool_size == 0 {
            return Err(ConfigurationError::invalid(
                "redis.pool_size",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("redis.connect_timeout", self.redis.connect_timeout),
            ("redis.command_timeout", self.redis.command_timeout),
            (
                "redis.breaker.ratio_window",
                self.redis.breaker.ratio_window,
            ),
            ("redis.breaker.cool_down", self.redis.breaker.cool_down),
            ("limiter.sweep_interval", self.limiter.sweep_interval),
            (
                "limiter.heartbeat_interval",
                self.limiter.heartbeat_interval,
            ),
        ] {
            // The upper bound keeps deadline arithmetic (now + cool-down,
            // 3 × heartbeat interval) far from overflow; nothing sensible is longer.
            if value.is_zero() || value > Duration::from_secs(24 * 60 * 60) {
                return Err(ConfigurationError::invalid(
                    field,
                    "must be longer than 0 and at most 24h",
                ));
            }
        }
        let breaker = &self.redis.breaker;
        if breaker.failures == 0 {
            return Err(ConfigurationError::invalid(
                "redis.breaker.failures",
                "must be at least 1",
            ));
        }
        if !(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0) {
            return Err(ConfigurationError::invalid(
                "redis.breaker.failure_ratio",
                format!(
                    "must be above 0 and at most 1 (got {})",
                    breaker.failure_ratio
                ),
            ));
        }
        if breaker.min_calls == 0 {
            return Err(ConfigurationError::invalid(
                "redis.breaker.min_calls",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_PROBES).contains(&breaker.probes) {
            return Err(ConfigurationError::invalid(
                "redis.breaker.probes",
                format!("must be between 1 and {MAX_PROBES}"),
            ));
        }
        if self.limiter.deny_cache.max_keys == 0 {
            return Err(ConfigurationError::invalid(
                "limiter.deny_cache.max_keys",
                "must be at least 1 (set enabled = false to turn the cache off)",
            ));
        }
        let known_scheme = |url: &str| {
            ["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        };
        if self.redis.url().is_some_and(|url| !known_scheme(url)) {
            // Never echo the URL: it may hold a password.
            return Err(ConfigurationError::invalid(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        let prefix = &self.limiter.key_prefix;
        if prefix.contains(['{', '}']) || prefix.len() > 64 {
            return Err(ConfigurationError::invalid(
                "limiter.key_prefix",
                format!(
                    "{prefix:?} must be at most 64 bytes without '{{' or '}}' (braces mark the Redis Cluster hash tag)"
                ),
            ));
        }
        self.policy_set()
    }

    /// How a Redis-backed replica handles Redis failing.
    pub fn failover(&self) -> FailoverSettings {
        FailoverSettings {
            default_mode: self.limiter.failure_mode,
            breaker: self.redis.breaker.to_settings(),
            deny_cache_max_keys: self
                .limiter
                .deny_cache
                .enabled
                .then_some(self.limiter.deny_cache.max_keys),
            heartbeat_interval: self.limiter.heartbeat_interval,
        }
    }

    fn policy_set(&self) -> Result<PolicySet, ConfigurationError> {
        let Some(declared) = &self.policies else {
            let demo = demo_policy().with_failure_mode(self.limiter.failure_mode);
            return Ok(PolicySet::new([demo]).expect("one policy cannot clash"));
        };
        let mut policies = Vec::with_capacity(declared.len());
        for (index, settings) in declared.iter().enumerate() {
            let policy =
                settings
                    .to_policy(self.limiter.failure_mode)
                    .map_err(|(field, problem)| {
                        ConfigurationError::invalid(format!("policies[{index}].{field}"), problem)
                    })?;
            policies.push(policy);
        }
        PolicySet::new(policies).map_err(|name| {
            ConfigurationError::invalid(
                "policies",
                format!("the name {:?} is used twice", name.as_str()),
            )
        })
    }
}

/// The policy a bare `cargo run` serves: 10 checks per 10 seconds per key, exact.
pub fn demo_policy() -> Policy {
    Policy::new(
        PolicyName::parse("demo").expect("a valid literal name"),
        Algorithm::SlidingLog,
        10,
        Window::parse("10s").expect("a valid literal window"),
        1,
    )
    .expect("a valid literal policy")
}

/// Reads "closed", "open" or "local", naming the choices when it is none of them.
fn failure_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<FailureMode, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(serde::de::Error::custom)
}

/// Reads "250ms", "10s", "1m" into a `Duration`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|error| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({error}); write e.g. \"250ms\", \"10s\", \"1m\""
        ))
    })
}
