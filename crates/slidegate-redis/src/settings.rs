//! The `[redis]` section of the file as people write it, its checks, and the [`RedisOptions`] the store is built from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use slidegate_core::BreakerOptions;
use slidegate_core::settings::{self, BreakerSettings, InvalidSetting, check_duration};

use crate::{ClusterOptions, RedisOptions, RedisTls, SentinelTarget, TlsError};

/// Which kind of Redis deployment holds the shared state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server (or a managed endpoint that behaves as one), at `redis.url`.
    #[default]
    Standalone,
    /// A Redis Cluster: slots spread over masters, found through `redis.nodes`.
    Cluster,
    /// One master at a time, named by the sentinels in `redis.nodes`
    /// (`redis.sentinel_master` is its name); followed through failovers.
    Sentinel,
}

/// A list of secrets written as a TOML array or, as environment variables
/// are, one comma-separated string.
fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(items) => items,
        OneOrMany::One(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .map(SecretString::from)
        .collect())
}

/// The shared store (`[redis]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `standalone` (one server at `url`) or `cluster` (a Redis Cluster
    /// found through `nodes`).
    pub mode: RedisMode,
    /// With `mode = "cluster"`: seed nodes, `redis://[user:password@]host:port`
    /// (env: comma-separated). Any one that answers tells the client the rest.
    #[serde(deserialize_with = "secret_list")]
    pub nodes: Vec<SecretString>,
    /// With `mode = "sentinel"`: the name the sentinels monitor the master by.
    pub sentinel_master: Option<String>,
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
    #[serde(deserialize_with = "settings::duration")]
    pub connect_timeout: Duration,
    /// Longest wait for one script's reply. A check waits on Redis at most
    /// `connect_timeout + command_timeout`, then gets its failure mode's answer.
    #[serde(deserialize_with = "settings::duration")]
    pub command_timeout: Duration,
    /// When to stop waiting on Redis altogether, and how to come back.
    pub breaker: BreakerSettings,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            sentinel_master: None,
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
    ///
    /// # Errors
    /// The first invalid setting, named as the file names it (`redis.url`);
    /// never echoes the URL, which may hold a password.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.pool_size == 0 {
            return Err(InvalidSetting::new("redis.pool_size", "must be at least 1"));
        }
        check_duration("redis.connect_timeout", self.connect_timeout)?;
        check_duration("redis.command_timeout", self.command_timeout)?;
        self.breaker.validate("redis.breaker")?;
        match self.mode {
            RedisMode::Standalone if !self.nodes.is_empty() => {
                return Err(InvalidSetting::new(
                    "redis.nodes",
                    "applies only to mode = \"cluster\"; a standalone Redis is redis.url",
                ));
            }
            RedisMode::Standalone => {}
            RedisMode::Cluster | RedisMode::Sentinel => {
                if self.url().is_some() {
                    return Err(InvalidSetting::new(
                        "redis.url",
                        "must be unset with mode = \"cluster\" or \"sentinel\": list the seed nodes or the sentinels in redis.nodes",
                    ));
                }
                if self.nodes.is_empty() {
                    return Err(InvalidSetting::new(
                        "redis.nodes",
                        "must list at least one seed node (cluster) or sentinel (sentinel)",
                    ));
                }
                // Never echo a node: it may hold a password. TLS is on for
                // every node or for none (a cluster's nodes, the sentinels
                // and the master they name), so the first node's scheme is
                // every node's.
                let first_is_tls = self.nodes[0].expose_secret().starts_with("rediss://");
                for (index, node) in self.nodes.iter().enumerate() {
                    let node = node.expose_secret();
                    if first_is_tls && !node.starts_with("rediss://") {
                        return Err(InvalidSetting::new(
                            format!("redis.nodes[{index}]"),
                            "must start with rediss://, as redis.nodes[0] does: TLS is on for every node or for none",
                        ));
                    }
                    if !first_is_tls && !node.starts_with("redis://") {
                        return Err(InvalidSetting::new(
                            format!("redis.nodes[{index}]"),
                            "must start with redis://, as redis.nodes[0] does (rediss:// on every node for TLS)",
                        ));
                    }
                    if node.contains('#') {
                        return Err(InvalidSetting::new(
                            format!("redis.nodes[{index}]"),
                            "must not have a #fragment (#insecure would turn certificate verification off); \
                             to trust a private CA, set redis.tls_ca_file",
                        ));
                    }
                }
                let master = self.sentinel_master.as_deref().map(str::trim);
                match (self.mode, master) {
                    (RedisMode::Sentinel, None | Some("")) => {
                        return Err(InvalidSetting::new(
                            "redis.sentinel_master",
                            "must name the master the sentinels monitor (sentinel monitor <name> ...)",
                        ));
                    }
                    (RedisMode::Cluster, Some(_)) => {
                        return Err(InvalidSetting::new(
                            "redis.sentinel_master",
                            "applies only to mode = \"sentinel\"",
                        ));
                    }
                    _ => {}
                }
            }
        }
        if self.mode == RedisMode::Standalone && self.sentinel_master.is_some() {
            return Err(InvalidSetting::new(
                "redis.sentinel_master",
                "applies only to mode = \"sentinel\"",
            ));
        }
        let known_scheme = |url: &str| {
            ["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        };
        // Never echo the URL: it may hold a password.
        if let Some(url) = self.url() {
            if !known_scheme(url) {
                return Err(InvalidSetting::new(
                    "redis.url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
            if url.contains('#') {
                // redis-rs reads `rediss://…/#insecure` as "verify nothing".
                return Err(InvalidSetting::new(
                    "redis.url",
                    "must not have a #fragment (#insecure would turn certificate verification off); \
                     to trust a private CA, set redis.tls_ca_file",
                ));
            }
        }
        let tls = self.url().is_some_and(|url| url.starts_with("rediss://"))
            || (self.mode != RedisMode::Standalone
                && self
                    .nodes
                    .first()
                    .is_some_and(|node| node.expose_secret().starts_with("rediss://")));
        let [_, cert, key] = self.tls_files();
        for (field, path) in self.tls_files() {
            if path.is_some() && !tls {
                return Err(InvalidSetting::new(
                    field,
                    "applies only to a rediss:// redis.url or rediss:// redis.nodes (TLS)",
                ));
            }
        }
        match (cert.1, key.1) {
            (Some(_), None) => Err(InvalidSetting::new(
                "redis.tls_key_file",
                "must be set with redis.tls_cert_file: a client certificate needs its key",
            )),
            (None, Some(_)) => Err(InvalidSetting::new(
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
    pub fn tls(&self) -> Result<Option<RedisTls>, InvalidSetting> {
        self.validate()?;
        let [ca, cert, key] = self.tls_files();
        if ca.1.is_none() && cert.1.is_none() {
            return Ok(None);
        }
        let read = |(field, path): (&'static str, Option<&Path>)| {
            path.map(|path| {
                std::fs::read(path).map_err(|error| {
                    InvalidSetting::new(field, format!("cannot read {}: {error}", path.display()))
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
                InvalidSetting::new(field, format!("{path} {error}"))
            })
    }

    /// A probe (one check) is lost, not slow, after twice the store's
    /// timeouts, even on a loaded machine.
    pub fn breaker_options(&self) -> BreakerOptions {
        self.breaker
            .to_options(2 * (self.connect_timeout + self.command_timeout))
    }

    /// What [`ClusterStore::new`](crate::ClusterStore::new) takes, for
    /// settings that passed [`RedisSettings::validate`]; `None` unless
    /// `mode = "cluster"`.
    pub fn cluster_options(
        &self,
        key_prefix: &str,
        tls: Option<RedisTls>,
    ) -> Option<ClusterOptions> {
        (self.mode == RedisMode::Cluster).then(|| ClusterOptions {
            tls,
            nodes: self
                .nodes
                .iter()
                .map(|node| node.expose_secret().to_owned())
                .collect(),
            key_prefix: key_prefix.to_owned(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        })
    }

    /// What [`RedisStore::new`](crate::RedisStore::new) takes, for settings that
    /// passed [`RedisSettings::validate`]; `None` without a `redis.url` (the
    /// embedded store).
    pub fn options(&self, key_prefix: &str, tls: Option<RedisTls>) -> Option<RedisOptions> {
        if self.mode == RedisMode::Sentinel {
            return Some(RedisOptions {
                url: String::new(),
                tls,
                key_prefix: key_prefix.to_owned(),
                pool_size: self.pool_size,
                connect_timeout: self.connect_timeout,
                command_timeout: self.command_timeout,
                sentinel: Some(SentinelTarget {
                    sentinels: self
                        .nodes
                        .iter()
                        .map(|node| node.expose_secret().to_owned())
                        .collect(),
                    master: self
                        .sentinel_master
                        .as_deref()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                }),
            });
        }
        self.url().map(|url| RedisOptions {
            url: url.to_owned(),
            tls,
            key_prefix: key_prefix.to_owned(),
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            sentinel: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> RedisSettings {
        RedisSettings {
            url: Some(url.to_owned().into()),
            ..RedisSettings::default()
        }
    }

    #[test]
    fn the_section_is_checked_here_naming_fields_and_never_the_url() {
        let refused = |settings: RedisSettings| settings.validate().unwrap_err();
        let zero_pool = RedisSettings {
            pool_size: 0,
            ..RedisSettings::default()
        };
        assert_eq!(refused(zero_pool).field, "redis.pool_size");
        let scheme = refused(with_url("http://:topsecret@127.0.0.1"));
        assert_eq!(scheme.field, "redis.url");
        assert!(!scheme.to_string().contains("topsecret"), "{scheme}");
        assert_eq!(
            refused(with_url("rediss://127.0.0.1/#insecure")).field,
            "redis.url"
        );
        let tls_without_rediss = RedisSettings {
            tls_ca_file: Some("ca.pem".into()),
            ..with_url("redis://127.0.0.1")
        };
        assert_eq!(refused(tls_without_rediss).field, "redis.tls_ca_file");
        let breaker = RedisSettings {
            breaker: BreakerSettings {
                probes: 0,
                ..BreakerSettings::default()
            },
            ..RedisSettings::default()
        };
        assert_eq!(refused(breaker).field, "redis.breaker.probes");
        let cluster = |nodes: &[&str]| RedisSettings {
            mode: RedisMode::Cluster,
            nodes: nodes.iter().map(|node| SecretString::from(*node)).collect(),
            ..RedisSettings::default()
        };
        assert_eq!(refused(cluster(&[])).field, "redis.nodes");
        let tls_node = refused(cluster(&["redis://a:1", "rediss://:topsecret@b:2"]));
        assert_eq!(tls_node.field, "redis.nodes[1]");
        assert!(!tls_node.to_string().contains("topsecret"), "{tls_node}");
        let plain_after_tls = refused(cluster(&["rediss://a:1", "redis://:topsecret@b:2"]));
        assert_eq!(plain_after_tls.field, "redis.nodes[1]");
        assert!(plain_after_tls.to_string().contains("rediss://"));
        let insecure = refused(cluster(&["rediss://a:1/#insecure"]));
        assert_eq!(insecure.field, "redis.nodes[0]");
        // TLS files go with rediss:// nodes, and only with them.
        let ca = || Some(PathBuf::from("ca.pem"));
        let tls_cluster = RedisSettings {
            tls_ca_file: ca(),
            ..cluster(&["rediss://a:1", "rediss://b:2"])
        };
        tls_cluster.validate().unwrap();
        let files_without_tls = RedisSettings {
            tls_ca_file: ca(),
            ..cluster(&["redis://a:1"])
        };
        assert_eq!(refused(files_without_tls).field, "redis.tls_ca_file");
        let tls_sentinels = RedisSettings {
            mode: RedisMode::Sentinel,
            sentinel_master: Some("limits".into()),
            tls_ca_file: ca(),
            ..cluster(&["rediss://a:1", "rediss://b:2"])
        };
        tls_sentinels.validate().unwrap();
        let mixed_sentinels = RedisSettings {
            mode: RedisMode::Sentinel,
            sentinel_master: Some("limits".into()),
            ..cluster(&["rediss://a:1", "redis://b:2"])
        };
        assert_eq!(refused(mixed_sentinels).field, "redis.nodes[1]");
        let both = RedisSettings {
            url: Some("redis://127.0.0.1".to_owned().into()),
            ..cluster(&["redis://a:1"])
        };
        assert_eq!(refused(both).field, "redis.url");
        let stray_nodes = RedisSettings {
            mode: RedisMode::Standalone,
            ..cluster(&["redis://a:1"])
        };
        assert_eq!(refused(stray_nodes).field, "redis.nodes");
        let seeds = cluster(&["redis://a:1", "redis://b:2"]);
        seeds.validate().unwrap();
        assert_eq!(seeds.cluster_options("p:", None).unwrap().nodes.len(), 2);
        assert!(
            seeds.options("p:", None).is_none(),
            "cluster mode has no standalone URL"
        );
        assert!(
            RedisSettings::default()
                .cluster_options("p:", None)
                .is_none()
        );
        let sentinel = RedisSettings {
            mode: RedisMode::Sentinel,
            ..cluster(&["redis://s1:26379", "redis://s2:26379"])
        };
        assert_eq!(refused(sentinel.clone()).field, "redis.sentinel_master");
        let named = RedisSettings {
            sentinel_master: Some(" limits ".into()),
            ..sentinel
        };
        named.validate().unwrap();
        let target = named.options("p:", None).unwrap().sentinel.unwrap();
        assert_eq!(
            (target.sentinels.len(), target.master.as_str()),
            (2, "limits")
        );
        assert!(named.cluster_options("p:", None).is_none());
        let stray = RedisSettings {
            sentinel_master: Some("limits".into()),
            ..RedisSettings::default()
        };
        assert_eq!(refused(stray).field, "redis.sentinel_master");
        RedisSettings::default().validate().unwrap();
        assert!(
            RedisSettings::default().options("p:", None).is_none(),
            "no URL: embedded"
        );
        let options = with_url(" redis://127.0.0.1:6379 ")
            .options("p:", None)
            .unwrap();
        assert_eq!(
            (options.url.as_str(), options.key_prefix.as_str()),
            ("redis://127.0.0.1:6379", "p:")
        );
    }
}
