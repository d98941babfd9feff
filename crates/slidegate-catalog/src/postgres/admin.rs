//! What the admin API reads and writes: policies, API keys and overrides, one transaction per write.

use super::load::policy_from_row;
use super::*;

impl Catalog {
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
        tenant: TenantName,
        overrides: &BTreeMap<String, u64>,
    ) -> Result<(ApiKeyRecord, NewKey), CatalogError> {
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
                write_overrides(tx, id, overrides).await?;
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

fn not_found_policy(name: &str) -> CatalogError {
    CatalogError::NotFound(format!("no policy named {name:?}"))
}

fn not_found_key(id: i64) -> CatalogError {
    CatalogError::NotFound(format!("no API key with id {id}"))
}
