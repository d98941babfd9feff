//! Settings: built-in defaults, then an optional TOML file, then `SLIDEGATE__SECTION__KEY` environment variables.
//!
//! Everything is validated once, at start-up, into typed values
//! ([`Validated`]); an invalid setting stops the process with a message
//! naming the field and the problem, rather than surfacing later as a
//! strange decision.
//!
//! One naming rule across the workspace: a `*Settings` type is a section of
//! the file as people write it (here, and the core's [`PolicySpec`] for
//! `[[policies]]`); an `*Options` type is what a crate's constructor takes,
//! already valid (`BreakerOptions`, `FailoverOptions`, `ProbeOptions` in the
//! core, `RedisOptions`, `CatalogOptions`). Settings are turned into options
//! here and nowhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use ipnet::IpNet;

use crate::client_ip::ClientIpRules;
use crate::store::RedisTls;
pub use slidegate_catalog::PostgresSettings;
pub use slidegate_core::BreakerSettings;
use slidegate_core::rules::{KeySpec, NoMatch, RequestMatch, Rule, Rules};
use slidegate_core::settings::{InvalidSetting, check_duration, duration, failure_mode};
use slidegate_core::{
    Algorithm, FailoverOptions, FailureMode, Policy, PolicyName, PolicySet, PolicySpec, Window,
};
pub use slidegate_redis::RedisSettings;

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

impl From<InvalidSetting> for ConfigurationError {
    fn from(invalid: InvalidSetting) -> Self {
        Self::Invalid {
            field: invalid.field,
            problem: invalid.problem,
        }
    }
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub health: HealthSettings,
    pub redis: RedisSettings,
    pub limiter: LimiterSettings,
    pub log: LogSettings,
    pub tracing: TracingSettings,
    pub forward_auth: ForwardAuthSettings,
    pub postgres: PostgresSettings,
    pub admin: AdminSettings,
    /// The Envoy rate-limit gRPC listener and its rule files; off unless `bind` is set.
    pub envoy_rls: slidegate_envoy::EnvoyRlsSettings,
    /// Policies in force. Absent: one demo policy, so a bare `cargo run` answers checks.
    pub policies: Option<Vec<PolicySpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Port 0 picks a free port (tests use it).
    pub bind: String,
    /// Set: a second listener for operators, the only one serving the admin
    /// API and `/metrics` (the public one answers them 404). Health endpoints
    /// are on both. Unset: everything on `bind`.
    pub admin_bind: Option<String>,
    /// HTTP worker threads; default: one per CPU core.
    pub workers: Option<usize>,
    /// After SIGTERM/SIGINT, how long readiness answers 503 while requests are
    /// still served, so load balancers stop sending before the listener closes.
    #[serde(deserialize_with = "duration")]
    pub drain_delay: Duration,
    /// Then, how long in-flight requests may take to finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Largest request body accepted, in bytes; a check body is well under 1 KiB.
    pub max_body_bytes: usize,
    /// How long an idle client connection is kept open. Keep it longer than
    /// the proxy in front keeps idle connections to replicas.
    #[serde(deserialize_with = "duration")]
    pub keep_alive: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            admin_bind: None,
            workers: None,
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            max_body_bytes: 4096,
            keep_alive: Duration::from_secs(75),
        }
    }
}

/// Readiness's background probes of Redis and Postgres (`[health]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// How often each dependency is probed, one probe at a time per
    /// dependency; readiness reads the last answer and never waits for one.
    #[serde(deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// Longest a probe may take; one without an answer by then has failed.
    #[serde(deserialize_with = "duration")]
    pub probe_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

impl HealthSettings {
    pub fn probes(&self) -> slidegate_core::probe::ProbeOptions {
        slidegate_core::probe::ProbeOptions {
            interval: self.probe_interval,
            timeout: self.probe_timeout,
        }
    }
}

impl ServerSettings {
    /// The admin listener's address if one is configured (an empty string counts as none).
    pub fn admin_bind(&self) -> Option<&str> {
        self.admin_bind
            .as_deref()
            .map(str::trim)
            .filter(|address| !address.is_empty())
    }
}

/// The admin API under `/v1/admin/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token the admin API requires. Unset or empty: the admin API is
    /// off (404). Never logged.
    pub token: Option<SecretString>,
}

/// Shortest admin token accepted: a guessable token would open the admin API.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl AdminSettings {
    /// The token if one is configured (an empty string counts as none).
    pub fn token(&self) -> Option<&str> {
        self.token
            .as_ref()
            .map(|token| token.expose_secret().trim())
            .filter(|token| !token.is_empty())
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
    /// Most keys an in-process limiter holds: the embedded store (no Redis
    /// URL) and, with Redis, the `local` failure mode's limiter, each. When
    /// full, idle keys and then those closest to replenished are forgotten.
    pub max_keys: usize,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            key_prefix: "slidegate:".into(),
            sweep_interval: Duration::from_secs(10),
            failure_mode: FailureMode::Closed,
            heartbeat_interval: Duration::from_secs(1),
            deny_cache: DenyCacheSettings::default(),
            max_keys: slidegate_core::memory::DEFAULT_MAX_KEYS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenyCacheSettings {
    /// Whether a key Redis denied is answered 429 in process until its retry
    /// time, for checks of cost 0 or 1 (where that is exact; see docs/algorithms.md).
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

/// OpenTelemetry traces, exported over OTLP/HTTP. Off unless an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// `false` turns tracing off even when an endpoint is set (as does `OTEL_SDK_DISABLED=true`).
    pub enabled: bool,
    /// Base URL of an OTLP/HTTP collector (Jaeger, an OpenTelemetry Collector);
    /// `/v1/traces` is appended. Unset: no tracing. `OTEL_EXPORTER_OTLP_ENDPOINT` sets it too.
    pub endpoint: Option<String>,
    /// `service.name` of every span. `OTEL_SERVICE_NAME` sets it too.
    pub service_name: String,
    /// `service.instance.id`, telling replicas apart; unset: `<hostname>-<pid>`.
    pub instance_id: Option<String>,
    /// Share of requests without a `traceparent` traced, 0.0 to 1.0 (default
    /// 0.01). A request that arrives with one follows the caller's decision
    /// instead. Decided before any span is built: a request not traced
    /// costs what it costs with tracing off, nearly.
    pub sample_ratio: f64,
    /// Finished spans waiting for export. When full, new spans are dropped
    /// (and counted) rather than slowing requests down.
    pub max_queue_size: usize,
    /// Most spans sent in one export request.
    pub max_export_batch_size: usize,
    /// Longest a finished span waits before its batch is sent.
    #[serde(deserialize_with = "duration")]
    pub batch_delay: Duration,
    /// Longest wait for the collector to accept one batch.
    #[serde(deserialize_with = "duration")]
    pub export_timeout: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: None,
            service_name: "slidegate".into(),
            instance_id: None,
            sample_ratio: 0.01,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            batch_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracingSettings {
    /// The collector's base URL when tracing is on; `None` means no tracing at all.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| self.enabled && !endpoint.is_empty())
    }

    /// Applies the standard OpenTelemetry variables, which rank above the file
    /// and below this service's own `SLIDEGATE__TRACING__*` variables.
    fn apply_otel_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        let set = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let ours = |field: &str| {
            set(&format!(
                "{ENV_PREFIX}{ENV_SEPARATOR}TRACING{ENV_SEPARATOR}{field}"
            ))
        };
        if ours("ENDPOINT").is_none()
            && let Some(endpoint) = set("OTEL_EXPORTER_OTLP_ENDPOINT")
        {
            self.endpoint = Some(endpoint);
        }
        if ours("SERVICE_NAME").is_none()
            && let Some(name) = set("OTEL_SERVICE_NAME")
        {
            self.service_name = name;
        }
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            self.enabled = false;
        }
    }

    fn validate(&self) -> Result<(), ConfigurationError> {
        let invalid = |field: &str, problem: &str| {
            Err(ConfigurationError::invalid(
                format!("tracing.{field}"),
                problem,
            ))
        };
        if let Some(endpoint) = self.endpoint() {
            if endpoint.starts_with("https://") {
                // The exporter's HTTP client is built without TLS to keep the
                // build small; a collector or sidecar on the host takes plain HTTP.
                return invalid(
                    "endpoint",
                    "https is not supported by this build; send to a collector over http://",
                );
            }
            // Never echo the URL: it may carry credentials.
            let Some(rest) = endpoint.strip_prefix("http://") else {
                return invalid("endpoint", "must start with http://");
            };
            // Credentials in the URL would show in logs and export errors;
            // OTEL_EXPORTER_OTLP_HEADERS carries them without that risk.
            if rest
                .split('/')
                .next()
                .is_some_and(|authority| authority.contains('@'))
            {
                return invalid(
                    "endpoint",
                    "must not carry credentials; set them in OTEL_EXPORTER_OTLP_HEADERS",
                );
            }
        }
        if self.service_name.trim().is_empty() {
            return invalid("service_name", "must not be empty");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid("sample_ratio", "must be between 0.0 and 1.0");
        }
        if self.max_queue_size == 0 {
            return invalid("max_queue_size", "must be at least 1");
        }
        if self.max_export_batch_size == 0 || self.max_export_batch_size > self.max_queue_size {
            return invalid(
                "max_export_batch_size",
                "must be between 1 and tracing.max_queue_size",
            );
        }
        if self.batch_delay.is_zero() {
            return invalid("batch_delay", "must be longer than 0");
        }
        if self.export_timeout.is_zero() {
            return invalid("export_timeout", "must be longer than 0");
        }
        Ok(())
    }
}

/// `GET /v1/forward-auth`: who may vouch for a client's address, and what passes when no policy matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardAuthSettings {
    /// Proxies (CIDR or single addresses) whose `X-Forwarded-For` is believed.
    /// Empty: the TCP peer is always the client. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// IPv6 clients are counted per network of this many leading bits (0 to 128).
    pub ipv6_prefix: u8,
    /// `allow` (2xx) or `deny` (403) a request that no policy's match rule covers.
    pub no_match: NoMatch,
}

impl Default for ForwardAuthSettings {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
            no_match: NoMatch::Allow,
        }
    }
}

impl ForwardAuthSettings {
    /// # Errors
    /// An entry that is neither an address nor a CIDR, or a prefix above 128.
    pub fn client_ip_rules(&self) -> Result<ClientIpRules, ConfigurationError> {
        if self.ipv6_prefix > 128 {
            return Err(ConfigurationError::invalid(
                "forward_auth.ipv6_prefix",
                format!("must be between 0 and 128 (got {})", self.ipv6_prefix),
            ));
        }
        let trusted = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        ConfigurationError::invalid(
                            format!("forward_auth.trusted_proxies[{index}]"),
                            format!("{text:?} is not an address or a CIDR such as \"10.0.0.0/8\""),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(ClientIpRules::new(trusted, self.ipv6_prefix))
    }
}

/// [`Settings`] that passed [`Settings::validate`], with what start-up needs
/// already built from them. The only way to start an
/// [`Application`](crate::startup::Application): what it is given was checked once.
#[derive(Debug)]
pub struct Validated {
    /// The settings as loaded, for the values start-up uses as they are.
    pub settings: Settings,
    pub policies: PolicySet,
    /// Forward-auth's rules from `[policies.match]`, in file order.
    pub forward_auth_rules: Rules,
    pub client_ip: ClientIpRules,
    /// The certificates the `redis.tls_*` files name, read and parsed.
    pub redis_tls: Option<RedisTls>,
    /// With `envoy_rls.bind`: the rule files, read and parsed (and the
    /// files they came from, for the watcher to tell changes by).
    pub envoy_rules: Option<(
        slidegate_envoy::RuleSet,
        Vec<slidegate_envoy::rules::Source>,
    )>,
}

impl Settings {
    /// Reads defaults, then `file` if given, then the environment
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and `OTEL_SDK_DISABLED`
    /// included).
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or a value has the wrong type;
    /// the message names the key. Call [`Settings::validate`] next.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigurationError> {
        Self::load_with_env(file, std::env::vars().collect())
    }

    /// As [`Settings::load`], with `env` in place of the process environment:
    /// lets a test load what a compose file or a manifest would set.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: config::Map<String, String>,
    ) -> Result<Self, ConfigurationError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let mut settings = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(env.clone())),
            )
            .build()?
            .try_deserialize::<Settings>()?;
        settings
            .tracing
            .apply_otel_environment(|name| env.get(name).cloned());
        Ok(settings)
    }

    /// Checks every value the types alone cannot and builds, once, what
    /// start-up needs from them: the policy set, forward-auth's rules, the
    /// trusted-proxy rules and the Redis TLS material. Start-up consumes the
    /// result and checks nothing again.
    ///
    /// # Errors
    /// The first invalid setting, naming its field.
    pub fn validate(self) -> Result<Validated, ConfigurationError> {
        let policies = self.check()?;
        let forward_auth_rules = self.rules(&policies)?;
        let client_ip = self.forward_auth.client_ip_rules()?;
        let redis_tls = self.redis.tls()?;
        let envoy_rules = match (&self.envoy_rls.bind, &self.envoy_rls.rules) {
            // A rule file that does not parse stops the start: there are no
            // last good rules to keep yet. The error names the file, the
            // path in it and the reason.
            (Some(_), Some(path)) => Some(
                slidegate_envoy::watch::load_initial(path)
                    .map_err(|error| ConfigurationError::invalid("envoy_rls.rules", error))?,
            ),
            _ => None,
        };
        Ok(Validated {
            settings: self,
            policies,
            forward_auth_rules,
            client_ip,
            redis_tls,
            envoy_rules,
        })
    }

    /// Every check but those [`Settings::validate`] makes by building.
    fn check(&self) -> Result<PolicySet, ConfigurationError> {
        let bind = self.server.bind.parse::<SocketAddr>().map_err(|e| {
            ConfigurationError::invalid("server.bind", format!("{:?}: {e}", self.server.bind))
        })?;
        if let Some(admin_bind) = self.server.admin_bind() {
            let admin = admin_bind.parse::<SocketAddr>().map_err(|e| {
                ConfigurationError::invalid("server.admin_bind", format!("{admin_bind:?}: {e}"))
            })?;
            // Port 0 twice is two free ports; any other equal pair cannot both bind.
            if admin == bind && admin.port() != 0 {
                return Err(ConfigurationError::invalid(
                    "server.admin_bind",
                    format!("must differ from server.bind ({bind})"),
                ));
            }
        }
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
        // Each crate checks its own section: Redis (and its breaker) first,
        // as before, then this replica's own intervals.
        self.redis.validate()?;
        for (field, value) in [
            ("limiter.sweep_interval", self.limiter.sweep_interval),
            (
                "limiter.heartbeat_interval",
                self.limiter.heartbeat_interval,
            ),
            ("health.probe_interval", self.health.probe_interval),
            ("health.probe_timeout", self.health.probe_timeout),
        ] {
            check_duration(field, value)?;
        }
        if self.limiter.max_keys == 0 {
            return Err(ConfigurationError::invalid(
                "limiter.max_keys",
                "must be at least 1",
            ));
        }
        if self.limiter.deny_cache.max_keys == 0 {
            return Err(ConfigurationError::invalid(
                "limiter.deny_cache.max_keys",
                "must be at least 1 (set enabled = false to turn the cache off)",
            ));
        }
        self.tracing.validate()?;
        if self.server.drain_delay > Duration::from_secs(300) {
            return Err(ConfigurationError::invalid(
                "server.drain_delay",
                "must be at most 5m",
            ));
        }
        self.postgres.validate()?;
        self.envoy_rls.validate()?;
        self.validate_admin()?;
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

    /// The forward-auth rules of the policies that declare `match`, in file order.
    ///
    /// # Errors
    /// The first invalid match rule or key spec, naming its field.
    fn rules(&self, policies: &PolicySet) -> Result<Rules, ConfigurationError> {
        let mut rules = Vec::new();
        for (index, declared) in self.policies.iter().flatten().enumerate() {
            let field = |name: &str| format!("policies[{index}].{name}");
            let Some(matches) = &declared.matches else {
                if declared.key.is_some() {
                    return Err(ConfigurationError::invalid(
                        field("key"),
                        "applies only to a policy with a [policies.match] table",
                    ));
                }
                continue;
            };
            let request_match = RequestMatch::new(
                &matches.methods,
                matches.path_prefix.as_deref(),
                matches.host.as_deref(),
            )
            .map_err(|(name, problem)| {
                ConfigurationError::invalid(field(&format!("match.{name}")), problem)
            })?;
            let key = match &declared.key {
                Some(parts) => KeySpec::parse(parts)
                    .map_err(|problem| ConfigurationError::invalid(field("key"), problem))?,
                None => KeySpec::client_ip(),
            };
            let policy = policies
                .get(&declared.name)
                .cloned()
                .ok_or_else(|| ConfigurationError::invalid(field("name"), "not loaded"))?;
            rules.push(Rule {
                policy,
                matches: request_match,
                key,
            });
        }
        Ok(Rules::new(rules))
    }

    /// The admin API stores policies in Postgres: its token needs both.
    fn validate_admin(&self) -> Result<(), ConfigurationError> {
        let postgres = &self.postgres;
        if let Some(token) = self.admin.token() {
            if token.len() < MIN_ADMIN_TOKEN_LEN {
                return Err(ConfigurationError::invalid(
                    "admin.token",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                ));
            }
            if postgres.url().is_none() {
                return Err(ConfigurationError::invalid(
                    "admin.token",
                    "the admin API stores policies in Postgres: set postgres.url too",
                ));
            }
        }
        Ok(())
    }

    /// How a Redis-backed replica handles Redis failing.
    pub fn failover(&self) -> FailoverOptions {
        FailoverOptions {
            default_mode: self.limiter.failure_mode,
            breaker: self.redis.breaker_options(),
            deny_cache_max_keys: self
                .limiter
                .deny_cache
                .enabled
                .then_some(self.limiter.deny_cache.max_keys),
            local_max_keys: self.limiter.max_keys,
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
/// A list written either as a TOML array or, as environment variables are, one comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(items) => items,
        OneOrMany::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn the_standard_otel_variables_set_the_endpoint_and_the_service_name() {
        let mut tracing = TracingSettings::default();
        assert_eq!(tracing.endpoint(), None, "off by default");
        tracing.apply_otel_environment(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "edge-limiter"),
        ]));
        assert_eq!(tracing.endpoint(), Some("http://collector:4318"));
        assert_eq!(tracing.service_name, "edge-limiter");
    }

    #[test]
    fn slidegate_variables_rank_above_the_otel_ones() {
        let mut tracing = TracingSettings {
            endpoint: Some("http://from-slidegate-variable:4318".into()),
            ..TracingSettings::default()
        };
        tracing.apply_otel_environment(env(&[
            (
                "SLIDEGATE__TRACING__ENDPOINT",
                "http://from-slidegate-variable:4318",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ]));
        assert_eq!(
            tracing.endpoint(),
            Some("http://from-slidegate-variable:4318")
        );
    }

    #[test]
    fn otel_sdk_disabled_or_enabled_false_switch_tracing_off() {
        let mut tracing = TracingSettings::default();
        tracing.apply_otel_environment(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]));
        assert_eq!(tracing.endpoint(), None);

        let tracing = TracingSettings {
            enabled: false,
            endpoint: Some("http://collector:4318".into()),
            ..TracingSettings::default()
        };
        assert_eq!(tracing.endpoint(), None);
    }

    #[test]
    fn a_tracing_endpoint_with_credentials_is_refused_without_echoing_them() {
        let tracing = TracingSettings {
            endpoint: Some("http://user:hunter2@collector:4318".into()),
            ..TracingSettings::default()
        };
        let message = tracing.validate().unwrap_err().to_string();
        assert!(message.contains("tracing.endpoint"), "{message}");
        assert!(message.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
