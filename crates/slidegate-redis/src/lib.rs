//! The shared store: limiter state in Redis, changed only by the Lua scripts in `lua/`.
//!
//! Every decision is one `EVALSHA` round-trip on a pooled multiplexed
//! connection. The script reads Redis `TIME`, so all replicas judge a key by
//! one clock, and Redis runs one script at a time, so read-decide-write is
//! atomic across the fleet: a limit of 100 admits 100, not 100 per replica.
//!
//! Keys look like `<prefix>{<policy>:<key>}:<algorithm>`, or
//! `<prefix>{<policy>@<tenant>:<key>}:<algorithm>` for a key checked with an API key. The braces are a
//! Redis Cluster hash tag: every key one script call touches shares the slot
//! of `<policy>:<key>`, so the cluster store ([`ClusterStore`], `cluster`)
//! runs each decision on one master. This store speaks to one server (found
//! directly, or through Sentinel); a cluster node it is pointed at is
//! recognised (readiness, and `MOVED`-style replies) and reported as a
//! misconfiguration naming `redis.mode = "cluster"`, rather than half-working.
//!
//! `rediss://` URLs connect over TLS (the system's OpenSSL through
//! native-tls), verifying the server's certificate against the system's
//! roots or a private CA ([`RedisTls`]), optionally with a client certificate.

mod cluster;
mod settings;
pub use cluster::{ClusterOptions, ClusterStore};
pub use settings::{RedisMode, RedisSettings};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ManageConnection, Pool, RunError};
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind};
use thread_local::ThreadLocal;
use tracing::field::Empty;

use slidegate_core::{
    Algorithm, Check, DependencyHealth, LimiterKey, Outcome, Policy, PoolHealth, PoolStats, Store,
    StoreError, StoreHealth,
};

// Each algorithm's file is its single-check script, whole, as Redis runs it
// (and as the load scripts in tests/load and the script tests load it).
const SLIDING_LOG: &str = include_str!("../lua/sliding_log.lua");
const SLIDING_WINDOW: &str = include_str!("../lua/sliding_window.lua");
const GCRA: &str = include_str!("../lua/gcra.lua");
const HEARTBEAT: &str = include_str!("../lua/heartbeat.lua");
// The scripts of several checks are built on the same algorithms (see `Scripts::new`).
const CHECKS: &str = include_str!("../lua/checks.lua");
const CHECK_ALL: &str = include_str!("../lua/check_all.lua");
const RELEASE: &str = include_str!("../lua/release.lua");

/// The line of a single-check script after which it only calls its
/// algorithm: everything above it is the algorithm's table (reserve, release).
const SINGLE_CHECK: &str = "\n-- Single check.\n";

/// The algorithms' tables, in the order check_all.lua and release.lua are
/// assembled from: the part of each single-check script above its line
/// `-- Single check.`, so each algorithm is written once.
const ALGORITHMS: [&str; 3] = [
    algorithm_part(SLIDING_LOG),
    algorithm_part(SLIDING_WINDOW),
    algorithm_part(GCRA),
];

/// The part of `script` up to and including the newline before its line
/// `-- Single check.`; a script without that line does not compile.
///
/// A file cannot be both a whole script and a part of another (its last
/// statement returns the reply), and `concat!` takes literals only, so the
/// part is cut here, at compile time, and the scripts of several checks are
/// joined when the store is built.
const fn algorithm_part(script: &'static str) -> &'static str {
    let (bytes, marker) = (script.as_bytes(), SINGLE_CHECK.as_bytes());
    let mut at = 0;
    while at + marker.len() <= bytes.len() {
        let mut matched = 0;
        while matched < marker.len() && bytes[at + matched] == marker[matched] {
            matched += 1;
        }
        if matched == marker.len() {
            // The newline is ASCII: cutting after it keeps valid UTF-8.
            let (part, _) = bytes.split_at(at + 1);
            return match std::str::from_utf8(part) {
                Ok(part) => part,
                Err(_) => panic!("a script that is not UTF-8"),
            };
        }
        at += 1;
    }
    panic!("a single-check script without its line \"-- Single check.\"");
}

/// How the Redis store connects and how long it waits.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// TLS for a `rediss://` URL (a private CA, a client certificate);
    /// `None` with `rediss://`: verified against the system's roots.
    pub tls: Option<RedisTls>,
    /// Key prefix before the hash tag; must not contain `{` or `}`.
    pub key_prefix: String,
    /// Connections of each thread's pool (see [`RedisStore`]).
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including establishing one.
    pub connect_timeout: Duration,
    /// Longest wait for one command's reply.
    pub command_timeout: Duration,
    /// With Sentinel: the sentinels to ask for the current master (`url` is
    /// then not used); `None`: `url` is the server.
    pub sentinel: Option<SentinelTarget>,
}

/// Where Sentinel finds the master: the sentinels' URLs and the master's name.
#[derive(Clone)]
pub struct SentinelTarget {
    /// `redis://[user:password@]host:port` of each sentinel; the credentials
    /// (and database) are used for the master too.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor it by (`sentinel monitor <name> …`).
    pub master: String,
}

/// The URL may carry a password: it is never printed, not even in debug output.
impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out of this impl unnoticed.
        let Self {
            url: _,
            tls,
            key_prefix,
            pool_size,
            connect_timeout,
            command_timeout,
            sentinel,
        } = self;
        f.debug_struct("RedisOptions")
            .field("url", &"<redacted>")
            .field("tls", tls)
            .field("key_prefix", key_prefix)
            .field("pool_size", pool_size)
            .field("connect_timeout", connect_timeout)
            .field("command_timeout", command_timeout)
            .field(
                "sentinel",
                &sentinel
                    .as_ref()
                    .map(|target| (target.sentinels.len(), &target.master)),
            )
            .finish()
    }
}

/// TLS for a `rediss://` URL: the server's certificate is verified against
/// the system's roots, or against a private CA instead; optionally a client
/// certificate for mutual TLS.
///
/// Holds the connector, built once: building one reads and parses the
/// system's trust store, as long as the default `connect_timeout` on its own
/// (`cargo bench --bench tls_connector`). redis-rs would build one per
/// connection, so this store opens TLS connections itself (see
/// [`TrackedConnectionManager`]). Debug output shows no certificate.
#[derive(Clone)]
pub struct RedisTls {
    connector: native_tls::TlsConnector,
    private_ca: bool,
    client_certificate: bool,
    /// The PEM input itself, for the Redis Cluster client, which opens its
    /// node connections itself and takes certificates, not a connector.
    pem: Arc<TlsPem>,
}

/// The PEM files [`RedisTls::new`] was given (never printed).
pub(crate) struct TlsPem {
    pub(crate) ca: Option<Vec<u8>>,
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Which PEM input of [`RedisTls::new`] cannot be used, and why (never its contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Ca(String),
    #[error("{0}")]
    ClientCert(String),
    #[error("{0}")]
    ClientKey(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

impl RedisTls {
    /// `ca`: CA certificates (PEM), trusted instead of the system's roots.
    /// `client`: a certificate chain and its PKCS#8 private key (PEM).
    ///
    /// # Errors
    /// The input that cannot be parsed, with the reason.
    pub fn new(ca: Option<&[u8]>, client: Option<(&[u8], &[u8])>) -> Result<Self, TlsError> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(ca) = ca {
            let roots = native_tls::Certificate::stack_from_pem(ca).map_err(|error| {
                TlsError::Ca(format!(
                    "holds no PEM certificate that can be read ({error})"
                ))
            })?;
            if roots.is_empty() {
                return Err(TlsError::Ca(
                    "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".to_owned(),
                ));
            }
            // Only the private CA: a public certificate for the same name
            // must not be accepted in its place.
            builder.disable_built_in_roots(true);
            for root in roots {
                builder.add_root_certificate(root);
            }
        }
        if let Some((cert, key)) = client {
            // native-tls reads only PKCS#8 keys, and only from the first byte.
            let key = key.trim_ascii_start();
            if !key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
                return Err(TlsError::ClientKey(
                    "is not a PKCS#8 PEM private key (\"-----BEGIN PRIVATE KEY-----\"); \
                     convert it with `openssl pkcs8 -topk8 -nocrypt -in <key>`"
                        .to_owned(),
                ));
            }
            let chain = native_tls::Certificate::stack_from_pem(cert).unwrap_or_default();
            if chain.is_empty() {
                return Err(TlsError::ClientCert(
                    "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".to_owned(),
                ));
            }
            let identity = native_tls::Identity::from_pkcs8(cert, key).map_err(|error| {
                TlsError::ClientKey(format!("cannot be read as the certificate's key ({error})"))
            })?;
            builder.identity(identity);
        }
        let connector = builder.build().map_err(|error| {
            // OpenSSL checks here that the key belongs to the certificate.
            if client.is_some() {
                TlsError::ClientKey(format!("does not fit the client certificate ({error})"))
            } else {
                TlsError::Setup(error.to_string())
            }
        })?;
        Ok(Self {
            connector,
            private_ca: ca.is_some(),
            client_certificate: client.is_some(),
            pem: Arc::new(TlsPem {
                ca: ca.map(<[u8]>::to_vec),
                client: client.map(|(cert, key)| (cert.to_vec(), key.to_vec())),
            }),
        })
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("private_ca", &self.private_ca)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

/// Hands the Redis keys of `key` under `policy` to `add`, in the order the
/// script expects them as `KEYS`; one buffer serves all of them. Every key
/// of one check shares the hash tag `{<policy>:<key>}`, so a Redis Cluster
/// runs the script on the one master of that slot.
fn add_keys(key_prefix: &str, policy: &Policy, key: LimiterKey<'_>, mut add: impl FnMut(&str)) {
    let mut name = String::with_capacity(
        key_prefix.len()
            + policy.name().as_str().len()
            + key.tenant().map_or(0, |tenant| tenant.len() + 1)
            + key.as_str().len()
            + 8,
    );
    name.push_str(key_prefix);
    name.push('{');
    name.push_str(policy.name().as_str());
    // `{<policy>@<tenant>:<key>}` for keys checked with an API key: policy
    // names cannot contain '@', so no unscoped key can produce this tag.
    if let Some(tenant) = key.tenant() {
        name.push('@');
        name.push_str(tenant);
    }
    name.push(':');
    name.push_str(key.as_str());
    name.push('}');
    let tagged = name.len();
    let suffixes: &[&str] = match policy.algorithm() {
        // The weighted log, then the previous layout's log, read during a rolling upgrade.
        Algorithm::SlidingLog => &[":wlog", ":log"],
        Algorithm::SlidingWindow => &[":sw"],
        Algorithm::Gcra => &[":gcra"],
    };
    for suffix in suffixes {
        name.truncate(tagged);
        name.push_str(suffix);
        add(name.as_str());
    }
}

/// The scripts, each built once; `Script` keeps the SHA1 it sends with `EVALSHA`.
struct Scripts {
    sliding_log: Script,
    sliding_window: Script,
    gcra: Script,
    heartbeat: Script,
    /// Several checks, all or nothing (`lua/check_all.lua`).
    check_all: Assembled,
    /// Gives back what `check_all` reserved (`lua/release.lua`), for a
    /// request refused on another slot of a cluster.
    release: Assembled,
}

/// A script built from parts, with its source: the cluster store sends it
/// with `EVAL` where a script is missing (see `ClusterStore::group_call`).
struct Assembled {
    script: Script,
    source: String,
}

impl Scripts {
    fn new() -> Self {
        let assembled = |tail: &str| {
            let mut source = ALGORITHMS.concat();
            source.push_str(CHECKS);
            source.push_str(tail);
            Assembled {
                script: Script::new(&source),
                source,
            }
        };
        Self {
            sliding_log: Script::new(SLIDING_LOG),
            sliding_window: Script::new(SLIDING_WINDOW),
            gcra: Script::new(GCRA),
            heartbeat: Script::new(HEARTBEAT),
            check_all: assembled(CHECK_ALL),
            release: assembled(RELEASE),
        }
    }

    fn get(&self, algorithm: Algorithm) -> &Script {
        match algorithm {
            Algorithm::SlidingLog => &self.sliding_log,
            Algorithm::SlidingWindow => &self.sliding_window,
            Algorithm::Gcra => &self.gcra,
        }
    }
}

/// Limiter state in Redis, shared by every replica pointed at the same server.
///
/// Each thread that talks to Redis gets its own small pool, opened from that
/// thread. redis-rs drives a multiplexed connection with a task on the runtime
/// that opened it, and an actix worker is a single-threaded runtime: with one
/// pool shared by all workers (opened from the main thread), every decision
/// handed its command to another thread and was woken by it on the reply,
/// two cross-thread wake-ups per check. With a pool per worker the request,
/// the command and the reply stay on one thread.
pub struct RedisStore {
    pools: ThreadLocal<Pool<TrackedConnectionManager>>,
    manager: TrackedConnectionManager,
    pool_size: u32,
    connect_timeout: Duration,
    reachability: Arc<Reachability>,
    /// Shared with the manager: connections older than this are stale (see [`TrackedConnection`]).
    generation: Arc<AtomicU64>,
    misconfiguration: Misconfiguration,
    scripts: Scripts,
    key_prefix: String,
    command_timeout: Duration,
}

impl RedisStore {
    /// Builds the pool without connecting: a replica starts (and reports
    /// itself not ready) while Redis is down, and connects when it returns.
    ///
    /// # Errors
    /// When the URL does not parse, or TLS certificates come with a URL that
    /// is not `rediss://`. The message never repeats the URL, which may hold a password.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        let connector = match &options.sentinel {
            Some(target) => Connector::sentinel(target, options.tls.clone())?,
            None => {
                let client = redis::Client::open(options.url.as_str()).map_err(|error| {
                    StoreError::Unavailable(format!(
                        "the Redis URL is invalid ({:?}); expected redis://host:port or rediss://host:port",
                        error.kind()
                    ))
                })?;
                Connector::new(client, options.tls)?
            }
        };
        let reachability = Arc::new(Reachability::default());
        let generation = Arc::new(AtomicU64::new(0));
        Ok(Self {
            pools: ThreadLocal::new(),
            manager: TrackedConnectionManager {
                connector,
                reachability: Arc::clone(&reachability),
                generation: Arc::clone(&generation),
                response_timeout: options.command_timeout,
            },
            pool_size: options.pool_size,
            connect_timeout: options.connect_timeout,
            reachability,
            generation,
            misconfiguration: Misconfiguration::default(),
            scripts: Scripts::new(),
            key_prefix: options.key_prefix,
            command_timeout: options.command_timeout,
        })
    }

    /// This thread's pool, built on first use. Building spawns bb8's connection
    /// tasks (and with them redis-rs's connection drivers) on the calling
    /// thread's runtime, which is what keeps a decision on one thread.
    fn pool(&self) -> &Pool<TrackedConnectionManager> {
        self.pools.get_or(|| {
            Pool::builder()
                .max_size(self.pool_size)
                .connection_timeout(self.connect_timeout)
                // A PING on every checkout would double the round-trips per
                // decision; broken connections are dropped when a command fails.
                .test_on_check_out(false)
                // Checkouts are momentary (see `connection`), so without a floor the
                // pool would open one connection and stop; keep them all open, and
                // bb8's FIFO queue spreads checks over them.
                .min_idle(Some(self.pool_size))
                .build_unchecked(self.manager.clone())
        })
    }

    /// The sorted set of live replicas, `<prefix>{replicas}`.
    pub fn replicas_key(&self) -> String {
        format!("{}{{replicas}}", self.key_prefix)
    }

    /// SHA1 of each algorithm's script, as sent with `EVALSHA`.
    pub fn script_hashes(&self) -> Vec<(Algorithm, String)> {
        Algorithm::ALL
            .into_iter()
            .map(|algorithm| (algorithm, self.scripts.get(algorithm).get_hash().to_owned()))
            .collect()
    }

    /// A handle on a live pooled connection, for as many commands as the caller likes.
    ///
    /// A `MultiplexedConnection` pipelines any number of concurrent commands,
    /// so the pooled connection goes back to the pool at once and the caller
    /// keeps a clone: holding it for the whole round-trip would allow only
    /// `pool_size` checks in flight and queue the rest behind the checkout
    /// timeout, which is what a burst of concurrent checks used to hit.
    ///
    /// Connections opened before the last connection-level failure are
    /// dropped here instead of being handed out (see [`TrackedConnection`]).
    ///
    /// Returns the clone and the generation it was opened in, for [`Self::reply`].
    async fn connection(&self) -> Result<(MultiplexedConnection, u64), StoreError> {
        let timed_out = || StoreError::Timeout {
            operation: "waiting for a Redis connection",
            after: self.connect_timeout,
        };
        let pool = self.pool();
        let checkout = async {
            loop {
                let mut pooled = pool.get().await.map_err(|error| match error {
                    RunError::TimedOut => timed_out(),
                    RunError::User(error) => StoreError::Unavailable(describe(&error)),
                })?;
                if pooled.generation < self.generation.load(Ordering::Acquire) {
                    pooled.broken = true;
                    continue;
                }
                return Ok((pooled.connection.clone(), pooled.generation));
            }
        };
        // Each `get` has its own timeout; this bounds the whole loop, which
        // skips at most `pool_size` stale idle connections without waiting.
        tokio::time::timeout(self.connect_timeout, checkout)
            .await
            .map_err(|_| timed_out())?
    }

    /// Waits at most `command_timeout` for `command`, sent on a connection
    /// opened in `generation`. When the connection itself failed (not just the
    /// command), every pooled connection at least as old is retired: they were
    /// most likely cut by the same restart or network fault, and handing them
    /// out would fail one check each. A timeout retires nothing: a slow or
    /// paused server still holds its connections.
    async fn reply<T>(
        &self,
        generation: u64,
        operation: &'static str,
        command: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let timed_out = StoreError::Timeout {
            operation,
            after: self.command_timeout,
        };
        match tokio::time::timeout(self.command_timeout, command).await {
            Err(_) => Err(timed_out),
            Ok(Ok(value)) => Ok(value),
            // redis-rs's own per-request timeout (set to the same duration)
            // may fire on the same timer tick as ours: the same event.
            Ok(Err(error)) if error.is_timeout() => Err(timed_out),
            // A healthy server that will never decide this key here: not an
            // outage, and no reason to retire connections.
            Ok(Err(error)) if is_cluster_reply(&error) => {
                let problem = format!(
                    "Redis answered {} ({}): it is a Redis Cluster node, which redis.mode = \"standalone\" cannot use; set redis.mode = \"cluster\" and list the nodes in redis.nodes",
                    error.code().unwrap_or("a cluster error"),
                    error.category()
                );
                self.misconfiguration.report(&problem);
                Err(StoreError::Misconfigured(problem))
            }
            // Redis answered, about this one call: not an outage.
            Ok(Err(error)) if is_unreadable_reply(&error) => {
                Err(StoreError::InvalidReply(describe(&error)))
            }
            Ok(Err(error)) => {
                // READONLY: the server this connection reaches was demoted
                // (a Sentinel failover): retire the connections, so the next
                // ones are opened to the master the sentinels name now.
                let demoted = matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly));
                if demoted || error.is_unrecoverable_error() || error.is_connection_dropped() {
                    self.generation.fetch_max(generation + 1, Ordering::AcqRel);
                    self.reachability.down(&describe(&error));
                }
                Err(StoreError::Unavailable(describe(&error)))
            }
        }
    }
}

/// Replies a standalone server never sends: only a Redis Cluster node answers
/// that a key lives elsewhere (`MOVED`, `ASK`), that keys span slots
/// (`CROSSSLOT`), or that the cluster cannot serve (`CLUSTERDOWN`, `TRYAGAIN`).
fn is_cluster_reply(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
        )
    )
}

/// Whether Redis answered, but with something that concerns this one call
/// only: a reply of another shape than the script's (a bug), or an error the
/// script raised while it ran (a key holding another type, a Lua error),
/// which Redis 6 and 7 both report with `user_script` in the message. Such a
/// reply is one key's trouble (or a bug), never a sign that Redis is down, so
/// it must not count against Redis in the breaker. Errors about the server
/// (`OOM`, `BUSY`, `LOADING`, `READONLY`, …) are not among them.
fn is_unreadable_reply(error: &RedisError) -> bool {
    match error.kind() {
        redis::ErrorKind::UnexpectedReturnType => true,
        _ => match error.code() {
            Some("WRONGTYPE") => true,
            Some("ERR") => error
                .detail()
                .is_some_and(|detail| detail.contains("user_script")),
            _ => false,
        },
    }
}

/// A Redis error as text fit for logs and readiness: kind and server message,
/// never the connection URL.
fn describe(error: &RedisError) -> String {
    if error.is_connection_refusal() {
        "connection refused".to_owned()
    } else if error.is_timeout() {
        "connection timed out".to_owned()
    } else if error.is_connection_dropped() {
        // The cause says more than the category: a TLS alert ("certificate
        // required") arrives as a dropped connection.
        format!("connection dropped ({error})")
    } else {
        error.to_string()
    }
}

impl RedisStore {
    /// One decision: a pooled connection, then `EVALSHA` of the policy's script.
    async fn evalsha(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        let (mut connection, generation) = self.connection().await?;
        let invocation = decision_call(&self.scripts, &self.key_prefix, policy, key, cost);
        // `invoke_async` sends EVALSHA and, on NOSCRIPT (a restart, a failover,
        // SCRIPT FLUSH), loads the script and repeats the call once.
        let reply = self
            .reply(
                generation,
                "running a limiter script",
                invocation.invoke_async::<(u8, i64, i64, i64)>(&mut connection),
            )
            .await?;
        outcome(reply)
    }

    /// One request of several checks: a pooled connection, then one
    /// `EVALSHA` of `check_all.lua` over every check's keys. A standalone
    /// Redis has no hash slots, so one script may touch keys of different
    /// hash tags (a Redis Cluster would refuse it, `CROSSSLOT`: see
    /// [`ClusterStore`]), and Redis runs it whole before anything else.
    async fn evalsha_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        let (mut connection, generation) = self.connection().await?;
        let checks_and_flags: Vec<(&Check<'_>, u64)> = checks
            .iter()
            .map(|check| (check, u64::from(check.enforced)))
            .collect();
        let invocation = checks_call(
            &self.scripts.check_all.script,
            &self.key_prefix,
            &checks_and_flags,
        );
        // NOSCRIPT: loaded and repeated once, as for one check.
        let reply = self
            .reply(
                generation,
                "running the all-or-nothing script",
                invocation.invoke_async::<redis::Value>(&mut connection),
            )
            .await?;
        // The script holds no units for a refused request: the tokens are
        // only for a caller that must give units back itself (the cluster).
        Ok(checks_reply(&reply, checks.len())?
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect())
    }
}

/// The script call of one decision: the policy's script, the key's Redis
/// keys as `KEYS`, then window, limit and cost as `ARGV`.
fn decision_call<'s>(
    scripts: &'s Scripts,
    key_prefix: &str,
    policy: &Policy,
    key: LimiterKey<'_>,
    cost: u64,
) -> ScriptInvocation<'s> {
    let mut invocation = scripts.get(policy.algorithm()).prepare_invoke();
    add_keys(key_prefix, policy, key, |name| {
        invocation.key(name);
    });
    invocation
        .arg(policy.window().as_micros())
        .arg(policy.limit())
        .arg(cost);
    invocation
}

/// A script's reply `{allowed, remaining, reset_after_us, retry_after_us}`;
/// a negative number is a reply the limiter cannot read.
fn outcome(
    (allowed, remaining, reset_after, retry_after): (u8, i64, i64, i64),
) -> Result<Outcome, StoreError> {
    let non_negative = |value: i64| {
        u64::try_from(value)
            .map_err(|_| StoreError::InvalidReply(format!("negative value {value}")))
    };
    Ok(Outcome {
        allowed: allowed == 1,
        remaining: non_negative(remaining)?,
        reset_after_us: non_negative(reset_after)?,
        retry_after_us: non_negative(retry_after)?,
    })
}

/// The script call of several checks (`check_all.lua`, `release.lua`):
/// every check's Redis keys as `KEYS`, in order, and five `ARGV` per check:
/// algorithm, window, limit, cost, and the script's own fifth (enforced,
/// or the token to give back), given with each check.
fn checks_call<'s>(
    script: &'s Script,
    key_prefix: &str,
    checks: &[(&Check<'_>, u64)],
) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    for (check, fifth) in checks {
        add_keys(key_prefix, check.policy, check.key, |name| {
            invocation.key(name);
        });
        invocation
            .arg(check.policy.algorithm().as_str())
            .arg(check.policy.window().as_micros())
            .arg(check.policy.limit())
            .arg(check.cost)
            .arg(*fifth);
    }
    invocation
}

/// As [`checks_call`], as a plain command: `head` (`EVALSHA`, `EVAL`) and
/// `script` (its SHA1, its source), then the number of keys, the keys and
/// the arguments. For the cluster store, which sends `EVAL` itself on
/// `NOSCRIPT` (see `ClusterStore::group_call`).
fn checks_command(
    head: &str,
    script: &str,
    key_prefix: &str,
    checks: &[(&Check<'_>, u64)],
) -> redis::Cmd {
    let mut keys = Vec::with_capacity(checks.len() * 2);
    for (check, _) in checks {
        add_keys(key_prefix, check.policy, check.key, |name| {
            keys.push(name.to_owned());
        });
    }
    let mut command = redis::cmd(head);
    command.arg(script).arg(keys.len()).arg(&keys);
    for (check, fifth) in checks {
        command
            .arg(check.policy.algorithm().as_str())
            .arg(check.policy.window().as_micros())
            .arg(check.policy.limit())
            .arg(check.cost)
            .arg(*fifth);
    }
    command
}

/// A reply of `check_all.lua` or `release.lua` for `checks` checks: five
/// integers per check, `{allowed (1|0), remaining, reset_after_us,
/// retry_after_us, token}`. Anything else (another length, a negative
/// number, a string) is a reply the limiter cannot read.
fn checks_reply(reply: &redis::Value, checks: usize) -> Result<Vec<(Outcome, u64)>, StoreError> {
    let expected = checks.saturating_mul(5);
    let values = match reply {
        redis::Value::Array(values) if values.len() == expected => values,
        other => {
            return Err(StoreError::InvalidReply(format!(
                "expected {expected} integers for {checks} checks, got {}",
                describe_value(other)
            )));
        }
    };
    let number = |value: &redis::Value| match value {
        redis::Value::Int(number) => u64::try_from(*number)
            .map_err(|_| StoreError::InvalidReply(format!("negative value {number}"))),
        other => Err(StoreError::InvalidReply(format!(
            "expected an integer, got {}",
            describe_value(other)
        ))),
    };
    values
        .chunks_exact(5)
        .map(|fields| {
            let allowed = match number(&fields[0])? {
                0 => false,
                1 => true,
                other => {
                    return Err(StoreError::InvalidReply(format!(
                        "allowed is {other}, not 0 or 1"
                    )));
                }
            };
            let outcome = Outcome {
                allowed,
                remaining: number(&fields[1])?,
                reset_after_us: number(&fields[2])?,
                retry_after_us: number(&fields[3])?,
            };
            Ok((outcome, number(&fields[4])?))
        })
        .collect()
}

/// A reply's shape for an error message: never its contents beyond a number.
fn describe_value(value: &redis::Value) -> String {
    match value {
        redis::Value::Array(values) => format!("an array of {}", values.len()),
        redis::Value::Int(number) => format!("the integer {number}"),
        redis::Value::Nil => "nil".to_owned(),
        _ => "another type".to_owned(),
    }
}

/// The client span of one decision, `EVALSHA`, with the database but never
/// the Redis keys (they contain the limiter key); marks a failed one with
/// its error's kind. The policy and its algorithm are on the parent, the
/// request's span (see `slidegate_core::observe::record_decision`).
async fn traced_decision(
    decide: impl Future<Output = Result<Outcome, StoreError>>,
) -> Result<Outcome, StoreError> {
    let span = tracing::debug_span!(
        // The span's own name, not an `otel.name` field: a static name
        // costs nothing per span, a field is copied into a new String.
        "EVALSHA",
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        error.type = Empty,
        otel.status_code = Empty,
    );
    traced(span, decide).await
}

/// The client span of one call of several checks, `EVALSHA` of `script`
/// (`check_all`, `release`), with how many checks it carries; like
/// [`traced_decision`], never the keys.
async fn traced_checks<T>(
    script: &'static str,
    checks: usize,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = tracing::debug_span!(
        // The span's own name, not an `otel.name` field: a static name
        // costs nothing per span, a field is copied into a new String.
        "EVALSHA",
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        slidegate.script = script,
        slidegate.checks = checks,
        error.type = Empty,
        otel.status_code = Empty,
    );
    traced(span, call).await
}

/// Runs `call` while `span` is open, marking the span with the error's kind
/// if it fails; the span ends when the call does.
async fn traced<T>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    // Created, never entered: its start and end are what the trace shows,
    // and nothing inside the call builds a span or logs a line that needs
    // it as its parent (a line logged there carries the request's span and
    // trace). Entering it on every poll, and again to drop the future, cost
    // about a thousand instructions each time (`tests/load/instructions.sh`).
    let result = call.await;
    if let Err(error) = &result
        && !span.is_disabled()
    {
        span.record("error.type", error.kind());
        span.record("otel.status_code", "ERROR");
    }
    result
}

impl Store for RedisStore {
    /// Traced as one client span, `EVALSHA` (see [`traced_decision`]).
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        traced_decision(self.evalsha(policy, key, cost)).await
    }

    /// All or nothing, atomically: one `EVALSHA` of `check_all.lua` decides
    /// every check (one round-trip, whatever their number), and Redis runs
    /// one script at a time, so no other check ever sees the units of a
    /// refused request. Nothing is consumed when the script fails (it gives
    /// back what it reserved before raising its error); a call that timed
    /// out may have been decided all the same, as one check may. Traced as
    /// one client span, `EVALSHA` (see [`traced_checks`]); no checks, no call.
    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        traced_checks("check_all", checks.len(), self.evalsha_all(checks)).await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    /// One entry for all threads' pools together: an operator sizes Redis
    /// by the replica's connections, not by its threads.
    fn pools(&self) -> Vec<PoolStats> {
        let mut total = PoolStats {
            name: "redis",
            max_size: 0,
            connections: 0,
            idle: 0,
            waiting: 0,
            timeouts_total: 0,
            opened_total: 0,
            closed_broken_total: 0,
        };
        for pool in self.pools.iter() {
            let state = pool.state();
            let statistics = &state.statistics;
            total.max_size += pool.config().max_size;
            total.connections += state.connections;
            total.idle += state.idle_connections;
            total.waiting += statistics.pending_gets();
            total.timeouts_total += statistics.get_timed_out;
            total.opened_total += statistics.connections_created;
            total.closed_broken_total += statistics.connections_closed_broken;
        }
        vec![total]
    }

    /// A `PING`, then `INFO cluster`: a cluster node answers PING like any
    /// server but would answer half the checks `MOVED`, so it is not ready.
    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let mut latency = None;
        let probe = async {
            let (mut connection, generation) = self.connection().await?;
            let ping = redis::cmd("PING");
            let pong = ping.query_async::<String>(&mut connection);
            self.reply(generation, "waiting for PING", pong).await?;
            latency = Some(started.elapsed());
            let mut info = redis::cmd("INFO");
            let info = info.arg("cluster").query_async::<String>(&mut connection);
            match self
                .reply(generation, "waiting for INFO cluster", info)
                .await
            {
                Ok(info) if cluster_enabled(&info) => {
                    let problem = "Redis is a cluster node (cluster_enabled:1), which redis.mode = \"standalone\" cannot use: set redis.mode = \"cluster\" and list the nodes in redis.nodes";
                    self.misconfiguration.report(problem);
                    Err(StoreError::Misconfigured(problem.to_owned()))
                }
                Ok(_) => {
                    self.misconfiguration.clear();
                    Ok(())
                }
                // A server that refuses INFO (renamed or denied by an ACL, as
                // some managed services do) answered PING: a standalone
                // server as far as we can tell.
                Err(StoreError::Unavailable(_)) if self.reachability.is_up() => Ok(()),
                Err(error) => Err(error),
            }
        };
        let result = probe
            .await
            .map_err(|error| self.with_last_connect_error(error));
        let pool = self.pools().pop().map(|total| PoolHealth {
            max_size: total.max_size,
            connections: total.connections,
            idle: total.idle,
        });
        let ok = result.is_ok();
        StoreHealth {
            store: "redis",
            ok,
            dependencies: vec![DependencyHealth {
                name: "redis",
                ok,
                latency_ms: latency
                    .filter(|_| ok)
                    .map(|latency| latency.as_secs_f64() * 1000.0),
                error: result.err().map(|error| error.to_string()),
                pool,
                topology: None,
            }],
            scripts: self.script_hashes(),
        }
    }

    async fn heartbeat(&self, replica: &str, stale_after: Duration) -> Result<u64, StoreError> {
        let (mut connection, generation) = self.connection().await?;
        let mut invocation = self.scripts.heartbeat.prepare_invoke();
        invocation
            .key(self.replicas_key())
            .arg(replica)
            .arg(stale_after.as_micros() as u64);
        let beat = invocation.invoke_async::<u64>(&mut connection);
        self.reply(generation, "sending a heartbeat", beat).await
    }
}

/// Whether `INFO cluster` says the server runs in cluster mode.
fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|line| line.trim() == "cluster_enabled:1")
}

impl RedisStore {
    /// A connection that could not be had in time says only that it waited;
    /// readiness adds why the last attempt to open one failed (refused, a
    /// TLS certificate that does not verify, authentication).
    fn with_last_connect_error(&self, error: StoreError) -> StoreError {
        match (&error, self.reachability.last_error()) {
            (StoreError::Timeout { .. }, Some(cause)) => StoreError::Unavailable(format!(
                "{error}; the last connection attempt failed: {cause}"
            )),
            _ => error,
        }
    }
}

/// A pooled multiplexed connection, with the generation it was opened in.
///
/// A `MultiplexedConnection` does not reconnect by itself and bb8-redis cannot
/// tell a dead one from a live one without a PING per checkout. Instead, a
/// connection-level failure on any connection raises the store's generation
/// (see `RedisStore::reply`); older connections are then dropped when next
/// checked out or returned, and bb8 opens fresh ones, so a replica recovers by
/// itself after Redis restarts without spending one failed check per stale
/// pooled connection.
pub struct TrackedConnection {
    connection: MultiplexedConnection,
    generation: u64,
    broken: bool,
}

/// Opens multiplexed connections that know their generation, and logs when
/// Redis is lost or regained. Every thread's pool has a clone; the
/// generation and the reachability are shared by all of them.
#[derive(Clone)]
pub struct TrackedConnectionManager {
    connector: Connector,
    reachability: Arc<Reachability>,
    generation: Arc<AtomicU64>,
    /// redis-rs gives every request on a multiplexed connection its own
    /// timeout, 500 ms by default; left alone it would cut any longer
    /// `command_timeout` short, and report it as a connection error.
    response_timeout: Duration,
}

impl ManageConnection for TrackedConnectionManager {
    type Connection = TrackedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        // Read before connecting: a failure seen while this connection is
        // being opened then also retires it, which errs towards reconnecting.
        let generation = self.generation.load(Ordering::Acquire);
        match self.connector.connect(self.response_timeout).await {
            Ok(connection) => {
                self.reachability.up();
                Ok(TrackedConnection {
                    connection,
                    generation,
                    broken: false,
                })
            }
            Err(error) => {
                self.reachability.down(&describe(&error));
                Err(error)
            }
        }
    }

    async fn is_valid(&self, connection: &mut Self::Connection) -> Result<(), Self::Error> {
        redis::cmd("PING")
            .query_async::<String>(&mut connection.connection)
            .await
            .map(drop)
    }

    fn has_broken(&self, connection: &mut Self::Connection) -> bool {
        connection.broken || connection.generation < self.generation.load(Ordering::Acquire)
    }
}

/// How a connection is opened: by redis-rs for `redis://` and `unix://`; for
/// `rediss://` over a TLS stream this store opens with its one connector
/// (see [`RedisTls`]) and hands to redis-rs, which then authenticates and
/// selects the database as it would on its own stream.
#[derive(Clone)]
enum Connector {
    Plain(redis::Client),
    /// The master the sentinels name now, asked on every (re)connection, so
    /// a failover is followed by the next connection opened.
    Sentinel {
        sentinels: Vec<redis::Client>,
        master: String,
        /// With `rediss://` sentinels: the sentinels and the master they
        /// name are reached over TLS, through this connector.
        tls: Option<tokio_native_tls::TlsConnector>,
    },
    Tls {
        host: String,
        port: u16,
        redis: redis::RedisConnectionInfo,
        tls: tokio_native_tls::TlsConnector,
    },
}

impl Connector {
    /// # Errors
    /// TLS settings with a URL that is not `rediss://`, or a `rediss://` URL
    /// asking to skip verification (`#insecure`).
    fn new(client: redis::Client, tls: Option<RedisTls>) -> Result<Self, StoreError> {
        let info = client.get_connection_info();
        let redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } = info.addr()
        else {
            return match tls {
                None => Ok(Self::Plain(client)),
                Some(_) => Err(StoreError::Unavailable(
                    "TLS certificates are set, but the Redis URL is not rediss://".to_owned(),
                )),
            };
        };
        if *insecure {
            return Err(StoreError::Unavailable(
                "the Redis URL asks to skip certificate verification (#insecure), which slidegate never does".to_owned(),
            ));
        }
        let tls = match tls {
            Some(tls) => tls,
            None => RedisTls::new(None, None)
                .map_err(|error| StoreError::Unavailable(error.to_string()))?,
        };
        Ok(Self::Tls {
            host: host.clone(),
            port: *port,
            redis: info.redis_settings().clone(),
            tls: tokio_native_tls::TlsConnector::from(tls.connector),
        })
    }

    /// # Errors
    /// A sentinel URL that does not parse or is not `redis://` (the message
    /// never repeats it).
    fn sentinel(target: &SentinelTarget, tls: Option<RedisTls>) -> Result<Self, StoreError> {
        let over_tls = target
            .sentinels
            .first()
            .is_some_and(|url| url.starts_with("rediss://"));
        let sentinels = target
            .sentinels
            .iter()
            .map(|url| {
                let client = redis::Client::open(url.as_str()).map_err(|error| {
                    StoreError::Unavailable(format!(
                        "a sentinel URL is invalid ({:?}); expected redis://host:port",
                        error.kind()
                    ))
                })?;
                match (client.get_connection_info().addr(), over_tls) {
                    (redis::ConnectionAddr::Tcp(..), false) => Ok(client),
                    (redis::ConnectionAddr::TcpTls { insecure: false, .. }, true) => Ok(client),
                    _ => Err(StoreError::Unavailable(
                        "every sentinel is reached alike: all redis://, or all rediss:// (verified)"
                            .to_owned(),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if over_tls {
            let tls = match tls {
                Some(tls) => tls,
                None => RedisTls::new(None, None)
                    .map_err(|error| StoreError::Unavailable(error.to_string()))?,
            };
            Some(tokio_native_tls::TlsConnector::from(tls.connector))
        } else {
            None
        };
        Ok(Self::Sentinel {
            sentinels,
            master: target.master.clone(),
            tls,
        })
    }

    /// A connection to `host:port` over TLS through `tls` (the chain and the
    /// host's name verified), authenticated as `redis` says.
    async fn open_tls(
        host: &str,
        port: u16,
        redis: &redis::RedisConnectionInfo,
        tls: &tokio_native_tls::TlsConnector,
        config: &redis::AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let open = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            // Verifies the chain and that the certificate names `host`
            // (a DNS name, or an IP address in its subjectAltName).
            let stream = tls.connect(host, tcp).await?;
            MultiplexedConnection::new_with_config(redis, stream, config.clone()).await
        };
        let (connection, driver) = tokio::time::timeout(Self::OPEN_TIMEOUT, open)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        // It ends when the last clone of the connection is dropped.
        tokio::spawn(driver);
        Ok(connection)
    }

    /// A connection to `client`'s address: over TLS through `tls` when given.
    async fn open(
        client: &redis::Client,
        tls: Option<&tokio_native_tls::TlsConnector>,
        config: &redis::AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let info = client.get_connection_info();
        match (info.addr(), tls) {
            (redis::ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                Self::open_tls(host, *port, info.redis_settings(), tls, config).await
            }
            _ => {
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
            }
        }
    }

    /// Asks each sentinel in turn for the current master and connects to it,
    /// checking with `ROLE` that it is one (a sentinel may name the old
    /// master for a moment during a failover).
    async fn connect_via_sentinels(
        sentinels: &[redis::Client],
        master: &str,
        tls: Option<&tokio_native_tls::TlsConnector>,
        config: &redis::AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let mut last_error = None;
        for sentinel in sentinels {
            let attempt = async {
                let mut asking = Self::open(sentinel, tls, config).await?;
                let address: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async(&mut asking)
                    .await?;
                let (host, port) = address.ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::Io,
                        "the sentinel does not know the master",
                        master.to_owned(),
                    ))
                })?;
                // The master is reached as the sentinels are: with the
                // same credentials, over TLS when they are.
                let info = sentinel.get_connection_info();
                let mut connection = match tls {
                    Some(tls) => {
                        Self::open_tls(&host, port, info.redis_settings(), tls, config).await?
                    }
                    None => {
                        let info = info
                            .clone()
                            .set_addr(redis::ConnectionAddr::Tcp(host, port));
                        redis::Client::open(info)?
                            .get_multiplexed_async_connection_with_config(config)
                            .await?
                    }
                };
                let role: Vec<redis::Value> =
                    redis::cmd("ROLE").query_async(&mut connection).await?;
                match role.first() {
                    Some(redis::Value::BulkString(role)) if role == b"master" => Ok(connection),
                    _ => Err(RedisError::from((
                        ErrorKind::Io,
                        "the sentinel named a server that is not a master (a failover is under way)",
                    ))),
                }
            };
            match tokio::time::timeout(Self::OPEN_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {
                    last_error = Some(RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no sentinel configured"))))
    }

    /// Longest an attempt to open a connection may take, TLS handshake and
    /// authentication included (redis-rs's own default for plain ones). A
    /// checkout gives up after `connect_timeout`; this ends the attempt
    /// itself, so a server that accepts but never answers cannot hold a
    /// pool's slot for ever.
    const OPEN_TIMEOUT: Duration = Duration::from_secs(1);

    /// A multiplexed connection whose driver runs on the calling thread's
    /// runtime, replies awaited at most `response_timeout`.
    async fn connect(&self, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
        // redis-rs gives every request on a multiplexed connection its own
        // timeout, 500 ms by default; left alone it would cut any longer
        // `command_timeout` short, and report it as a connection error.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Self::OPEN_TIMEOUT));
        match self {
            Self::Plain(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            Self::Sentinel {
                sentinels,
                master,
                tls,
            } => Self::connect_via_sentinels(sentinels, master, tls.as_ref(), &config).await,
            Self::Tls {
                host,
                port,
                redis,
                tls,
            } => Self::open_tls(host, *port, redis, tls, &config).await,
        }
    }
}

/// Whether Redis answered the last time a connection was opened or failed,
/// so that losing and regaining it is logged once per change, not once per
/// failed check: during an outage every check fails, and readiness and
/// metrics already report it continuously.
#[derive(Debug, Default)]
struct Reachability {
    state: AtomicU8,
    /// Why the last connection failed, for readiness; taken only on failures
    /// and (re)connections, never on a decision.
    last_error: Mutex<Option<String>>,
}

impl Reachability {
    const UNKNOWN: u8 = 0;
    const UP: u8 = 1;
    const DOWN: u8 = 2;

    fn up(&self) {
        match self.state.swap(Self::UP, Ordering::Relaxed) {
            Self::UNKNOWN => tracing::info!("connected to Redis"),
            Self::DOWN => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!("reconnected to Redis; checks are decided again");
            }
            _ => {}
        }
    }

    /// `error` comes from [`describe`]: it never holds the URL.
    fn down(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
        if self.state.swap(Self::DOWN, Ordering::Relaxed) != Self::DOWN {
            tracing::warn!(
                error,
                "cannot reach Redis; checks are answered by their failure modes until it returns"
            );
        }
    }

    fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::UP
    }

    /// Why Redis could not be reached, while it cannot.
    fn last_error(&self) -> Option<String> {
        if self.state.load(Ordering::Relaxed) != Self::DOWN {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether a misconfiguration (a cluster node behind `redis.url`) has been
/// logged: one error line when it is first seen, not one per check; again
/// only after a probe found it fixed.
#[derive(Debug, Default)]
struct Misconfiguration(AtomicBool);

impl Misconfiguration {
    fn report(&self, problem: &str) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::error!(
                problem,
                "Redis is misconfigured for slidegate; checks it cannot decide are answered by their failure modes"
            );
        }
    }

    fn clear(&self) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis is no longer misconfigured");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's error reply as redis-rs reads it off the wire.
    fn reply(wire: &str) -> RedisError {
        match redis::parse_redis_value(wire.as_bytes()).unwrap() {
            redis::Value::ServerError(error) => error.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn replies_only_a_cluster_node_sends_are_told_apart_from_other_errors() {
        for wire in [
            "-MOVED 3999 127.0.0.1:7001\r\n",
            "-ASK 3999 127.0.0.1:7001\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
        ] {
            assert!(is_cluster_reply(&reply(wire)), "{wire:?}");
        }
        for wire in [
            "-NOSCRIPT No matching script\r\n",
            "-ERR wrong number of arguments\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            assert!(!is_cluster_reply(&reply(wire)), "{wire:?}");
        }
    }

    #[test]
    fn info_cluster_tells_a_cluster_node_from_a_standalone_server() {
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!cluster_enabled(""));
    }

    #[test]
    fn the_scripts_of_several_checks_hold_each_algorithm_once_and_no_single_check_call() {
        for (part, table) in ALGORITHMS
            .iter()
            .zip(["sliding_log", "sliding_window", "gcra"])
        {
            assert!(part.ends_with('\n'), "{table}");
            assert!(!part.contains(SINGLE_CHECK.trim_start()), "{table}");
            assert!(!part.contains("#KEYS"), "{table}: its own call is cut off");
            assert!(part.contains(&format!("\nlocal {table} = {{")), "{table}");
        }
        let scripts = Scripts::new();
        for assembled in [&scripts.check_all, &scripts.release] {
            // The SHA1 of the assembled source, not of one of its parts.
            assert_ne!(assembled.script.get_hash(), scripts.sliding_log.get_hash());
            assert!(
                assembled
                    .source
                    .starts_with(SLIDING_LOG.lines().next().unwrap())
            );
        }
        assert_ne!(
            scripts.check_all.script.get_hash(),
            scripts.release.script.get_hash()
        );
    }

    #[test]
    fn a_reply_of_several_checks_is_read_strictly() {
        let ints = |values: &[i64]| {
            redis::Value::Array(values.iter().map(|&v| redis::Value::Int(v)).collect())
        };
        let read = checks_reply(&ints(&[1, 9, 100, 0, 42, 0, 0, 7, 5, 0]), 2).unwrap();
        assert_eq!(
            read,
            vec![
                (
                    Outcome {
                        allowed: true,
                        remaining: 9,
                        reset_after_us: 100,
                        retry_after_us: 0
                    },
                    42
                ),
                (
                    Outcome {
                        allowed: false,
                        remaining: 0,
                        reset_after_us: 7,
                        retry_after_us: 5
                    },
                    0
                ),
            ]
        );
        for (reply, checks) in [
            (ints(&[1, 9, 100, 0, 42]), 2),
            (ints(&[1, 9, 100, 0, 42, 1]), 1),
            (ints(&[2, 9, 100, 0, 0]), 1),
            (ints(&[1, -1, 100, 0, 0]), 1),
            (redis::Value::Nil, 1),
            (redis::Value::Int(1), 1),
            (
                redis::Value::Array(vec![
                    redis::Value::Int(1),
                    redis::Value::BulkString(b"9".to_vec()),
                    redis::Value::Int(0),
                    redis::Value::Int(0),
                    redis::Value::Int(0),
                ]),
                1,
            ),
        ] {
            let error = checks_reply(&reply, checks).unwrap_err();
            assert!(matches!(error, StoreError::InvalidReply(_)), "{reply:?}");
        }
    }

    #[test]
    fn debug_output_of_the_options_shows_no_url() {
        let options = RedisOptions {
            url: "rediss://:hunter2@redis.internal:6380/0".into(),
            tls: Some(RedisTls::new(None, None).unwrap()),
            key_prefix: "slidegate:".into(),
            pool_size: 2,
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(50),
            sentinel: None,
        };
        let debug = format!("{options:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("redis.internal"), "{debug}");
        assert!(debug.contains("url: \"<redacted>\""), "{debug}");
        assert!(debug.contains("pool_size: 2"), "{debug}");
    }
}
