//! Limiter state on a Redis Cluster: the same scripts, each decision one `EVALSHA` on the master that owns its key's slot.
//!
//! Every script call's keys share one hash tag (`{<policy>:<key>}`, the
//! heartbeat's `{replicas}`), so each decision is one script on one node,
//! atomic there, judged by that node's clock. redis-rs's cluster client
//! learns the slot map from the seed nodes, follows `MOVED` and `ASK`, and
//! refreshes the map when the topology changes; it is one multiplexed
//! connection per node, shared by every check (a pool per worker, as the
//! standalone store keeps, would multiply the connections by the nodes for
//! no gain: the client already pipelines concurrent commands per node).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use tokio::sync::OnceCell;

use slidegate_core::failover::FAILURE_DOMAINS;
use slidegate_core::{
    Check, ClusterStats, ClusterTopology, DependencyHealth, LimiterKey, MasterHealth, NodeStats,
    Outcome, Policy, PoolStats, Store, StoreError, StoreHealth,
};

use crate::{
    RedisTls, Scripts, checks_command, checks_reply, decision_call, describe, is_unreadable_reply,
    outcome, traced_checks, traced_decision,
};

/// What a [`ClusterStore`] is built from.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Seed nodes, `redis://[user:password@]host:port` (`rediss://` for a
    /// cluster that speaks TLS, every node alike); any reachable one tells
    /// the client the rest.
    pub nodes: Vec<String>,
    /// A private CA and a client certificate for `rediss://` nodes; `None`:
    /// the system's roots, no client certificate.
    pub tls: Option<RedisTls>,
    pub key_prefix: String,
    /// Longest wait for the first connection to the cluster, and for each node's.
    pub connect_timeout: Duration,
    /// Longest wait for one decision, redirections included.
    pub command_timeout: Duration,
}

/// Never prints the node URLs: they may carry passwords.
impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("nodes", &self.nodes.len())
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// Limiter state in a Redis Cluster, shared by every replica pointed at it.
pub struct ClusterStore {
    client: ClusterClient,
    /// Opened on first use (a replica starts while the cluster is down),
    /// then shared: a clone per check is a handle on the same connections.
    connection: OnceCell<ClusterConnection>,
    last_connect_error: Mutex<Option<String>>,
    /// Which failure domain each slot's master is (see [`Store::failure_domain`]),
    /// as the last `CLUSTER SLOTS` (the background probe's) said; all 0
    /// until it first answers. Read on every check without a lock.
    slot_domains: ArcSwap<Vec<u8>>,
    /// Every master address seen, in the order first seen: its index, modulo
    /// [`FAILURE_DOMAINS`], is its failure domain. A promoted replica is a
    /// new address, so its domain (and breaker) is a fresh one.
    masters_seen: Mutex<Vec<(String, u16)>>,
    /// Per failure domain: the checks sent to its master, counted when they end.
    node_counters: [NodeCounters; FAILURE_DOMAINS],
    topology_changes: AtomicU64,
    /// The masters as the last background probe found them (for metrics).
    last_masters: Mutex<Vec<MasterHealth>>,
    scripts: Scripts,
    key_prefix: String,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl ClusterStore {
    /// Builds the client without connecting.
    ///
    /// # Errors
    /// When a node URL does not parse (the message never repeats it).
    pub fn new(options: ClusterOptions) -> Result<Self, StoreError> {
        // redis-rs waits at least 1.28 s before it repeats a call answered
        // TRYAGAIN, CLUSTERDOWN, MASTERDOWN or LOADING: far past any command
        // timeout. TRYAGAIN is what a check gets while its slot migrates (a
        // script's keys, some moved and some not: `sliding_log` names two),
        // for the few milliseconds the move takes; with that back-off every
        // such check timed out and got its failure mode during a routine
        // reshard. Waits of 1 ms, doubling to a quarter of the timeout,
        // repeat it within the timeout instead.
        let command_ms = u64::try_from(options.command_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut builder = ClusterClientBuilder::new(options.nodes.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.command_timeout)
            .min_retry_wait(1)
            .max_retry_wait((command_ms / 4).max(2))
            .retry_wait_formula(1, 2);
        if options
            .nodes
            .iter()
            .any(|node| node.starts_with("rediss://"))
        {
            // redis-rs verifies every node's certificate with rustls; the
            // provider is chosen here, once, rather than left to whichever
            // crypto features the dependency tree happens to enable.
            let _ = rustls::crypto::ring::default_provider().install_default();
            if let Some(tls) = &options.tls {
                builder =
                    builder.certs(redis::TlsCertificates {
                        client_tls: tls.pem.client.as_ref().map(|(cert, key)| {
                            redis::ClientTlsConfig {
                                client_cert: cert.clone(),
                                client_key: key.clone(),
                            }
                        }),
                        root_cert: tls.pem.ca.clone(),
                    });
            }
        }
        let client = builder.build().map_err(|error| {
            StoreError::Unavailable(format!(
                "the Redis Cluster node URLs are invalid ({:?}); expected redis://host:port",
                error.kind()
            ))
        })?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            last_connect_error: Mutex::new(None),
            slot_domains: ArcSwap::from_pointee(vec![0; SLOTS as usize]),
            masters_seen: Mutex::new(Vec::new()),
            node_counters: std::array::from_fn(|_| NodeCounters::default()),
            topology_changes: AtomicU64::new(0),
            last_masters: Mutex::new(Vec::new()),
            scripts: Scripts::new(),
            key_prefix: options.key_prefix,
            connect_timeout: options.connect_timeout,
            command_timeout: options.command_timeout,
        })
    }

    /// A handle on the cluster connection, opening it on first use.
    async fn connection(&self) -> Result<ClusterConnection, StoreError> {
        let open = async {
            match tokio::time::timeout(self.connect_timeout, self.client.get_async_connection())
                .await
            {
                Ok(Ok(connection)) => Ok(connection),
                Ok(Err(error)) => {
                    let described = describe(&error);
                    *self
                        .last_connect_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(described.clone());
                    Err(StoreError::Unavailable(format!(
                        "cannot reach the Redis Cluster: {described}"
                    )))
                }
                Err(_) => Err(StoreError::Timeout {
                    operation: "connecting to the Redis Cluster",
                    after: self.connect_timeout,
                }),
            }
        };
        self.connection.get_or_try_init(|| open).await.cloned()
    }

    /// Waits at most `command_timeout` for `command`.
    async fn reply<T>(
        &self,
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
            Ok(Err(error)) if error.is_timeout() => Err(timed_out),
            Ok(Err(error)) if is_unreadable_reply(&error) => {
                Err(StoreError::InvalidReply(describe(&error)))
            }
            Ok(Err(error)) => Err(StoreError::Unavailable(describe(&error))),
        }
    }

    /// Remembers which failure domain each slot's master is.
    fn learn(&self, topology: &Topology) {
        let mut seen = self
            .masters_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut domain_of_master = Vec::with_capacity(topology.masters.len());
        for (host, port, _) in &topology.masters {
            let index = match seen.iter().position(|(h, p)| h == host && p == port) {
                Some(index) => index,
                None => {
                    seen.push((host.clone(), *port));
                    seen.len() - 1
                }
            };
            domain_of_master.push(u8::try_from(index % FAILURE_DOMAINS).unwrap_or(0));
        }
        let mut domains = vec![0u8; SLOTS as usize];
        for &(start, end, master) in &topology.ranges {
            let domain = domain_of_master.get(master).copied().unwrap_or(0);
            for slot in start..=end.min(SLOTS - 1) {
                domains[slot as usize] = domain;
            }
        }
        if **self.slot_domains.load() != domains {
            self.topology_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.slot_domains.store(Arc::new(domains));
    }

    /// The sorted set of live replicas, `<prefix>{replicas}`: one slot.
    pub fn replicas_key(&self) -> String {
        format!("{}{{replicas}}", self.key_prefix)
    }

    /// The masters and how many slots each serves, from `CLUSTER SLOTS`, and
    /// whether every one of the 16,384 slots has a master.
    async fn topology(&self, connection: &mut ClusterConnection) -> Result<Topology, StoreError> {
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let reply = self
            .reply(
                "waiting for CLUSTER SLOTS",
                connection.route_command(
                    slots,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                ),
            )
            .await?;
        Topology::from_slots(&reply)
            .ok_or_else(|| StoreError::InvalidReply("CLUSTER SLOTS: unexpected shape".into()))
    }
}

/// One failure domain's checks; atomics only, as they are bumped per check.
#[derive(Debug, Default)]
struct NodeCounters {
    decided: AtomicU64,
    timeouts: AtomicU64,
    failed: AtomicU64,
    latency_micros: AtomicU64,
}

impl NodeCounters {
    /// `checks` checks sent in one call that took `elapsed`: each is
    /// counted, and each took `elapsed` (so the mean stays a decision's time).
    fn record<T>(&self, result: &Result<T, StoreError>, checks: usize, elapsed: Duration) {
        let counter = match result {
            Ok(_) | Err(StoreError::InvalidReply(_)) => &self.decided,
            Err(StoreError::Timeout { .. }) => &self.timeouts,
            Err(_) => &self.failed,
        };
        let checks = u64::try_from(checks).unwrap_or(u64::MAX);
        counter.fetch_add(checks, Ordering::Relaxed);
        self.latency_micros.fetch_add(
            u64::try_from(elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .saturating_mul(checks),
            Ordering::Relaxed,
        );
    }
}

/// The masters of a cluster as `CLUSTER SLOTS` describes it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Topology {
    /// `host:port` and slot count, in the order first seen.
    masters: Vec<(String, u16, u32)>,
    covered_slots: u32,
    /// Each slot range and the index (in `masters`) of its master.
    ranges: Vec<(u32, u32, usize)>,
}

/// Every slot of a Redis Cluster.
const SLOTS: u32 = 16_384;

impl Topology {
    fn from_slots(reply: &Value) -> Option<Self> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut topology = Topology::default();
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let number = |value: &Value| match value {
                Value::Int(number) => u32::try_from(*number).ok(),
                _ => None,
            };
            let (start, end) = (number(fields.first()?)?, number(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            let port = u16::try_from(number(master.get(1)?)?).ok()?;
            let count = end.checked_sub(start)?.checked_add(1)?;
            topology.covered_slots = topology.covered_slots.saturating_add(count);
            let index = match topology
                .masters
                .iter()
                .position(|(h, p, _)| *h == host && *p == port)
            {
                Some(index) => {
                    topology.masters[index].2 += count;
                    index
                }
                None => {
                    topology.masters.push((host, port, count));
                    topology.masters.len() - 1
                }
            };
            topology.ranges.push((start, end, index));
        }
        Some(topology)
    }
}

/// The count of `kind` error replies in `INFO errorstats`
/// (`errorstat_MOVED:count=12`); 0 when it sent none.
fn error_count(info: &str, kind: &str) -> u64 {
    info.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("errorstat_")?.strip_prefix(kind)?;
            rest.strip_prefix(":count=")?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// `cluster_state` from `CLUSTER INFO`.
fn cluster_state(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("cluster_state:"))
        .map(str::to_owned)
}

/// The slot of every Redis key of `key` under `policy`: CRC16 of the hash
/// tag `{<policy>[@<tenant>]:<key>}`, as Redis computes it.
fn slot(policy: &Policy, key: LimiterKey<'_>) -> u16 {
    let mut crc = crc16::State::<crc16::XMODEM>::new();
    crc.update(policy.name().as_str().as_bytes());
    if let Some(tenant) = key.tenant() {
        crc.update(b"@");
        crc.update(tenant.as_bytes());
    }
    crc.update(b":");
    // Redis's tag ends at the first '}' after the '{': a key may hold one.
    let key = key.as_str();
    crc.update(key.split('}').next().unwrap_or(key).as_bytes());
    // 16,384 slots: the remainder fits a u16.
    crc.get() % SLOTS as u16
}

/// What a group of checks of one slot is sent for (see [`ClusterStore::group_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupCall {
    /// `check_all.lua`: decide, consuming what the group admits.
    Reserve,
    /// `release.lua`: give back what a reservation holds.
    Release,
}

impl ClusterStore {
    /// The failure domain of the master that serves `slot`.
    fn slot_domain(&self, slot: u16) -> usize {
        usize::from(self.slot_domains.load()[usize::from(slot)])
    }

    /// One call of `check_all.lua` or `release.lua` on the master of
    /// `slot`, for the checks at `group` (indices into `checks`, all of that
    /// slot), each with its fifth argument `fifth(index)`: traced as one
    /// client span; a reservation counts its checks in the master's node
    /// counters.
    ///
    /// `EVALSHA`, and on `NOSCRIPT` `EVAL` of the source on the same
    /// master, which caches it there. Not redis-rs's `invoke_async`: its
    /// fallback is `SCRIPT LOAD`, which the cluster client sends to every
    /// master and which cannot succeed while any master is down, and a
    /// release is needed precisely when a master fails: its script would
    /// be loaded nowhere, and the units it should give back would stay.
    async fn group_call(
        &self,
        call: GroupCall,
        slot: u16,
        checks: &[Check<'_>],
        group: &[usize],
        fifth: impl Fn(usize) -> u64,
    ) -> Result<Vec<(Outcome, u64)>, StoreError> {
        let (assembled, name) = match call {
            GroupCall::Reserve => (&self.scripts.check_all, "check_all"),
            GroupCall::Release => (&self.scripts.release, "release"),
        };
        let started = Instant::now();
        let run = async {
            let mut connection = self.connection().await?;
            let group: Vec<(&Check<'_>, u64)> = group
                .iter()
                .map(|&index| (&checks[index], fifth(index)))
                .collect();
            let command =
                |head: &str, script: &str| checks_command(head, script, &self.key_prefix, &group);
            // Routed by the first key's slot, every key's.
            let call = async {
                let evalsha = command("EVALSHA", assembled.script.get_hash());
                match evalsha.query_async::<Value>(&mut connection).await {
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        let eval = command("EVAL", &assembled.source);
                        eval.query_async::<Value>(&mut connection).await
                    }
                    other => other,
                }
            };
            let reply = self
                .reply("running the all-or-nothing script", call)
                .await?;
            checks_reply(&reply, group.len())
        };
        let result = traced_checks(name, group.len(), run).await;
        if call == GroupCall::Reserve {
            self.node_counters[self.slot_domain(slot)].record(
                &result,
                group.len(),
                started.elapsed(),
            );
        }
        result
    }

    /// One decision: `EVALSHA` of the policy's script on the master of the key's slot.
    async fn decide(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        let mut connection = self.connection().await?;
        let invocation = decision_call(&self.scripts, &self.key_prefix, policy, key, cost);
        // Routed by the first key's slot; NOSCRIPT (a fresh node after a
        // failover) loads the script on that node and repeats the call.
        let reply = self
            .reply(
                "running a limiter script",
                invocation.invoke_async::<(u8, i64, i64, i64)>(&mut connection),
            )
            .await?;
        outcome(reply)
    }
}

impl Store for ClusterStore {
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let result = traced_decision(self.decide(policy, key, cost)).await;
        self.node_counters[self.failure_domain(policy, key)].record(&result, 1, started.elapsed());
        result
    }

    /// All or nothing across slots, by reservation. The checks are grouped
    /// by slot (a check's keys share its hash tag, so its slot); the checks
    /// of one slot are decided by one `check_all.lua` call on its master,
    /// atomically, as [`RedisStore`](crate::RedisStore) decides them all.
    /// With one slot that is the whole request. With several, each group's
    /// call reserves (concurrently; each with the enforced flags of its own
    /// checks); if any group refused the request or failed, every group
    /// that holds units is given them back with `release.lua`, and its
    /// checks report what their keys hold without them. A group that failed
    /// fails the request, once the others are released.
    ///
    /// The guarantee: never more admitted than any limit allows. While a
    /// reservation is held (from its group's script until its release: the
    /// slowest group's reply, then one more round-trip), a concurrent check
    /// of one of its keys sees its units and may be denied on units that
    /// are then given back: under-admission, never over. A release that cannot reach its master (a timeout, a
    /// failover) leaves its units consumed until they leave their window,
    /// and a group call that timed out may have consumed its units unseen
    /// (as a single check that timed out may have been counted): under-
    /// admission again. A `gcra` release gives back the reserved units less
    /// what the bucket has drained since they were reserved.
    ///
    /// Each group's checks count in their master's node counters, with the
    /// call's time each; releases are not checks and are not counted.
    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, check) in checks.iter().enumerate() {
            groups
                .entry(slot(check.policy, check.key))
                .or_default()
                .push(index);
        }
        let groups: Vec<(u16, Vec<usize>)> = groups.into_iter().collect();
        let reserved = futures_util::future::join_all(groups.iter().map(|(slot, group)| {
            self.group_call(GroupCall::Reserve, *slot, checks, group, |index| {
                u64::from(checks[index].enforced)
            })
        }))
        .await;

        let mut outcomes: Vec<Option<Outcome>> = vec![None; checks.len()];
        let mut tokens = vec![0u64; checks.len()];
        let mut refused = false;
        let mut failure = None;
        for ((_, group), result) in groups.iter().zip(reserved) {
            match result {
                Ok(decided) => {
                    for (&index, (outcome, token)) in group.iter().zip(decided) {
                        refused |= checks[index].enforced && !outcome.allowed;
                        outcomes[index] = Some(outcome);
                        tokens[index] = token;
                    }
                }
                // The first in slot order; the others are alike (one outage).
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }

        if refused || failure.is_some() {
            // Only groups that admitted hold units: one that refused gave
            // its own back inside its script.
            let holding: Vec<(u16, Vec<usize>)> = groups
                .iter()
                .map(|(slot, group)| {
                    let held = group
                        .iter()
                        .copied()
                        .filter(|&index| tokens[index] != 0)
                        .collect::<Vec<_>>();
                    (*slot, held)
                })
                .filter(|(_, held)| !held.is_empty())
                .collect();
            let released = futures_util::future::join_all(holding.iter().map(|(slot, held)| {
                self.group_call(GroupCall::Release, *slot, checks, held, |index| {
                    tokens[index]
                })
            }))
            .await;
            for ((_, held), result) in holding.iter().zip(released) {
                match result {
                    Ok(replies) => {
                        for (&index, (outcome, _)) in held.iter().zip(replies) {
                            outcomes[index] = Some(outcome);
                        }
                    }
                    // The checks keep the outcome of their reservation:
                    // admitted, and their units are indeed still held.
                    Err(error) => tracing::warn!(
                        checks = held.len(),
                        error = %error,
                        "could not give back the units a refused request reserved on one Redis Cluster master; they stay consumed until they leave their window"
                    ),
                }
            }
        }

        if let Some(error) = failure {
            return Err(error);
        }
        outcomes
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                StoreError::InvalidReply("a check_all reply without every check".to_owned())
            })
    }

    fn cluster_stats(&self) -> Option<ClusterStats> {
        let seen = self
            .masters_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A domain is named by the newest master that maps to it.
        let mut names: [Option<String>; FAILURE_DOMAINS] = std::array::from_fn(|_| None);
        for (index, (host, port)) in seen.iter().enumerate() {
            names[index % FAILURE_DOMAINS] = Some(format!("{host}:{port}"));
        }
        let nodes = names
            .into_iter()
            .zip(&self.node_counters)
            .filter_map(|(name, counters)| {
                Some(NodeStats {
                    node: name?,
                    decided: counters.decided.load(Ordering::Relaxed),
                    timeouts: counters.timeouts.load(Ordering::Relaxed),
                    failed: counters.failed.load(Ordering::Relaxed),
                    latency_micros: counters.latency_micros.load(Ordering::Relaxed),
                })
            })
            .collect();
        Some(ClusterStats {
            topology_changes: self.topology_changes.load(Ordering::Relaxed),
            nodes,
            masters: self
                .last_masters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }

    fn kind(&self) -> &'static str {
        "redis_cluster"
    }

    /// The domain of the master that serves the key's slot (see [`slot`]).
    fn failure_domain(&self, policy: &Policy, key: LimiterKey<'_>) -> usize {
        self.slot_domain(slot(policy, key))
    }

    fn pools(&self) -> Vec<PoolStats> {
        Vec::new()
    }

    /// Ready when the cluster says `cluster_state:ok`, every slot has a
    /// master, and every master answers `PING`; the error names what is not.
    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let mut found: Option<ClusterTopology> = None;
        let probe = async {
            let mut connection = self.connection().await?;
            let mut info = redis::cmd("CLUSTER");
            info.arg("INFO");
            let info = self
                .reply(
                    "waiting for CLUSTER INFO",
                    connection.route_command(
                        info,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    ),
                )
                .await?;
            let info: String = redis::from_redis_value(info)
                .map_err(|error| StoreError::InvalidReply(format!("CLUSTER INFO: {error}")))?;
            let state = cluster_state(&info);
            let topology = self.topology(&mut connection).await?;
            self.learn(&topology);
            let mut problems = Vec::new();
            if state.as_deref() != Some("ok") {
                problems.push("cluster_state is not ok".to_owned());
            }
            if topology.covered_slots < SLOTS {
                problems.push(format!(
                    "{} of {SLOTS} slots have no master",
                    SLOTS - topology.covered_slots
                ));
            }
            let mut masters = Vec::with_capacity(topology.masters.len());
            for (host, port, slots) in &topology.masters {
                // One command tells both that the master answers and how
                // many redirections it has sent: redis-rs follows MOVED and
                // ASK without telling its caller, so the nodes' own counts
                // are what can be reported.
                let mut errorstats = redis::cmd("INFO");
                errorstats.arg("errorstats");
                let asked = connection.route_command(
                    errorstats,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                );
                let (reachable, moved_replies, ask_replies) =
                    match self.reply("waiting for INFO errorstats", asked).await {
                        Ok(reply) => {
                            let info: String = redis::from_redis_value(reply).unwrap_or_default();
                            (true, error_count(&info, "MOVED"), error_count(&info, "ASK"))
                        }
                        Err(error) => {
                            problems.push(format!("master {host}:{port} ({slots} slots): {error}"));
                            (false, 0, 0)
                        }
                    };
                masters.push(MasterHealth {
                    address: format!("{host}:{port}"),
                    reachable,
                    slots: *slots,
                    moved_replies,
                    ask_replies,
                });
            }
            *self
                .last_masters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = masters.clone();
            found = Some(ClusterTopology {
                cluster_state: state,
                covered_slots: topology.covered_slots.min(SLOTS),
                masters,
            });
            if problems.is_empty() {
                Ok(started.elapsed())
            } else {
                Err(StoreError::Unavailable(format!(
                    "the Redis Cluster cannot decide every key: {}",
                    problems.join("; ")
                )))
            }
        };
        let result = probe.await;
        let ok = result.is_ok();
        let error = result.as_ref().err().map(|error| {
            let last = self
                .last_connect_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            match (error, last) {
                (StoreError::Timeout { .. }, Some(cause)) => {
                    format!("{error}; the last connection attempt failed: {cause}")
                }
                _ => error.to_string(),
            }
        });
        StoreHealth {
            store: "redis_cluster",
            ok,
            dependencies: vec![DependencyHealth {
                name: "redis",
                ok,
                latency_ms: result.ok().map(|latency| latency.as_secs_f64() * 1000.0),
                error,
                pool: None,
                topology: found,
            }],
            scripts: slidegate_core::Algorithm::ALL
                .into_iter()
                .map(|algorithm| (algorithm, self.scripts.get(algorithm).get_hash().to_owned()))
                .collect(),
        }
    }

    async fn heartbeat(&self, replica: &str, stale_after: Duration) -> Result<u64, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.scripts.heartbeat.prepare_invoke();
        invocation
            .key(self.replicas_key())
            .arg(replica)
            .arg(u64::try_from(stale_after.as_micros()).unwrap_or(u64::MAX));
        let beat = invocation.invoke_async::<u64>(&mut connection);
        self.reply("sending a heartbeat", beat).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn cluster_slots_tell_each_master_and_whether_every_slot_is_served() {
        let reply = Value::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(5461, 10922, "127.0.0.1", 7001),
            range(10923, 16383, "127.0.0.1", 7002),
            range(100, 100, "127.0.0.1", 7000),
        ]);
        let topology = Topology::from_slots(&reply).unwrap();
        assert_eq!(topology.masters.len(), 3);
        assert_eq!(topology.masters[0], ("127.0.0.1".into(), 7000, 5462));
        assert_eq!(topology.covered_slots, SLOTS + 1);
        let partial = Topology::from_slots(&Value::Array(vec![range(0, 99, "h", 1)])).unwrap();
        assert_eq!(partial.covered_slots, 100);
        assert!(Topology::from_slots(&Value::Int(1)).is_none());
        assert_eq!(
            cluster_state("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n").as_deref(),
            Some("ok")
        );
        assert_eq!(
            cluster_state("cluster_state:fail\r\n").as_deref(),
            Some("fail")
        );
        assert_eq!(cluster_state("cluster_enabled:0\r\n"), None);
    }

    #[test]
    fn a_keys_slot_is_redis_s_crc16_of_its_hash_tag() {
        // `CLUSTER KEYSLOT foo` is 12182 (the Redis Cluster specification's example).
        let slot = crc16::State::<crc16::XMODEM>::calculate(b"foo") % 16_384;
        assert_eq!(slot, 12_182);
    }

    #[test]
    fn redirections_are_read_from_info_errorstats() {
        let info = "# Errorstats\r\nerrorstat_ASK:count=3\r\nerrorstat_MOVED:count=1204\r\n\
                    errorstat_NOSCRIPT:count=2\r\n";
        assert_eq!(error_count(info, "MOVED"), 1204);
        assert_eq!(error_count(info, "ASK"), 3);
        assert_eq!(error_count(info, "CROSSSLOT"), 0);
        assert_eq!(error_count("# Errorstats\r\n", "MOVED"), 0);
    }

    #[test]
    fn debug_output_of_the_options_shows_no_url() {
        let options = ClusterOptions {
            nodes: vec!["redis://:topsecret@10.0.0.1:6379".into()],
            tls: None,
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(50),
        };
        assert!(!format!("{options:?}").contains("topsecret"));
    }
}
