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
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use ipnet::IpNet;

use crate::http::client_ip::ClientIpRules;
use crate::store::{RedisTls, TlsError};
use slidegate_core::breaker::MAX_PROBES;
use slidegate_core::rules::{KeySpec, NoMatch, RequestMatch, Rule, Rules};
use slidegate_core::{
    Algorithm, BreakerOptions, FailoverOptions, FailureMode, Policy, PolicyName, PolicySet,
    PolicySpec, Window,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (the
    /// server's certificate is always verified). Unset or empty: the embedded
    /// in-process store, whose limits are per replica.
    pub url: Option<SecretString>,
    /// PEM file of the CA certificates that sign the server's certificate,
    /// trusted instead of the system's roots; only with `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (chain) for mutual TLS; needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's PKCS#8 private key (`BEGIN PRIVATE KEY`).
    pub tls_key_file: Option<PathBuf>,
    /// Multiplexed connections per worker thread; each carries many concurrent
    /// checks. Few are best: commands of concurrent checks share a write.
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including opening one.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for one script's reply. A check waits on Redis at most
    /// `connect_timeout + command_timeout`, then gets its failure mode's answer.
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// When to stop waiting on Redis altogether, and how to come back.
    pub breaker: BreakerSettings,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            pool_size: 2,
            // Tens of milliseconds: a check sits on a request path, and a
            // local Redis answers in well under one.
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(50),
            breaker: BreakerSettings::default(),
        }
    }
}

/// The circuit breaker in front of Redis (`[redis.breaker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failed checks (errors or timeouts) that open the breaker;
    /// checks that fail together in one stall count once (see `limiter::breaker`).
    pub failures: u32,
    /// Share of failed checks, above 0 and at most 1, that also opens it...
    pub failure_ratio: f64,
    /// ...once at least this many checks went to Redis...
    pub min_calls: u64,
    /// ...over the last this long (rolling; every failed check counts).
    #[serde(deserialize_with = "duration")]
    pub ratio_window: Duration,
    /// How long an open breaker answers every check by its failure mode without asking Redis.
    #[serde(deserialize_with = "duration")]
    pub cool_down: Duration,
    /// Successful probe checks, after the cool-down, that close the breaker.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let defaults = BreakerOptions::default();
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

impl BreakerSettings {
    fn to_options(&self) -> BreakerOptions {
        BreakerOptions {
            failures: self.failures,
            failure_ratio: self.failure_ratio,
            min_calls: self.min_calls,
            ratio_window: self.ratio_window,
            cool_down: self.cool_down,
            probes: self.probes,
            probe_timeout: BreakerOptions::default().probe_timeout,
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

    /// The TLS files given, by setting name (an empty path counts as none).
    fn tls_files(&self) -> [(&'static str, Option<&Path>); 3] {
        fn given(path: &Option<PathBuf>) -> Option<&Path> {
            path.as_deref().filter(|path| !path.as_os_str().is_empty())
        }
        [
            ("redis.tls_ca_file", given(&self.tls_ca_file)),
            ("redis.tls_cert_file", given(&self.tls_cert_file)),
            ("redis.tls_key_file", given(&self.tls_key_file)),
        ]
    }

    /// Checks what can be checked without reading a file.
    fn validate(&self) -> Result<(), ConfigurationError> {
        let known_scheme = |url: &str| {
            ["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        };
        // Never echo the URL: it may hold a password.
        if let Some(url) = self.url() {
            if !known_scheme(url) {
                return Err(ConfigurationError::invalid(
                    "redis.url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
            if url.contains('#') {
                // redis-rs reads `rediss://…/#insecure` as "verify nothing".
                return Err(ConfigurationError::invalid(
                    "redis.url",
                    "must not have a #fragment (#insecure would turn certificate verification off); \
                     to trust a private CA, set redis.tls_ca_file",
                ));
            }
        }
        let tls = self.url().is_some_and(|url| url.starts_with("rediss://"));
        let [_, cert, key] = self.tls_files();
        for (field, path) in self.tls_files() {
            if path.is_some() && !tls {
                return Err(ConfigurationError::invalid(
                    field,
                    "applies only to a rediss:// redis.url (TLS)",
                ));
            }
        }
        match (cert.1, key.1) {
            (Some(_), None) => Err(ConfigurationError::invalid(
                "redis.tls_key_file",
                "must be set with redis.tls_cert_file: a client certificate needs its key",
            )),
            (None, Some(_)) => Err(ConfigurationError::invalid(
                "redis.tls_cert_file",
                "must be set with redis.tls_key_file: a client key needs its certificate",
            )),
            _ => Ok(()),
        }
    }

    /// The TLS certificates the files name, read and parsed; `None` when no
    /// file is set.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, naming its setting and path (never its contents).
    pub fn tls(&self) -> Result<Option<RedisTls>, ConfigurationError> {
        self.validate()?;
        let [ca, cert, key] = self.tls_files();
        if ca.1.is_none() && cert.1.is_none() {
            return Ok(None);
        }
        let read = |(field, path): (&'static str, Option<&Path>)| {
            path.map(|path| {
                std::fs::read(path).map_err(|error| {
                    ConfigurationError::invalid(
                        field,
                        format!("cannot read {}: {error}", path.display()),
                    )
                })
            })
            .transpose()
        };
        let ca_pem = read(ca)?;
        let client = match (read(cert)?, read(key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        let client = client
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
        RedisTls::new(ca_pem.as_deref(), client)
            .map(Some)
            .map_err(|error| {
                let (field, path) = match &error {
                    TlsError::Ca(_) | TlsError::Setup(_) => ca,
                    TlsError::ClientCert(_) => cert,
                    TlsError::ClientKey(_) => key,
                };
                let path = path.map_or_else(String::new, |path| path.display().to_string());
                ConfigurationError::invalid(field, format!("{path} {error}"))
            })
    }
}

/// The catalog database. Set: policies and API keys come from Postgres (the
/// file's `[[policies]]` are ignored) and the admin API can change them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://user[:password]@host[:port]/database`; `?sslmode=require`
    /// for TLS. Unset or empty: policies come from this file.
    pub url: Option<SecretString>,
    /// Pooled connections, for admin writes, reloads and health probes (never checks).
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including opening one.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The server's `statement_timeout` on every connection.
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
    /// How often the whole catalog is reloaded even without a change notification.
    #[serde(deserialize_with = "duration")]
    pub resync_interval: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            resync_interval: Duration::from_secs(30),
        }
    }
}

impl PostgresSettings {
    /// The URL if one is configured (an empty string counts as none).
    pub fn url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(|url| url.expose_secret().trim())
            .filter(|url| !url.is_empty())
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
    /// Share of new traces recorded, 0.0 to 1.0. A request that arrives with a
    /// `traceparent` follows the caller's decision instead.
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
            sample_ratio: 1.0,
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
        Ok(Validated {
            settings: self,
            policies,
            forward_auth_rules,
            client_ip,
            redis_tls,
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
            ("health.probe_interval", self.health.probe_interval),
            ("health.probe_timeout", self.health.probe_timeout),
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
        self.redis.validate()?;
        self.tracing.validate()?;
        if self.server.drain_delay > Duration::from_secs(300) {
            return Err(ConfigurationError::invalid(
                "server.drain_delay",
                "must be at most 5m",
            ));
        }
        self.validate_catalog()?;
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

    fn validate_catalog(&self) -> Result<(), ConfigurationError> {
        let postgres = &self.postgres;
        if postgres.pool_size == 0 {
            return Err(ConfigurationError::invalid(
                "postgres.pool_size",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("postgres.connect_timeout", postgres.connect_timeout),
            ("postgres.statement_timeout", postgres.statement_timeout),
            ("postgres.resync_interval", postgres.resync_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigurationError::invalid(field, "must be longer than 0"));
            }
        }
        if let Some(url) = postgres.url()
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            // Never echo the URL: it may hold a password.
            return Err(ConfigurationError::invalid(
                "postgres.url",
                "must start with postgres:// or postgresql://",
            ));
        }
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
            breaker: BreakerOptions {
                // A probe is one check: the store's timeouts end it. Twice
                // them is "lost", not "slow", even on a loaded machine.
                probe_timeout: 2 * (self.redis.connect_timeout + self.redis.command_timeout),
                ..self.redis.breaker.to_options()
            },
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
fn failure_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<FailureMode, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(serde::de::Error::custom)
}

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

/// Reads "250ms", "10s", "1m" into a `Duration`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|error| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({error}); write e.g. \"250ms\", \"10s\", \"1m\""
        ))
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
