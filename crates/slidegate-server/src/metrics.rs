//! Prometheus metrics: owns the registry, hands out lock-free handles per policy, and renders `GET /metrics`.
//!
//! A check must not take a lock to be counted. prometheus-client's `Family`
//! looks label sets up under a read lock and its `Histogram` observes under a
//! mutex, so every label set a check can touch is resolved once, at start-up,
//! into handles that are plain atomics: [`PolicyMetrics`] per policy and
//! [`StoreErrorMetrics`] per store. Label values come from configuration
//! (policy names, the store kind) or fixed lists (outcomes, error kinds),
//! never from requests, so the number of series is bounded by the config.
//!
//! Values owned by someone else (connection pools, the span exporter) are read
//! when Prometheus scrapes, not pushed on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::telemetry::{self, SpanExportStats};
use slidegate_catalog::{CatalogStats, CatalogSync};
use slidegate_core::{
    BreakerState, ClusterStats, Decision, Failover, MemoryStats, Observer, PolicyRecorder,
    PoolStats, StoreError, StoreErrorRecorder,
};

/// `Content-Type` of [`Metrics::render`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prefix of every metric name.
const PREFIX: &str = "slidegate";

/// Upper bounds of the decision-latency buckets, in seconds: an embedded
/// decision takes microseconds, a Redis one a fraction of a millisecond on a
/// LAN, and `redis.command_timeout` (100 ms by default) caps the slow end.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    store: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

/// The registry of one replica. Each [`crate::startup::Application`] has its
/// own, so tests running several replicas in one process read their own numbers.
#[derive(Debug)]
pub struct Metrics {
    /// The Envoy front end's rule reloads, when it runs.
    envoy_reloads: std::sync::OnceLock<Arc<slidegate_envoy::ReloadCounters>>,
    registry: Registry,
    policies: PolicyMetricsSource,
    store_errors: Family<StoreErrorLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
}

impl Metrics {
    /// A registry for a replica running on `store` (`"redis"` or `"memory"`)
    /// with `policies` loaded.
    pub fn new(store: &'static str, policies: usize) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Checks decided, by policy and outcome (allowed, denied, shadow: a shadow policy's denial answered 200, degraded: decided by the open or local failure mode)",
            decisions.clone(),
        );
        let decision_seconds = Family::<PolicyLabels, LatencyHistogram>::default();
        registry.register(
            "decision_duration_seconds",
            "Time the store took to decide one check, by policy",
            decision_seconds.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Checks answered 503 because the store could not decide and the policy fails closed, by kind (timeout, unavailable, invalid_reply, misconfigured, circuit_open); the open and local failure modes' decisions count as degraded decisions instead",
            store_errors.clone(),
        );
        let loaded = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        loaded.set(i64::try_from(policies).unwrap_or(i64::MAX));
        registry.register("policies", "Policies loaded", loaded.clone());
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing or wrong credential, by endpoint (admin: the admin token; check: an API key)",
            auth_failures.clone(),
        );
        for endpoint in ["admin", "check"] {
            let _ = auth_failures.get_or_create(&AuthLabels { endpoint });
        }
        registry.register(
            "build",
            "The running version and store; always 1",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("store", store),
            ]),
        );
        Self {
            envoy_reloads: std::sync::OnceLock::new(),
            registry,
            policies: PolicyMetricsSource {
                decisions,
                decision_seconds,
                loaded,
            },
            store_errors,
            auth_failures,
        }
    }

    /// The handles for one policy. Creates its series, so they are exported
    /// (at zero) before the first check.
    pub fn policy(&self, name: &str) -> PolicyMetrics {
        self.policies.policy(name)
    }

    /// What the limiter reports to: these series, through the core's [`Observer`].
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(MetricsObserver {
            policies: self.policies.clone(),
            store_errors: self.store_errors.clone(),
        })
    }

    /// Counts one request refused for its credential; `endpoint` is `"admin"` or `"check"`.
    pub fn auth_failure(&self, endpoint: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { endpoint })
            .inc();
    }

    /// Everything in the Prometheus text format: the registry, then the
    /// values read at scrape time from `pools`, the in-process stores
    /// (`memory`), the failure handling (when
    /// the store is shared), the catalog (when policies come from Postgres:
    /// what is loaded and the catalog's counters) and the span exporter.
    pub fn render(
        &self,
        pools: &[PoolStats],
        failover: Option<&Failover>,
        catalog: Option<(CatalogSync, CatalogStats)>,
        memory: &[MemoryStats],
        cluster: Option<&ClusterStats>,
    ) -> String {
        let mut scraped = Registry::with_prefix(PREFIX);
        register_pools(&mut scraped, pools);
        register_memory(&mut scraped, memory);
        if let Some(cluster) = cluster {
            register_cluster(&mut scraped, cluster);
        }
        if let Some(failover) = failover {
            register_failover(&mut scraped, failover);
        }
        if let Some((sync, stats)) = catalog {
            register_catalog(&mut scraped, sync, stats);
        }
        if let Some(reloads) = self.envoy_reloads.get() {
            let family = Family::<ResultLabels, Counter>::default();
            for (result, value) in [("ok", reloads.ok()), ("invalid", reloads.invalid())] {
                family.get_or_create(&ResultLabels { result }).inc_by(value);
            }
            scraped.register(
                "envoy_rls_rule_reloads",
                "Changes to the Envoy rule files, by result (ok: put in force; invalid: refused, the last good rules kept)",
                family,
            );
        }
        register_spans(&mut scraped, telemetry::span_export_stats());
        let mut body = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut body, &self.registry)
            .and_then(|()| prometheus_text::encode(&mut body, &scraped));
        body
    }
}

impl Metrics {
    /// Exports `reloads` from now on (the Envoy front end's watcher counts them).
    pub fn count_envoy_reloads(&self, reloads: Arc<slidegate_envoy::ReloadCounters>) {
        let _ = self.envoy_reloads.set(reloads);
    }
}

fn register_pools(registry: &mut Registry, pools: &[PoolStats]) {
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let max = Family::<PoolLabels, Gauge>::default();
    let open = Family::<PoolLabels, Gauge>::default();
    let idle = Family::<PoolLabels, Gauge>::default();
    let waiting = Family::<PoolLabels, Gauge>::default();
    let timeouts = Family::<PoolLabels, Counter>::default();
    let opened = Family::<PoolLabels, Counter>::default();
    let broken = Family::<PoolLabels, Counter>::default();
    for pool in pools {
        let labels = PoolLabels { pool: pool.name };
        max.get_or_create(&labels).set(gauge(pool.max_size.into()));
        open.get_or_create(&labels)
            .set(gauge(pool.connections.into()));
        idle.get_or_create(&labels).set(gauge(pool.idle.into()));
        waiting.get_or_create(&labels).set(gauge(pool.waiting));
        timeouts.get_or_create(&labels).inc_by(pool.timeouts_total);
        opened.get_or_create(&labels).inc_by(pool.opened_total);
        broken
            .get_or_create(&labels)
            .inc_by(pool.closed_broken_total);
    }
    registry.register("pool_max_connections", "Pool size limit", max);
    registry.register("pool_connections", "Connections open now", open);
    registry.register(
        "pool_idle_connections",
        "Open connections not in use now",
        idle,
    );
    registry.register(
        "pool_waiting",
        "Checks waiting for a connection now",
        waiting,
    );
    registry.register(
        "pool_timeouts",
        "Waits for a connection that timed out",
        timeouts,
    );
    registry.register(
        "pool_connections_opened",
        "Connections opened, including reconnects",
        opened,
    );
    registry.register(
        "pool_connections_broken",
        "Connections dropped after a connection-level error",
        broken,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryStoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictedLabels {
    store: &'static str,
    state: &'static str,
}

/// The in-process stores: the embedded one, and the `local` failure mode's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeResultLabels {
    node: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeKindLabels {
    node: String,
    kind: &'static str,
}

/// A Redis Cluster's per-master counters (labels: masters, never keys) and its topology changes.
fn register_cluster(registry: &mut Registry, cluster: &ClusterStats) {
    let checks = Family::<NodeResultLabels, Counter>::default();
    let seconds = Family::<NodeLabels, Counter<f64, AtomicU64>>::default();
    for node in &cluster.nodes {
        for (result, value) in [
            ("decided", node.decided),
            ("timeout", node.timeouts),
            ("failed", node.failed),
        ] {
            checks
                .get_or_create(&NodeResultLabels {
                    node: node.node.clone(),
                    result,
                })
                .inc_by(value);
        }
        seconds
            .get_or_create(&NodeLabels {
                node: node.node.clone(),
            })
            .inc_by(node.latency_micros as f64 / 1_000_000.0);
    }
    registry.register(
        "cluster_node_checks",
        "Checks sent to each Redis Cluster master, by result (decided: it answered; timeout; failed: refused, dropped or the cluster down for the key)",
        checks,
    );
    registry.register(
        "cluster_node_check_seconds",
        "Time the checks sent to each Redis Cluster master took, in all (divide by slidegate_cluster_node_checks_total for the mean)",
        seconds,
    );
    // Gauges, not counters: they are the masters' own counts, which start
    // over when a master restarts and belong to every client of it.
    let redirections = Family::<NodeKindLabels, Gauge>::default();
    for master in &cluster.masters {
        for (kind, value) in [("moved", master.moved_replies), ("ask", master.ask_replies)] {
            redirections
                .get_or_create(&NodeKindLabels {
                    node: master.address.clone(),
                    kind,
                })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "cluster_node_redirect_replies",
        "MOVED and ASK replies each Redis Cluster master has sent to all its clients since it started (INFO errorstats, as of the last probe): a reshard in progress, or clients with a stale slot map",
        redirections,
    );
    let changes = Counter::<u64>::default();
    changes.inc_by(cluster.topology_changes);
    registry.register(
        "cluster_topology_changes",
        "Times the slot map the replica routes by changed (a failover, a reshard), as the background probe found",
        changes,
    );
}

fn register_memory(registry: &mut Registry, stores: &[MemoryStats]) {
    if stores.is_empty() {
        return;
    }
    let keys = Family::<MemoryStoreLabels, Gauge>::default();
    let max_keys = Family::<MemoryStoreLabels, Gauge>::default();
    let evicted = Family::<EvictedLabels, Counter>::default();
    for stats in stores {
        let store = MemoryStoreLabels { store: stats.name };
        keys.get_or_create(&store)
            .set(i64::try_from(stats.keys).unwrap_or(i64::MAX));
        max_keys
            .get_or_create(&store)
            .set(i64::try_from(stats.max_keys).unwrap_or(i64::MAX));
        for (state, value) in [
            ("idle", stats.evicted_idle),
            ("active", stats.evicted_active),
        ] {
            evicted
                .get_or_create(&EvictedLabels {
                    store: stats.name,
                    state,
                })
                .inc_by(value);
        }
    }
    registry.register(
        "memory_store_keys",
        "Keys an in-process limiter holds now, by store (embedded: the store without Redis; local: the local failure mode's)",
        keys,
    );
    registry.register(
        "memory_store_max_keys",
        "Most keys an in-process limiter holds (limiter.max_keys), by store",
        max_keys,
    );
    registry.register(
        "memory_store_evicted",
        "Keys an in-process limiter forgot to stay within limiter.max_keys, by store and state (idle: fully replenished, lossless; active: still counting, so it may be admitted early)",
        evicted,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn counter(value: u64) -> Counter {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// The failure handling's own counters and state, read now: the request path
/// pays nothing for them beyond the atomics it already bumps.
fn register_failover(registry: &mut Registry, failover: &Failover) {
    let counters = failover.counters().snapshot();
    registry.register(
        "deny_cache_hits",
        "Checks answered 429 from the deny cache, without a round-trip to Redis",
        counter(counters.deny_cache_hits),
    );
    registry.register(
        "deny_cache_full",
        "Denials not cached because the deny cache held its maximum number of keys",
        counter(counters.deny_cache_full),
    );
    let keys = failover.deny_cache().map_or(0, |cache| cache.len() as u64);
    registry.register(
        "deny_cache_keys",
        "Keys in the deny cache now (0 when it is off)",
        gauge(keys),
    );
    let current = failover.breaker_state();
    let state = Family::<StateLabels, Gauge>::default();
    for each in [
        BreakerState::Closed,
        BreakerState::HalfOpen,
        BreakerState::Open,
    ] {
        state
            .get_or_create(&StateLabels {
                state: each.as_str(),
            })
            .set(i64::from(each == current));
    }
    registry.register(
        "breaker_state",
        "The circuit breaker in front of Redis: 1 for its current state (closed, half_open, open), 0 for the others",
        state,
    );
    let transitions = Family::<TransitionLabels, Counter>::default();
    for (to, value) in [
        ("open", counters.breaker_opened),
        ("half_open", counters.breaker_half_opened),
        ("closed", counters.breaker_closed),
    ] {
        transitions
            .get_or_create(&TransitionLabels { to })
            .inc_by(value);
    }
    registry.register(
        "breaker_transitions",
        "Circuit breaker transitions, by the state entered",
        transitions,
    );
    let modes = Family::<ModeLabels, Counter>::default();
    for (mode, value) in [
        ("closed", counters.fail_closed),
        ("open", counters.fail_open),
        ("local", counters.fail_local),
    ] {
        modes.get_or_create(&ModeLabels { mode }).inc_by(value);
    }
    registry.register(
        "failover_decisions",
        "Checks Redis could not decide, by the failure mode that answered (closed: refused with 503, open: admitted, local: decided in process)",
        modes,
    );
    registry.register(
        "store_short_circuited",
        "Checks not sent to Redis because the breaker was open",
        counter(counters.short_circuited),
    );
    registry.register(
        "store_invalid_replies",
        "Checks whose Redis reply could not be read (a bug, not an outage): answered by the policy's failure mode, and not counted against Redis by the breaker",
        counter(counters.invalid_replies),
    );
    let heartbeats = Family::<ResultLabels, Counter>::default();
    for (result, value) in [
        ("ok", counters.heartbeats),
        ("error", counters.heartbeat_failures),
    ] {
        heartbeats
            .get_or_create(&ResultLabels { result })
            .inc_by(value);
    }
    registry.register(
        "heartbeats",
        "Heartbeats this replica sent to Redis, by result",
        heartbeats,
    );
    registry.register(
        "live_replicas",
        "Replicas sharing Redis, as last counted by the heartbeats (the local failure mode divides limits by it)",
        gauge(failover.live_replicas()),
    );
}

fn register_catalog(registry: &mut Registry, sync: CatalogSync, stats: CatalogStats) {
    let version = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    version.set(sync.version.unwrap_or(0));
    registry.register(
        "policy_version",
        "Version of the Postgres catalog in force on this replica (0 before the first load)",
        version,
    );
    if let Some(synced_at) = sync.synced_at {
        let seconds = synced_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let last = Gauge::<f64, AtomicU64>::default();
        last.set(seconds);
        registry.register(
            "catalog_last_sync_timestamp_seconds",
            "When this replica last applied a catalog load (Unix time)",
            last,
        );
    }
    let reloads = Family::<ResultLabels, Counter>::default();
    for (result, value) in [("ok", stats.loads_ok), ("error", stats.loads_failed)] {
        reloads
            .get_or_create(&ResultLabels { result })
            .inc_by(value);
    }
    registry.register(
        "catalog_reloads",
        "Catalog loads from Postgres (at start, on a change notification, every resync interval, after reconnecting, after an admin write), by result",
        reloads,
    );
    let errors = Family::<KindLabels, Counter>::default();
    for (kind, value) in [
        ("unavailable", stats.unavailable_errors),
        ("database", stats.database_errors),
    ] {
        errors.get_or_create(&KindLabels { kind }).inc_by(value);
    }
    registry.register(
        "postgres_errors",
        "Catalog operations (loads, admin reads and writes, readiness probes) that Postgres failed, by kind (unavailable: unreachable or too slow; database: refused)",
        errors,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn register_spans(registry: &mut Registry, spans: SpanExportStats) {
    registry.register(
        "trace_spans_exported",
        "Spans accepted by the OTLP collector",
        counter(spans.exported),
    );
    registry.register(
        "trace_spans_dropped",
        "Spans dropped because the export queue was full (collector down or slow)",
        counter(spans.dropped),
    );
    registry.register(
        "trace_export_failures",
        "Export requests the collector refused or did not answer in time",
        counter(spans.failed_exports),
    );
}

/// Every `outcome` label of `slidegate_decisions_total`; see [`PolicyMetrics::record`].
const OUTCOMES: [&str; 4] = ["allowed", "denied", "shadow", "degraded"];

/// The limiter's [`Observer`]: handles into this registry's families,
/// resolved once per policy and per store, so recording touches only atomics.
#[derive(Debug)]
struct MetricsObserver {
    policies: PolicyMetricsSource,
    store_errors: Family<StoreErrorLabels, Counter>,
}

impl Observer for MetricsObserver {
    fn policy(&self, name: &str) -> Arc<dyn PolicyRecorder> {
        Arc::new(self.policies.policy(name))
    }

    fn policy_removed(&self, name: &str) {
        self.policies.forget(name);
    }

    fn policies_loaded(&self, count: usize) {
        self.policies.set_loaded(count);
    }

    fn store_errors(&self, store: &'static str) -> Arc<dyn StoreErrorRecorder> {
        let kind = |kind| {
            self.store_errors
                .get_or_create_owned(&StoreErrorLabels { store, kind })
        };
        Arc::new(StoreErrorMetrics {
            timeout: kind("timeout"),
            unavailable: kind("unavailable"),
            invalid_reply: kind("invalid_reply"),
            misconfigured: kind("misconfigured"),
            circuit_open: kind("circuit_open"),
        })
    }
}

/// The per-policy series, shared with the limiter so that a policy created at
/// run time gets its handles and a deleted one loses its series.
#[derive(Clone, Debug)]
pub struct PolicyMetricsSource {
    decisions: Family<DecisionLabels, Counter>,
    decision_seconds: Family<PolicyLabels, LatencyHistogram>,
    loaded: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl PolicyMetricsSource {
    /// The handles for one policy. Creates its series, so they are exported
    /// (at zero) before the first check. The same name gets the same series.
    pub fn policy(&self, name: &str) -> PolicyMetrics {
        let decisions = |outcome| {
            self.decisions.get_or_create_owned(&DecisionLabels {
                policy: name.to_owned(),
                outcome,
            })
        };
        PolicyMetrics {
            allowed: decisions("allowed"),
            denied: decisions("denied"),
            shadow: decisions("shadow"),
            degraded: decisions("degraded"),
            latency: self.decision_seconds.get_or_create_owned(&PolicyLabels {
                policy: name.to_owned(),
            }),
        }
    }

    /// Drops the series of a policy that no longer exists.
    pub fn forget(&self, name: &str) {
        for outcome in OUTCOMES {
            self.decisions.remove(&DecisionLabels {
                policy: name.to_owned(),
                outcome,
            });
        }
        self.decision_seconds.remove(&PolicyLabels {
            policy: name.to_owned(),
        });
    }

    /// Sets `slidegate_policies`.
    pub fn set_loaded(&self, policies: usize) {
        self.loaded.set(i64::try_from(policies).unwrap_or(i64::MAX));
    }
}

/// What the limiter records for one policy. Cloned handles of the registry's
/// series: recording touches only atomics.
#[derive(Clone, Debug)]
pub struct PolicyMetrics {
    allowed: Counter,
    denied: Counter,
    shadow: Counter,
    degraded: Counter,
    latency: LatencyHistogram,
}

impl PolicyRecorder for PolicyMetrics {
    fn decided(&self, decision: &Decision, shadow: bool, elapsed: Duration) {
        self.record(decision, shadow, elapsed);
    }
}

impl PolicyMetrics {
    /// Counts one decision under exactly one outcome, and how long it took.
    ///
    /// - `degraded`: the shared store could not decide and the policy's
    ///   failure mode (`open` or `local`) did, whatever it answered;
    /// - `shadow`: a shadow policy would have denied (the client got 200);
    /// - `allowed`: admitted, a shadow policy's admission included;
    /// - `denied`: answered 429 (from the store or the deny cache).
    ///
    /// So `denied` is what clients were refused, and `shadow` is what
    /// enforcing the shadow policies would add to it.
    pub fn record(&self, decision: &Decision, shadow: bool, elapsed: Duration) {
        if decision.fallback.is_some() {
            self.degraded.inc();
        } else if decision.allowed {
            self.allowed.inc();
        } else if shadow {
            self.shadow.inc();
        } else {
            self.denied.inc();
        }
        self.latency.observe(elapsed);
    }
}

/// Store failures, counted at the one boundary where the limiter sees them.
#[derive(Clone, Debug)]
pub struct StoreErrorMetrics {
    timeout: Counter,
    unavailable: Counter,
    invalid_reply: Counter,
    misconfigured: Counter,
    circuit_open: Counter,
}

impl StoreErrorRecorder for StoreErrorMetrics {
    fn failed(&self, error: &StoreError) {
        match error {
            StoreError::Timeout { .. } => self.timeout(),
            StoreError::Unavailable(_) => self.unavailable(),
            StoreError::InvalidReply(_) => self.invalid_reply(),
            StoreError::Misconfigured(_) => self.misconfigured(),
            StoreError::CircuitOpen => self.circuit_open(),
        }
    }
}

impl StoreErrorMetrics {
    pub fn timeout(&self) {
        self.timeout.inc();
    }

    pub fn unavailable(&self) {
        self.unavailable.inc();
    }

    pub fn invalid_reply(&self) {
        self.invalid_reply.inc();
    }

    /// The store answered that it is not what this build can use (a cluster node).
    pub fn misconfigured(&self) {
        self.misconfigured.inc();
    }

    /// Checks not sent because the breaker was open.
    pub fn circuit_open(&self) {
        self.circuit_open.inc();
    }
}

/// A histogram of durations with fixed buckets, updated with atomic adds only.
///
/// Each bucket counts the observations that fall into it alone (cumulative
/// sums are formed at scrape time), and `_count` is the sum of the buckets, so
/// a scrape never shows a `_count` that disagrees with the `+Inf` bucket.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// One per bound in [`LATENCY_BUCKETS`], then `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// In nanoseconds: integer adds are exact and need no compare-and-swap loop.
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < seconds);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); LATENCY_BUCKETS.len() + 1];
        let mut count = 0u64;
        for (index, cell) in self.0.buckets.iter().enumerate() {
            let observed = cell.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS.get(index).copied().unwrap_or(f64::INFINITY);
            buckets[index] = (bound, observed);
            count += observed;
        }
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slidegate_core::FailureMode;

    #[test]
    fn each_decision_is_counted_under_exactly_one_outcome() {
        let metrics = Metrics::new("memory", 1);
        let policy = metrics.policy("p");
        let decision = |allowed, fallback| Decision {
            allowed,
            limit: 1,
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
            fallback,
        };
        let elapsed = Duration::from_micros(1);
        policy.record(&decision(true, None), false, elapsed);
        policy.record(&decision(true, None), true, elapsed); // a shadow admission
        policy.record(&decision(false, None), false, elapsed);
        policy.record(&decision(false, None), true, elapsed); // a shadow denial
        // A failure mode decided: degraded, shadow or not, admitted or not.
        policy.record(&decision(true, Some(FailureMode::Open)), false, elapsed);
        policy.record(&decision(false, Some(FailureMode::Local)), true, elapsed);
        let out = metrics.render(&[], None, None, &[], None);
        for (outcome, count) in [
            ("allowed", 2),
            ("denied", 1),
            ("shadow", 1),
            ("degraded", 2),
        ] {
            let line = format!(
                "slidegate_decisions_total{{policy=\"p\",outcome=\"{outcome}\"}} {count}\n"
            );
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(
            out.contains("slidegate_decision_duration_seconds_count{policy=\"p\"} 6\n"),
            "{out}"
        );
    }

    #[test]
    fn the_histogram_puts_each_observation_in_its_bucket_and_sums_exactly() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(10)); // <= 25µs
        histogram.observe(Duration::from_micros(300)); // <= 500µs
        histogram.observe(Duration::from_millis(1)); // <= 1ms: bounds are inclusive
        histogram.observe(Duration::from_secs(5)); // +Inf
        let mut registry = Registry::default();
        registry.register("latency_seconds", "test", histogram);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("latency_seconds_count 4\n"), "{out}");
        assert!(out.contains("latency_seconds_sum 5.00131\n"), "{out}");
        assert!(
            out.contains("latency_seconds_bucket{le=\"2.5e-05\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("latency_seconds_bucket{le=\"0.0005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("latency_seconds_bucket{le=\"0.001\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("latency_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{out}"
        );
    }
}
