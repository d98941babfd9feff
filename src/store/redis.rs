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
//! of `<policy>:<key>`, so the same scripts run unchanged on a cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bb8::{ManageConnection, Pool, RunError};
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script, ScriptInvocation};
use tracing::Instrument;
use tracing::field::Empty;

use crate::limiter::{
    Algorithm, DependencyHealth, LimiterKey, Outcome, Policy, PoolHealth, PoolStats, Store,
    StoreError, StoreHealth,
};

const SLIDING_LOG: &str = include_str!("../../lua/sliding_log.lua");
const SLIDING_WINDOW: &str = include_str!("../../lua/sliding_window.lua");
const GCRA: &str = include_str!("../../lua/gcra.lua");

/// How the Redis store connects and how long it waits.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Key prefix before the hash tag; must not contain `{` or `}`.
    pub key_prefix: String,
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including establishing one.
    pub connect_timeout: Duration,
    /// Longest wait for one command's reply.
    pub command_timeout: Duration,
}

/// The three scripts, each built once; `Script` keeps the SHA1 it sends with `EVALSHA`.
struct Scripts {
    sliding_log: Script,
    sliding_window: Script,
    gcra: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            sliding_log: Script::new(SLIDING_LOG),
            sliding_window: Script::new(SLIDING_WINDOW),
            gcra: Script::new(GCRA),
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
pub struct RedisStore {
    pool: Pool<TrackedConnectionManager>,
    reachability: Arc<Reachability>,
    scripts: Scripts,
    key_prefix: String,
    command_timeout: Duration,
}

impl RedisStore {
    /// Builds the pool without connecting: a replica starts (and reports
    /// itself not ready) while Redis is down, and connects when it returns.
    ///
    /// # Errors
    /// When the URL does not parse. The message never repeats the URL, which may hold a password.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        let manager = RedisConnectionManager::new(options.url.as_str()).map_err(|error| {
            StoreError::Unavailable(format!(
                "the Redis URL is invalid ({:?}); expected redis://host:port",
                error.kind()
            ))
        })?;
        let reachability = Arc::new(Reachability::default());
        let pool = Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(options.connect_timeout)
            // A PING on every checkout would double the round-trips per
            // decision; broken connections are dropped when a command fails.
            .test_on_check_out(false)
            // Checkouts are momentary (see `connection`), so without a floor the
            // pool would open one connection and stop; keep them all open, and
            // bb8's FIFO queue spreads checks over them.
            .min_idle(Some(options.pool_size))
            .build_unchecked(TrackedConnectionManager {
                manager,
                reachability: Arc::clone(&reachability),
            });
        Ok(Self {
            pool,
            reachability,
            scripts: Scripts::new(),
            key_prefix: options.key_prefix,
            command_timeout: options.command_timeout,
        })
    }

    /// Adds the Redis keys of `key` under `policy` to `invocation`, in the
    /// order the script expects them as `KEYS`; one buffer serves all of them.
    fn add_keys(
        &self,
        invocation: &mut ScriptInvocation<'_>,
        policy: &Policy,
        key: LimiterKey<'_>,
    ) {
        let mut name = String::with_capacity(
            self.key_prefix.len()
                + policy.name().as_str().len()
                + key.tenant().map_or(0, |tenant| tenant.len() + 1)
                + key.as_str().len()
                + 8,
        );
        name.push_str(&self.key_prefix);
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
            Algorithm::SlidingLog => &[":log", ":seq"],
            Algorithm::SlidingWindow => &[":sw"],
            Algorithm::Gcra => &[":gcra"],
        };
        for suffix in suffixes {
            name.truncate(tagged);
            name.push_str(suffix);
            invocation.key(name.as_str());
        }
    }

    /// SHA1 of each algorithm's script, as sent with `EVALSHA`.
    pub fn script_hashes(&self) -> Vec<(Algorithm, String)> {
        Algorithm::ALL
            .into_iter()
            .map(|algorithm| (algorithm, self.scripts.get(algorithm).get_hash().to_owned()))
            .collect()
    }

    /// A handle on one pooled multiplexed connection, and the flag that tells
    /// the pool to replace it.
    ///
    /// The pool guard is released before the command is sent: a
    /// `MultiplexedConnection` pipelines any number of concurrent commands,
    /// so holding it exclusively for a round-trip would cap the checks in
    /// flight at `pool_size` and queue the rest (measured: 10 connections and
    /// 150 clients gave half the throughput of letting them share).
    async fn connection(&self) -> Result<(MultiplexedConnection, BrokenFlag), StoreError> {
        let pooled = self.pool.get().await.map_err(|error| match error {
            RunError::TimedOut => StoreError::Timeout {
                operation: "waiting for a Redis connection",
                after: self.pool.config().connection_timeout,
            },
            RunError::User(error) => StoreError::Unavailable(describe(&error)),
        })?;
        Ok((
            pooled.connection.clone(),
            BrokenFlag(Arc::clone(&pooled.broken)),
        ))
    }
}

/// Marks a pooled connection for replacement after a connection-level failure.
struct BrokenFlag(Arc<AtomicBool>);

impl BrokenFlag {
    /// Returns whether the error was fatal to the connection.
    fn mark_if_fatal(&self, error: &RedisError) -> bool {
        let fatal = error.is_unrecoverable_error() || error.is_connection_dropped();
        if fatal {
            self.0.store(true, Ordering::Relaxed);
        }
        fatal
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
        "connection dropped".to_owned()
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
        let (mut connection, broken) = self.connection().await?;
        let mut invocation = self.scripts.get(policy.algorithm()).prepare_invoke();
        self.add_keys(&mut invocation, policy, key);
        invocation
            .arg(policy.window().as_micros())
            .arg(policy.limit())
            .arg(cost);
        // `invoke_async` sends EVALSHA and, on NOSCRIPT (a restart, a failover,
        // SCRIPT FLUSH), loads the script and repeats the call once.
        let reply = tokio::time::timeout(
            self.command_timeout,
            invocation.invoke_async::<(u8, i64, i64, i64)>(&mut connection),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            operation: "running a limiter script",
            after: self.command_timeout,
        })?;
        let (allowed, remaining, reset_after, retry_after) = reply.map_err(|error| {
            if broken.mark_if_fatal(&error) {
                self.reachability.down(&describe(&error));
            }
            StoreError::Unavailable(describe(&error))
        })?;
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
}

impl Store for RedisStore {
    /// Traced as one client span, `EVALSHA`, with the database and the
    /// algorithm but never the Redis keys (they contain the limiter key).
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        let span = tracing::debug_span!(
            "redis.evalsha",
            otel.name = "EVALSHA",
            otel.kind = "client",
            db.system = "redis",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            slidegate.algorithm = policy.algorithm().as_str(),
            error.type = Empty,
            otel.status_code = Empty,
        );
        let result = self
            .evalsha(policy, key, cost)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result
            && !span.is_disabled()
        {
            span.record("error.type", error.kind());
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn pools(&self) -> Vec<PoolStats> {
        let state = self.pool.state();
        let statistics = &state.statistics;
        vec![PoolStats {
            name: "redis",
            max_size: self.pool.config().max_size,
            connections: state.connections,
            idle: state.idle_connections,
            waiting: statistics.pending_gets(),
            timeouts_total: statistics.get_timed_out,
            opened_total: statistics.connections_created,
            closed_broken_total: statistics.connections_closed_broken,
        }]
    }

    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let probe = async {
            let (mut connection, broken) = self.connection().await?;
            let ping = tokio::time::timeout(
                self.command_timeout,
                redis::cmd("PING").query_async::<String>(&mut connection),
            )
            .await
            .map_err(|_| StoreError::Timeout {
                operation: "waiting for PING",
                after: self.command_timeout,
            })?;
            ping.map_err(|error| {
                if broken.mark_if_fatal(&error) {
                    self.reachability.down(&describe(&error));
                }
                StoreError::Unavailable(describe(&error))
            })
        };
        let result = probe.await;
        let state = self.pool.state();
        let pool = Some(PoolHealth {
            max_size: self.pool.config().max_size,
            connections: state.connections,
            idle: state.idle_connections,
        });
        let ok = result.is_ok();
        StoreHealth {
            store: "redis",
            ok,
            dependencies: vec![DependencyHealth {
                name: "redis",
                ok,
                latency_ms: ok.then(|| started.elapsed().as_secs_f64() * 1000.0),
                error: result.err().map(|error| error.to_string()),
                pool,
            }],
            scripts: self.script_hashes(),
        }
    }
}

/// A pooled multiplexed connection that remembers whether it failed.
///
/// A `MultiplexedConnection` does not reconnect by itself and bb8-redis cannot
/// tell a dead one from a live one without a PING per checkout. Marking it
/// broken when a command fails at the connection level lets bb8 drop it and
/// open a fresh one, so a replica recovers by itself after Redis restarts.
pub struct TrackedConnection {
    connection: MultiplexedConnection,
    /// Shared with the clones handed to in-flight commands, which outlive the pool guard.
    broken: Arc<AtomicBool>,
}

/// bb8-redis's manager, with connections that can be marked broken and a
/// log line when Redis is lost or regained.
pub struct TrackedConnectionManager {
    manager: RedisConnectionManager,
    reachability: Arc<Reachability>,
}

impl ManageConnection for TrackedConnectionManager {
    type Connection = TrackedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        match self.manager.connect().await {
            Ok(connection) => {
                self.reachability.up();
                Ok(TrackedConnection {
                    connection,
                    broken: Arc::new(AtomicBool::new(false)),
                })
            }
            Err(error) => {
                self.reachability.down(&describe(&error));
                Err(error)
            }
        }
    }

    async fn is_valid(&self, connection: &mut Self::Connection) -> Result<(), Self::Error> {
        self.manager.is_valid(&mut connection.connection).await
    }

    fn has_broken(&self, connection: &mut Self::Connection) -> bool {
        connection.broken.load(Ordering::Relaxed)
    }
}

/// Whether Redis answered the last time a connection was opened or failed,
/// so that losing and regaining it is logged once per change, not once per
/// failed check: during an outage every check fails, and readiness and
/// metrics already report it continuously.
#[derive(Debug, Default)]
struct Reachability(AtomicU8);

impl Reachability {
    const UNKNOWN: u8 = 0;
    const UP: u8 = 1;
    const DOWN: u8 = 2;

    fn up(&self) {
        match self.0.swap(Self::UP, Ordering::Relaxed) {
            Self::UNKNOWN => tracing::info!("connected to Redis"),
            Self::DOWN => tracing::info!("reconnected to Redis; checks are decided again"),
            _ => {}
        }
    }

    /// `error` comes from [`describe`]: it never holds the URL.
    fn down(&self, error: &str) {
        if self.0.swap(Self::DOWN, Ordering::Relaxed) != Self::DOWN {
            tracing::warn!(
                error,
                "cannot reach Redis; checks answer 503 limiter_unavailable until it returns"
            );
        }
    }
}
