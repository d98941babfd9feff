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

use crate::limiter::{Algorithm, Policy, PolicyError, PolicyName, PolicySet, Window};

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
    /// `connect_timeout + command_timeout`.
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
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
    /// How often the embedded store sweeps out fully replenished keys.
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            key_prefix: "slidegate:".into(),
            sweep_interval: Duration::from_secs(10),
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
}

fn one() -> u64 {
    1
}

impl PolicySettings {
    /// # Errors
    /// The first problem found, with the message a person needs to fix it.
    pub fn to_policy(&self) -> Result<Policy, (&'static str, PolicyError)> {
        let name = PolicyName::parse(&self.name).map_err(|e| ("name", e))?;
        let algorithm: Algorithm = self.algorithm.parse().map_err(|e| ("algorithm", e))?;
        let window = Window::parse(&self.window).map_err(|e| ("window", e))?;
        Policy::new(name, algorithm, self.limit, window, self.cost).map_err(|e| {
            let field = match e {
                PolicyError::CostOutOfRange { .. } => "cost",
                _ => "limit",
            };
            (field, e)
        })
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
            ("limiter.sweep_interval", self.limiter.sweep_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigurationError::invalid(field, "must be longer than 0"));
            }
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

    fn policy_set(&self) -> Result<PolicySet, ConfigurationError> {
        let Some(declared) = &self.policies else {
            return Ok(demo_policies());
        };
        let mut policies = Vec::with_capacity(declared.len());
        for (index, settings) in declared.iter().enumerate() {
            let policy = settings.to_policy().map_err(|(field, problem)| {
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
pub fn demo_policies() -> PolicySet {
    let demo = Policy::new(
        PolicyName::parse("demo").expect("a valid literal name"),
        Algorithm::SlidingLog,
        10,
        Window::parse("10s").expect("a valid literal window"),
        1,
    )
    .expect("a valid literal policy");
    PolicySet::new([demo]).expect("one policy cannot clash")
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
