//! The embedded schema migrations, applied once under an advisory lock.

use super::*;

/// Taken around migrations so replicas starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x5116_6A7E;
/// Embedded migrations: version, name, SQL. Append only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policies_and_api_keys",
        include_str!("../../migrations/V1__policies_and_api_keys.sql"),
    ),
    (
        2,
        "policy_key_parts",
        include_str!("../../migrations/V2__policy_key_parts.sql"),
    ),
];

impl Catalog {
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
