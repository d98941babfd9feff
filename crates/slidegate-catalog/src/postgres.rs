//! The catalog in Postgres: pool, migrations, queries, and the task that keeps a replica's copy current.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use futures_util::future::poll_fn;
use postgres_native_tls::MakeTlsConnector;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Config, GenericClient, IsolationLevel, Row};

use super::CatalogError;
use super::keys::{self, NewKey};
use super::model::{ApiKeyRecord, Invalid, MatchRules, NewKeyDocument, PolicyRecord, ValidPolicy};
use slidegate_core::rules::{KeySpec, RequestMatch, StoredRule};
use slidegate_core::{
    Algorithm, ApiKeyDigest, CatalogUpdate, DependencyHealth, Policy, PolicyName, PolicySet,
    PoolHealth, PoolStats, TenantKey, TenantName, Window,
};

/// The channel every write notifies, with the new catalog version as payload.
pub const NOTIFY_CHANNEL: &str = "slidegate_catalog";
/// Taken around migrations so replicas starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x5116_6A7E;
/// Embedded migrations: version, name, SQL. Append only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policies_and_api_keys",
        include_str!("../migrations/V1__policies_and_api_keys.sql"),
    ),
    (
        2,
        "policy_key_parts",
        include_str!("../migrations/V2__policy_key_parts.sql"),
    ),
];

type Manager = PostgresConnectionManager<MakeTlsConnector>;

/// How the catalog connects and how long it waits.
#[derive(Clone)]
pub struct CatalogOptions {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=require]`.
    pub url: String,
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including opening one.
    pub connect_timeout: Duration,
    /// Set as the server's `statement_timeout` on every connection.
    pub statement_timeout: Duration,
    /// How often the whole catalog is reloaded even without a notification.
    pub resync_interval: Duration,
}

/// The URL may carry a password: it is never printed, not even in debug output.
impl std::fmt::Debug for CatalogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out of this impl unnoticed.
        let Self {
            url: _,
            pool_size,
            connect_timeout,
            statement_timeout,
            resync_interval,
        } = self;
        f.debug_struct("CatalogOptions")
            .field("url", &"<redacted>")
            .field("pool_size", pool_size)
            .field("connect_timeout", connect_timeout)
            .field("statement_timeout", statement_timeout)
            .field("resync_interval", resync_interval)
            .finish()
    }
}

/// The catalog's Postgres side: a pool for reads and writes, and what the listener needs to connect.
pub struct Catalog {
    pool: Pool<Manager>,
    /// Why the pool last failed to open a connection: a timed-out wait says
    /// only that it waited, this says why (refused, TLS, authentication).
    last_connect_error: LastError,
    config: Config,
    tls: MakeTlsConnector,
    options: CatalogOptions,
    migrated: AtomicBool,
    counters: CatalogCounters,
}

/// What the catalog counts for metrics; read when Prometheus scrapes.
#[derive(Debug, Default)]
struct CatalogCounters {
    loads_ok: AtomicU64,
    loads_failed: AtomicU64,
    unavailable: AtomicU64,
    database: AtomicU64,
}

/// Plain values of the catalog's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogStats {
    /// Catalog loads that succeeded: at start, after a notification, every
    /// resync interval, after reconnecting and after an admin write.
    pub loads_ok: u64,
    /// Catalog loads that failed (the replica kept what it had).
    pub loads_failed: u64,
    /// Operations that failed because Postgres could not be reached or did not answer in time.
    pub unavailable_errors: u64,
    /// Operations Postgres refused for another reason (a bug or a schema problem).
    pub database_errors: u64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Builds the pool without connecting: a replica starts (not ready) while Postgres is down.
    ///
    /// # Errors
    /// When the URL does not parse or TLS cannot be set up. Never repeats the URL.
    pub fn new(options: CatalogOptions) -> Result<Self, CatalogError> {
        let mut config: Config = options.url.parse().map_err(|_| {
            CatalogError::Url("expected postgres://user[:password]@host[:port]/database".to_owned())
        })?;
        // The server enforces the statement timeout, so a stuck query frees
        // its connection even if this replica stops waiting.
        let timeout = format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        );
        let merged = match config.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {timeout}"),
            _ => timeout,
        };
        config.options(&merged);
        config.connect_timeout(options.connect_timeout);
        // The LISTEN connection is idle most of the time; without keepalives
        // a silently dropped one (a partition without resets) would go
        // unnoticed for hours and notifications with it.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        config.application_name("slidegate");
        // TLS only where the URL asks for it: `sslmode=require` (TLS or no
        // connection) or `sslmode=prefer` (TLS when the server offers it).
        // Certificates are then verified against the system's roots, unlike
        // libpq's `require`. Without `sslmode` the connection is plain,
        // rather than libpq's silent `prefer`.
        let asks_for_tls = options
            .url
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("sslmode=")));
        if !asks_for_tls {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        let connector = native_tls::TlsConnector::new()
            .map_err(|error| CatalogError::Url(format!("cannot set up TLS: {error}")))?;
        let tls = MakeTlsConnector::new(connector);
        let last_connect_error = LastError::default();
        let pool = Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(options.connect_timeout)
            .error_sink(Box::new(last_connect_error.clone()))
            .build_unchecked(PostgresConnectionManager::new(config.clone(), tls.clone()));
        Ok(Self {
            pool,
            last_connect_error,
            config,
            tls,
            options,
            migrated: AtomicBool::new(false),
            counters: CatalogCounters::default(),
        })
    }

    pub fn options(&self) -> &CatalogOptions {
        &self.options
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> CatalogStats {
        let counters = &self.counters;
        CatalogStats {
            loads_ok: counters.loads_ok.load(Ordering::Relaxed),
            loads_failed: counters.loads_failed.load(Ordering::Relaxed),
            unavailable_errors: counters.unavailable.load(Ordering::Relaxed),
            database_errors: counters.database.load(Ordering::Relaxed),
        }
    }

    /// Counts a Postgres failure in `result` (not a caller's mistake: a
    /// missing row or a conflict is not a Postgres error) and passes it on.
    fn counted<T>(&self, result: Result<T, CatalogError>) -> Result<T, CatalogError> {
        let counter = match &result {
            Err(CatalogError::Unavailable(_)) => Some(&self.counters.unavailable),
            Err(CatalogError::Database(_)) => Some(&self.counters.database),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn connection(&self) -> Result<PooledConnection<'_, Manager>, CatalogError> {
        self.pool.get().await.map_err(|error| match error {
            RunError::TimedOut => {
                let mut problem =
                    format!("no connection within {:?}", self.options.connect_timeout);
                if let Some(cause) = self.last_connect_error.get() {
                    problem = format!("{problem}; last connection error: {cause}");
                }
                CatalogError::Unavailable(problem)
            }
            RunError::User(error) => CatalogError::Unavailable(describe(&error)),
        })
    }

    /// Applies the embedded migrations that the database lacks, under an
    /// advisory lock so that replicas starting together migrate once.
    ///
    /// # Errors
    /// [`CatalogError::SchemaTooNew`] when the database has a migration this
    /// build does not know: the replica must not run against it.
    #[tracing::instrument(
        level = "debug",
        name = "MIGRATE slidegate_schema_history",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "MIGRATE")
    )]
    pub async fn migrate(&self) -> Result<(), CatalogError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        connection
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_error)?;
        let result = apply_migrations(&mut connection).await;
        // The lock is the session's: unlock even on failure (a broken
        // connection releases it by closing).
        let _ = connection
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads the whole enabled catalog in one consistent snapshot.
    ///
    /// # Errors
    /// When Postgres cannot be reached or the schema is missing.
    #[tracing::instrument(
        level = "debug",
        name = "SELECT catalog",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn load(&self) -> Result<CatalogUpdate, CatalogError> {
        let loaded = self.counted(self.load_uncounted().await);
        let counter = if loaded.is_ok() {
            &self.counters.loads_ok
        } else {
            &self.counters.loads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        loaded
    }

    async fn load_uncounted(&self) -> Result<CatalogUpdate, CatalogError> {
        self.migrate().await?;
        let mut connection = self.connection().await?;
        let tx = connection
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let version: i64 = tx
            .query_one("SELECT version FROM catalog_state", &[])
            .await
            .map_err(db_error)?
            .get(0);
        let mut policies = Vec::new();
        let mut rules = Vec::new();
        for row in tx
            .query(
                "SELECT name, algorithm, \"limit\", window_ms, default_cost, shadow,
                    match_methods, match_path_prefix, match_host, key_parts
                 FROM policies WHERE enabled",
                &[],
            )
            .await
            .map_err(db_error)?
        {
            match policy_from_row(&row) {
                Ok(policy) => {
                    match rule_from_row(&row) {
                        Ok(Some(rule)) => rules.push(rule),
                        Ok(None) => {}
                        // The policy still decides `/v1/check`; forward-auth leaves it out.
                        Err(error) => tracing::warn!(
                            policy = row.get::<_, &str>("name"),
                            %error,
                            "skipping a stored match rule this build cannot use"
                        ),
                    }
                    policies.push(policy);
                }
                Err(error) => tracing::warn!(
                    policy = row.get::<_, &str>("name"),
                    %error,
                    "skipping a stored policy this build cannot use"
                ),
            }
        }
        let policies = PolicySet::new(policies)
            .map_err(|name| CatalogError::Database(format!("duplicate policy {name}")))?;
        let mut overrides: HashMap<i64, Vec<(String, u64)>> = HashMap::new();
        for row in tx
            .query(
                "SELECT o.key_id, o.policy, o.\"limit\" FROM api_key_overrides o
                 JOIN api_keys k ON k.id = o.key_id WHERE k.revoked_at IS NULL",
                &[],
            )
            .await
            .map_err(db_error)?
        {
            overrides
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), non_negative(row.get(2))));
        }
        let mut keys = Vec::new();
        for row in tx
            .query(
                "SELECT id, key_hash, tenant FROM api_keys WHERE revoked_at IS NULL",
                &[],
            )
            .await
            .map_err(db_error)?
        {
            let id: i64 = row.get(0);
            let hash: &[u8] = row.get(1);
            let (Ok(digest), Ok(tenant)) = (
                <[u8; 32]>::try_from(hash),
                TenantName::parse(row.get::<_, &str>(2)),
            ) else {
                tracing::warn!(id, "skipping a stored API key this build cannot use");
                continue;
            };
            keys.push(TenantKey {
                digest: ApiKeyDigest(digest),
                tenant,
                overrides: overrides.remove(&id).unwrap_or_default(),
            });
        }
        tx.commit().await.map_err(db_error)?;
        Ok(CatalogUpdate {
            policies,
            keys,
            rules,
            version,
        })
    }

    /// Postgres's health for readiness: a round-trip through the pool, its
    /// latency and the pool's state, waiting until `deadline` at most (and
    /// never longer than a connection and a statement may take). Run by the
    /// background probe (see [`slidegate_core::probe`]), one at a time; giving up at
    /// the probe's own deadline, it is the one that counts the failure.
    #[tracing::instrument(
        level = "debug",
        name = "SELECT 1",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn health(&self, deadline: tokio::time::Instant) -> DependencyHealth {
        let started = tokio::time::Instant::now();
        let probe = async {
            let connection = self.connection().await?;
            connection
                .simple_query("SELECT 1")
                .await
                .map_err(db_error)
                .map(drop)
        };
        let deadline =
            deadline.min(started + self.options.connect_timeout + self.options.statement_timeout);
        let result = self.counted(match tokio::time::timeout_at(deadline, probe).await {
            Ok(result) => result,
            Err(_) => Err(CatalogError::Unavailable(format!(
                "no answer within {} ms",
                deadline.saturating_duration_since(started).as_millis()
            ))),
        });
        let state = self.pool.state();
        let ok = result.is_ok();
        DependencyHealth {
            name: "postgres",
            ok,
            latency_ms: ok.then(|| started.elapsed().as_secs_f64() * 1000.0),
            error: result.err().map(|error| error.to_string()),
            pool: Some(PoolHealth {
                max_size: self.options.pool_size,
                connections: state.connections,
                idle: state.idle_connections,
            }),
        }
    }

    /// The pool as metrics see it.
    pub fn pool_stats(&self) -> PoolStats {
        let state = self.pool.state();
        let statistics = &state.statistics;
        PoolStats {
            name: "postgres",
            max_size: self.options.pool_size,
            connections: state.connections,
            idle: state.idle_connections,
            waiting: statistics.pending_gets(),
            timeouts_total: statistics.get_timed_out,
            opened_total: statistics.connections_created,
            closed_broken_total: statistics.connections_closed_broken,
        }
    }

    /// Runs one write transaction: bumps the catalog version, lets `write`
    /// change rows stamped with it, notifies every replica and commits. The
    /// notification is delivered only if the commit succeeds; a failure at
    /// any point rolls everything back.
    async fn write<T>(
        &self,
        write: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>, i64) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let limit = self.options.connect_timeout + self.options.statement_timeout * 2;
        let attempt = async {
            let mut connection = self.connection().await?;
            let tx = connection.transaction().await.map_err(db_error)?;
            let version: i64 = tx
                .query_one(
                    "UPDATE catalog_state SET version = version + 1 RETURNING version",
                    &[],
                )
                .await
                .map_err(db_error)?
                .get(0);
            let value = write(&tx, version).await?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &version.to_string()],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(value)
        };
        self.counted(
            tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(CatalogError::Unavailable(format!(
                        "no answer within {limit:?}"
                    )))
                }),
        )
    }

    /// # Errors
    /// Unreachable database.
    #[tracing::instrument(
        level = "debug",
        name = "SELECT policies",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn list_policies(&self) -> Result<Vec<PolicyRecord>, CatalogError> {
        self.counted(self.list_policies_uncounted().await)
    }

    async fn list_policies_uncounted(&self) -> Result<Vec<PolicyRecord>, CatalogError> {
        let connection = self.connection().await?;
        let rows = connection
            .query(&format!("{SELECT_POLICY} ORDER BY name"), &[])
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(policy_record).collect())
    }

    /// # Errors
    /// Unreachable database, or no such policy.
    #[tracing::instrument(
        level = "debug",
        name = "SELECT policies",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn get_policy(&self, name: &str) -> Result<PolicyRecord, CatalogError> {
        self.counted(async { find_policy(&*self.connection().await?, name).await }.await)
    }

    /// # Errors
    /// Unreachable database, or a policy of that name exists.
    #[tracing::instrument(
        level = "debug",
        name = "INSERT policies",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "INSERT")
    )]
    pub async fn create_policy(&self, valid: ValidPolicy) -> Result<PolicyRecord, CatalogError> {
        self.write(async |tx, version| {
            let inserted = tx
                .execute(
                    "INSERT INTO policies (name, algorithm, \"limit\", window_ms, default_cost,
                        match_methods, match_path_prefix, match_host, shadow, enabled, description, version,
                        key_parts)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT (name) DO NOTHING",
                    &PolicyColumns::new(&valid, version).params(),
                )
                .await
                .map_err(db_error)?;
            let name = valid.policy.name().as_str();
            if inserted == 0 {
                return Err(CatalogError::Conflict(format!(
                    "a policy named {name:?} exists; replace it with PUT"
                )));
            }
            find_policy(tx, name).await
        })
        .await
    }

    /// # Errors
    /// Unreachable database, or no such policy.
    #[tracing::instrument(
        level = "debug",
        name = "UPDATE policies",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn replace_policy(&self, valid: ValidPolicy) -> Result<PolicyRecord, CatalogError> {
        self.write(async |tx, version| {
            let updated = tx
                .execute(
                    "UPDATE policies SET algorithm = $2, \"limit\" = $3, window_ms = $4,
                        default_cost = $5, match_methods = $6, match_path_prefix = $7,
                        match_host = $8, shadow = $9, enabled = $10, description = $11,
                        version = $12, key_parts = $13, updated_at = now()
                     WHERE name = $1",
                    &PolicyColumns::new(&valid, version).params(),
                )
                .await
                .map_err(db_error)?;
            let name = valid.policy.name().as_str();
            if updated == 0 {
                return Err(not_found_policy(name));
            }
            find_policy(tx, name).await
        })
        .await
    }

    /// Deletes a policy and every tenant override of it.
    ///
    /// # Errors
    /// Unreachable database, or no such policy.
    #[tracing::instrument(
        level = "debug",
        name = "DELETE policies",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "DELETE")
    )]
    pub async fn delete_policy(&self, name: &str) -> Result<(), CatalogError> {
        self.write(async |tx, _version| {
            let deleted = tx
                .execute("DELETE FROM policies WHERE name = $1", &[&name])
                .await
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(not_found_policy(name));
            }
            Ok(())
        })
        .await
    }

    /// Creates a key for a tenant. The plaintext is in the returned [`NewKey`] and nowhere else.
    ///
    /// # Errors
    /// Unreachable database, an invalid tenant or override.
    #[tracing::instrument(
        level = "debug",
        name = "INSERT api_keys",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "INSERT")
    )]
    pub async fn create_key(
        &self,
        document: NewKeyDocument,
    ) -> Result<(ApiKeyRecord, NewKey), CatalogError> {
        let tenant = document.tenant()?;
        let key = keys::generate()
            .map_err(|error| CatalogError::Database(format!("no randomness: {error}")))?;
        let record = self
            .write(async |tx, version| {
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO api_keys (key_hash, display_prefix, tenant, version)
                         VALUES ($1, $2, $3, $4) RETURNING id",
                        &[
                            &key.digest.0.as_slice(),
                            &key.display_prefix,
                            &tenant.as_str(),
                            &version,
                        ],
                    )
                    .await
                    .map_err(db_error)?
                    .get(0);
                write_overrides(tx, id, &document.overrides).await?;
                find_key(tx, id).await
            })
            .await?;
        Ok((record, key))
    }

    /// # Errors
    /// Unreachable database.
    #[tracing::instrument(
        level = "debug",
        name = "SELECT api_keys",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, CatalogError> {
        self.counted(self.list_keys_uncounted().await)
    }

    async fn list_keys_uncounted(&self) -> Result<Vec<ApiKeyRecord>, CatalogError> {
        let connection = self.connection().await?;
        let rows = connection
            .query(&format!("{SELECT_KEY} ORDER BY id"), &[])
            .await
            .map_err(db_error)?;
        let mut records: Vec<ApiKeyRecord> = rows.iter().map(key_record).collect();
        let mut overrides = load_overrides(&*connection, None).await?;
        for record in &mut records {
            record.overrides = overrides.remove(&record.id).unwrap_or_default();
        }
        Ok(records)
    }

    /// Revokes a key; revoking a revoked key changes nothing.
    ///
    /// # Errors
    /// Unreachable database, or no such key.
    #[tracing::instrument(
        level = "debug",
        name = "UPDATE api_keys",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn revoke_key(&self, id: i64) -> Result<ApiKeyRecord, CatalogError> {
        self.write(async |tx, version| {
            let updated = tx
                .execute(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), version = $2
                     WHERE id = $1",
                    &[&id, &version],
                )
                .await
                .map_err(db_error)?;
            if updated == 0 {
                return Err(not_found_key(id));
            }
            find_key(tx, id).await
        })
        .await
    }

    /// Replaces a key's overrides with `overrides`.
    ///
    /// # Errors
    /// Unreachable database, no such key, or an override its policy cannot take.
    #[tracing::instrument(
        level = "debug",
        name = "UPDATE api_key_overrides",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.system.name = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn set_overrides(
        &self,
        id: i64,
        overrides: &BTreeMap<String, u64>,
    ) -> Result<ApiKeyRecord, CatalogError> {
        self.write(async |tx, version| {
            let updated = tx
                .execute(
                    "UPDATE api_keys SET version = $2 WHERE id = $1",
                    &[&id, &version],
                )
                .await
                .map_err(db_error)?;
            if updated == 0 {
                return Err(not_found_key(id));
            }
            tx.execute("DELETE FROM api_key_overrides WHERE key_id = $1", &[&id])
                .await
                .map_err(db_error)?;
            write_overrides(tx, id, overrides).await?;
            find_key(tx, id).await
        })
        .await
    }

    /// Keeps `apply` fed with the current catalog until the process stops:
    /// LISTEN for changes, reload on each (a burst of notifications is one
    /// reload), reload every `resync_interval`, and after any reconnection,
    /// which catches whatever was missed while disconnected.
    pub async fn run_sync(self: Arc<Self>, apply: impl Fn(CatalogUpdate) + Send + Sync + 'static) {
        let mut backoff = Duration::from_millis(100);
        let mut lost_logged = false;
        loop {
            match self.listen().await {
                Ok((client, mut notifications)) => {
                    backoff = Duration::from_millis(100);
                    if lost_logged {
                        tracing::info!("reconnected to Postgres; the catalog is synced again");
                        lost_logged = false;
                    }
                    let mut ticks = tokio::time::interval(self.options.resync_interval);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // An interval's first tick is immediate; the load below is that one.
                    ticks.tick().await;
                    loop {
                        // Loading after LISTEN succeeded: whatever was committed
                        // before is in this load, whatever after is notified.
                        if !self.resync(&apply).await {
                            break;
                        }
                        tokio::select! {
                            notified = notifications.recv() => {
                                if notified.is_none() {
                                    break;
                                }
                                while notifications.try_recv().is_ok() {}
                            }
                            _ = ticks.tick() => {
                                // The periodic load goes through the pool; make sure the
                                // listener itself still answers, or reconnect it.
                                let ping = client.simple_query("SELECT 1");
                                let alive = tokio::time::timeout(self.options.connect_timeout, ping).await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                    drop(client);
                    if !lost_logged {
                        tracing::warn!(
                            "lost the Postgres connection; checks continue on the cached catalog"
                        );
                        lost_logged = true;
                    }
                }
                Err(error) => {
                    if !lost_logged {
                        tracing::warn!(
                            %error,
                            "cannot reach Postgres; checks continue on the cached catalog"
                        );
                        lost_logged = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Loads the catalog and applies it; `false` when Postgres failed (the caller reconnects).
    async fn resync(&self, apply: &(impl Fn(CatalogUpdate) + Send + Sync)) -> bool {
        match self.load().await {
            Ok(update) => {
                tracing::debug!(version = update.version, "catalog loaded");
                apply(update);
                true
            }
            Err(CatalogError::SchemaTooNew { found, known }) => {
                tracing::error!(
                    found,
                    known,
                    "the database schema is newer than this build; keeping the cached catalog"
                );
                true
            }
            Err(error) => {
                tracing::debug!(%error, "catalog load failed");
                false
            }
        }
    }

    /// A dedicated connection LISTENing on [`NOTIFY_CHANNEL`]; the receiver
    /// yields one `()` per notification and closes when the connection is lost.
    async fn listen(
        &self,
    ) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<()>), CatalogError> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|error| CatalogError::Unavailable(describe(&error)))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if sender.send(()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .map_err(db_error)?;
        Ok((client, receiver))
    }
}

/// Keeps the last error the pool met while connecting, already described without the URL.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<std::sync::Mutex<Option<String>>>);

impl LastError {
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|last| last.clone())
    }
}

impl bb8::ErrorSink<tokio_postgres::Error> for LastError {
    fn sink(&self, error: tokio_postgres::Error) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(describe(&error));
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

async fn apply_migrations(
    connection: &mut PooledConnection<'_, Manager>,
) -> Result<(), CatalogError> {
    connection
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS slidegate_schema_history (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(db_error)?;
    let applied: Option<i64> = connection
        .query_one("SELECT max(version) FROM slidegate_schema_history", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let applied = applied.unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |(version, ..)| *version);
    if applied > known {
        return Err(CatalogError::SchemaTooNew {
            found: applied,
            known,
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > applied) {
        let tx = connection.transaction().await.map_err(db_error)?;
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute(
            "INSERT INTO slidegate_schema_history (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(version, name, "applied a database migration");
    }
    Ok(())
}

const SELECT_POLICY: &str = "SELECT name, algorithm, \"limit\", window_ms, default_cost,
    match_methods, match_path_prefix, match_host, key_parts, shadow, enabled, description,
    version, created_at, updated_at FROM policies";
const SELECT_KEY: &str = "SELECT id, display_prefix, tenant, created_at, revoked_at FROM api_keys";

/// A validated policy as column values, in the order of the INSERT and UPDATE parameters.
struct PolicyColumns {
    name: String,
    algorithm: &'static str,
    limit: i64,
    window_ms: i64,
    default_cost: i64,
    methods: Vec<String>,
    path_prefix: Option<String>,
    host: Option<String>,
    key_parts: Vec<String>,
    shadow: bool,
    enabled: bool,
    description: String,
    version: i64,
}

impl PolicyColumns {
    fn new(valid: &ValidPolicy, version: i64) -> Self {
        let policy = &valid.policy;
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        Self {
            name: policy.name().as_str().to_owned(),
            algorithm: policy.algorithm().as_str(),
            limit: signed(policy.limit()),
            window_ms: signed(policy.window().as_millis()),
            default_cost: signed(policy.default_cost()),
            methods: valid.matching.methods.clone(),
            path_prefix: valid.matching.path_prefix.clone(),
            host: valid.matching.host.clone(),
            key_parts: valid.key.clone(),
            shadow: policy.is_shadow(),
            enabled: valid.enabled,
            description: valid.description.clone(),
            version,
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 13] {
        [
            &self.name,
            &self.algorithm,
            &self.limit,
            &self.window_ms,
            &self.default_cost,
            &self.methods,
            &self.path_prefix,
            &self.host,
            &self.shadow,
            &self.enabled,
            &self.description,
            &self.version,
            &self.key_parts,
        ]
    }
}

async fn find_policy(
    client: &impl GenericClient,
    name: &str,
) -> Result<PolicyRecord, CatalogError> {
    client
        .query_opt(&format!("{SELECT_POLICY} WHERE name = $1"), &[&name])
        .await
        .map_err(db_error)?
        .map(|row| policy_record(&row))
        .ok_or_else(|| not_found_policy(name))
}

async fn find_key(client: &impl GenericClient, id: i64) -> Result<ApiKeyRecord, CatalogError> {
    let row = client
        .query_opt(&format!("{SELECT_KEY} WHERE id = $1"), &[&id])
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found_key(id))?;
    let mut record = key_record(&row);
    record.overrides = load_overrides(client, Some(id))
        .await?
        .remove(&id)
        .unwrap_or_default();
    Ok(record)
}

async fn load_overrides(
    client: &impl GenericClient,
    id: Option<i64>,
) -> Result<HashMap<i64, BTreeMap<String, u64>>, CatalogError> {
    let rows = client
        .query(
            "SELECT key_id, policy, \"limit\" FROM api_key_overrides
             WHERE $1::bigint IS NULL OR key_id = $1",
            &[&id],
        )
        .await
        .map_err(db_error)?;
    let mut overrides: HashMap<i64, BTreeMap<String, u64>> = HashMap::new();
    for row in rows {
        overrides
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1), non_negative(row.get(2)));
    }
    Ok(overrides)
}

/// Inserts overrides after checking each against its policy as it is now.
async fn write_overrides(
    tx: &tokio_postgres::Transaction<'_>,
    id: i64,
    overrides: &BTreeMap<String, u64>,
) -> Result<(), CatalogError> {
    for (name, limit) in overrides {
        let field = format!("overrides.{name}");
        let row = tx
            .query_opt(
                "SELECT name, algorithm, \"limit\", window_ms, default_cost, shadow
                 FROM policies WHERE name = $1 FOR SHARE",
                &[name],
            )
            .await
            .map_err(db_error)?
            .ok_or_else(|| Invalid::new(&field, format!("no policy named {name:?}")))?;
        let policy = policy_from_row(&row).map_err(|error| Invalid::new(&field, error))?;
        policy
            .with_limit(*limit)
            .map_err(|error| Invalid::new(&field, error))?;
        let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO api_key_overrides (key_id, policy, \"limit\") VALUES ($1, $2, $3)",
            &[&id, name, &limit],
        )
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

fn policy_from_row(row: &Row) -> Result<Policy, String> {
    let name = PolicyName::parse(row.get("name")).map_err(|e| e.to_string())?;
    let algorithm: Algorithm = row
        .get::<_, &str>("algorithm")
        .parse()
        .map_err(|e: slidegate_core::PolicyError| e.to_string())?;
    let window = Window::try_from(Duration::from_millis(non_negative(row.get("window_ms"))))
        .map_err(|e| e.to_string())?;
    Policy::new(
        name,
        algorithm,
        non_negative(row.get("limit")),
        window,
        non_negative(row.get("default_cost")),
    )
    .map(|policy| policy.with_shadow(row.get("shadow")))
    .map_err(|e| e.to_string())
}

/// Forward-auth's rule for a stored policy: `None` for a policy without any
/// match condition, which only `/v1/check` uses (as a file policy without
/// `[policies.match]`).
fn rule_from_row(row: &Row) -> Result<Option<StoredRule>, String> {
    let methods: Vec<String> = row.get("match_methods");
    let matches = RequestMatch::new(
        &methods,
        row.get("match_path_prefix"),
        row.get("match_host"),
    )
    .map_err(|(field, problem)| format!("match.{field}: {problem}"))?;
    if matches.is_unconditional() {
        return Ok(None);
    }
    let key = KeySpec::parse(&row.get::<_, Vec<String>>("key_parts"))
        .map_err(|problem| format!("key: {problem}"))?;
    Ok(Some(StoredRule {
        policy: row.get("name"),
        matches,
        key,
    }))
}

fn policy_record(row: &Row) -> PolicyRecord {
    PolicyRecord {
        name: row.get("name"),
        algorithm: row.get("algorithm"),
        limit: non_negative(row.get("limit")),
        window: humantime::format_duration(Duration::from_millis(non_negative(
            row.get("window_ms"),
        )))
        .to_string(),
        cost: non_negative(row.get("default_cost")),
        matching: MatchRules {
            methods: row.get("match_methods"),
            path_prefix: row.get("match_path_prefix"),
            host: row.get("match_host"),
        },
        key: row.get("key_parts"),
        shadow: row.get("shadow"),
        enabled: row.get("enabled"),
        description: row.get("description"),
        version: row.get("version"),
        created_at: timestamp(row.get("created_at")),
        updated_at: timestamp(row.get("updated_at")),
    }
}

fn key_record(row: &Row) -> ApiKeyRecord {
    ApiKeyRecord {
        id: row.get("id"),
        prefix: row.get("display_prefix"),
        tenant: row.get("tenant"),
        overrides: BTreeMap::new(),
        created_at: timestamp(row.get("created_at")),
        revoked_at: row
            .get::<_, Option<SystemTime>>("revoked_at")
            .map(timestamp),
    }
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn not_found_policy(name: &str) -> CatalogError {
    CatalogError::NotFound(format!("no policy named {name:?}"))
}

fn not_found_key(id: i64) -> CatalogError {
    CatalogError::NotFound(format!("no API key with id {id}"))
}

/// A connection error as text for logs and readiness, without the URL.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            // The source (an io::Error, a TLS error) says what happened;
            // neither carries the password.
            let mut text = error.to_string();
            if let Some(source) = std::error::Error::source(error) {
                text = format!("{text}: {source}");
            }
            text
        }
    }
}

/// Sorts a Postgres error into what the caller can do about it.
fn db_error(error: tokio_postgres::Error) -> CatalogError {
    let Some(db) = error.as_db_error() else {
        return CatalogError::Unavailable(describe(&error));
    };
    let code = db.code();
    if *code == SqlState::QUERY_CANCELED {
        CatalogError::Unavailable("the statement timed out".to_owned())
    } else if code.code().starts_with("08")
        || code.code().starts_with("57")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
    {
        CatalogError::Unavailable(describe(&error))
    } else if *code == SqlState::UNIQUE_VIOLATION {
        CatalogError::Conflict(db.message().to_owned())
    } else if *code == SqlState::UNDEFINED_TABLE {
        CatalogError::Database("the catalog tables are missing; migrations did not run".to_owned())
    } else {
        CatalogError::Database(describe(&error))
    }
}
