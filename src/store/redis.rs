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
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bb8::{ManageConnection, Pool, RunError};
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Script, ScriptInvocation};
use thread_local::ThreadLocal;
use tracing::Instrument;
use tracing::field::Empty;

use crate::limiter::{
    Algorithm, DependencyHealth, LimiterKey, Outcome, Policy, PoolHealth, PoolStats, Store,
    StoreError, StoreHealth,
};

const SLIDING_LOG: &str = include_str!("../../lua/sliding_log.lua");
const SLIDING_WINDOW: &str = include_str!("../../lua/sliding_window.lua");
const GCRA: &str = include_str!("../../lua/gcra.lua");
const HEARTBEAT: &str = include_str!("../../lua/heartbeat.lua");

/// How the Redis store connects and how long it waits.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Key prefix before the hash tag; must not contain `{` or `}`.
    pub key_prefix: String,
    /// Connections of each thread's pool (see [`RedisStore`]).
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including establishing one.
    pub connect_timeout: Duration,
    /// Longest wait for one command's reply.
    pub command_timeout: Duration,
}

/// The scripts, each built once; `Script` keeps the SHA1 it sends with `EVALSHA`.
struct Scripts {
    sliding_log: Script,
    sliding_window: Script,
    gcra: Script,
    heartbeat: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            sliding_log: Script::new(SLIDING_LOG),
            sliding_window: Script::new(SLIDING_WINDOW),
            gcra: Script::new(GCRA),
            heartbeat: Script::new(HEARTBEAT),
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
        let generation = Arc::new(AtomicU64::new(0));
        Ok(Self {
            pools: ThreadLocal::new(),
            manager: TrackedConnectionManager {
                manager,
                reachability: Arc::clone(&reachability),
                generation: Arc::clone(&generation),
                response_timeout: options.command_timeout,
            },
            pool_size: options.pool_size,
            connect_timeout: options.connect_timeout,
            reachability,
            generation,
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
            // Redis answered, about this one call: not an outage.
            Ok(Err(error)) if is_unreadable_reply(&error) => {
                Err(StoreError::InvalidReply(describe(&error)))
            }
            Ok(Err(error)) => {
                if error.is_unrecoverable_error() || error.is_connection_dropped() {
                    self.generation.fetch_max(generation + 1, Ordering::AcqRel);
                    self.reachability.down(&describe(&error));
                }
                Err(StoreError::Unavailable(describe(&error)))
            }
        }
    }
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
        let (mut connection, generation) = self.connection().await?;
        let mut invocation = self.scripts.get(policy.algorithm()).prepare_invoke();
        self.add_keys(&mut invocation, policy, key);
        invocation
            .arg(policy.window().as_micros())
            .arg(policy.limit())
            .arg(cost);
        // `invoke_async` sends EVALSHA and, on NOSCRIPT (a restart, a failover,
        // SCRIPT FLUSH), loads the script and repeats the call once.
        let (allowed, remaining, reset_after, retry_after) = self
            .reply(
                generation,
                "running a limiter script",
                invocation.invoke_async::<(u8, i64, i64, i64)>(&mut connection),
            )
            .await?;
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

    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let probe = async {
            let (mut connection, generation) = self.connection().await?;
            let ping = redis::cmd("PING");
            let pong = ping.query_async::<String>(&mut connection);
            self.reply(generation, "waiting for PING", pong).await
        };
        let result = probe.await;
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
                latency_ms: ok.then(|| started.elapsed().as_secs_f64() * 1000.0),
                error: result.err().map(|error| error.to_string()),
                pool,
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

/// bb8-redis's manager, with connections that know their generation, and a
/// log line when Redis is lost or regained. Every thread's pool has a clone;
/// the generation and the reachability are shared by all of them.
#[derive(Clone)]
pub struct TrackedConnectionManager {
    manager: RedisConnectionManager,
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
        match self.manager.connect().await {
            Ok(mut connection) => {
                self.reachability.up();
                connection.set_response_timeout(self.response_timeout);
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
        self.manager.is_valid(&mut connection.connection).await
    }

    fn has_broken(&self, connection: &mut Self::Connection) -> bool {
        connection.broken || connection.generation < self.generation.load(Ordering::Acquire)
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
                "cannot reach Redis; checks are answered by their failure modes until it returns"
            );
        }
    }
}
