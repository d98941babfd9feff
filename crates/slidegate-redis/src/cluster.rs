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

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};
use tokio::sync::OnceCell;

use slidegate_core::{
    DependencyHealth, LimiterKey, Outcome, Policy, PoolStats, Store, StoreError, StoreHealth,
};

use crate::{Scripts, add_keys, describe, is_unreadable_reply};

/// What a [`ClusterStore`] is built from.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Seed nodes, `redis://[user:password@]host:port`; any reachable one
    /// tells the client the rest.
    pub nodes: Vec<String>,
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
        let client = ClusterClientBuilder::new(options.nodes.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.command_timeout)
            .build()
            .map_err(|error| {
                StoreError::Unavailable(format!(
                    "the Redis Cluster node URLs are invalid ({:?}); expected redis://host:port",
                    error.kind()
                ))
            })?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            last_connect_error: Mutex::new(None),
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

/// The masters of a cluster as `CLUSTER SLOTS` describes it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Topology {
    /// `host:port` and slot count, in the order first seen.
    masters: Vec<(String, u16, u32)>,
    covered_slots: u32,
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
            match topology
                .masters
                .iter_mut()
                .find(|(h, p, _)| *h == host && *p == port)
            {
                Some(entry) => entry.2 += count,
                None => topology.masters.push((host, port, count)),
            }
        }
        Some(topology)
    }
}

fn cluster_state_ok(info: &str) -> bool {
    info.lines().any(|line| line.trim() == "cluster_state:ok")
}

impl Store for ClusterStore {
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.scripts.get(policy.algorithm()).prepare_invoke();
        add_keys(&self.key_prefix, &mut invocation, policy, key);
        invocation
            .arg(policy.window().as_micros())
            .arg(policy.limit())
            .arg(cost);
        // Routed by the first key's slot; NOSCRIPT (a fresh node after a
        // failover) loads the script on that node and repeats the call.
        let (allowed, remaining, reset_after, retry_after) = self
            .reply(
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

    fn kind(&self) -> &'static str {
        "redis_cluster"
    }

    fn pools(&self) -> Vec<PoolStats> {
        Vec::new()
    }

    /// Ready when the cluster says `cluster_state:ok`, every slot has a
    /// master, and every master answers `PING`; the error names what is not.
    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
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
            let topology = self.topology(&mut connection).await?;
            let mut problems = Vec::new();
            if !cluster_state_ok(&info) {
                problems.push("cluster_state is not ok".to_owned());
            }
            if topology.covered_slots < SLOTS {
                problems.push(format!(
                    "{} of {SLOTS} slots have no master",
                    SLOTS - topology.covered_slots
                ));
            }
            for (host, port, slots) in &topology.masters {
                let ping = connection.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                );
                if let Err(error) = self.reply("waiting for PING", ping).await {
                    problems.push(format!("master {host}:{port} ({slots} slots): {error}"));
                }
            }
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
        assert!(cluster_state_ok(
            "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"
        ));
        assert!(!cluster_state_ok("cluster_state:fail\r\n"));
    }

    #[test]
    fn debug_output_of_the_options_shows_no_url() {
        let options = ClusterOptions {
            nodes: vec!["redis://:topsecret@10.0.0.1:6379".into()],
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(50),
        };
        assert!(!format!("{options:?}").contains("topsecret"));
    }
}
