//! Reading the whole enabled catalog, in one consistent snapshot, into what the limiter takes.

use super::*;

impl Catalog {
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
            bundle: Bundle {
                policies,
                tenants: keys,
                rules,
            },
            version,
        })
    }
}

pub(super) fn policy_from_row(row: &Row) -> Result<Policy, String> {
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
