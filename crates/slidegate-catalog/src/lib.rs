//! The catalog: policies and API keys in Postgres, the source of truth when a database is configured.
//!
//! Writes go to Postgres in one transaction each and are acknowledged only
//! after the commit. Every replica keeps the whole catalog in memory (the
//! limiter's snapshot) and reloads it when a change is announced on the
//! `slidegate_catalog` channel (LISTEN/NOTIFY), every `postgres.resync_interval`,
//! and after reconnecting; checks never wait on Postgres.
//!
//! A tour: [`Catalog`] (in `postgres/`, one module per job: pool,
//! migrations, load, admin, sync) reads and writes; [`Catalog::apply`] puts
//! a load in force as the core's `Bundle`, in version order; [`model`] is
//! what it stores and returns; [`keys`] makes API keys; [`PostgresSettings`]
//! is the `[postgres]` section of the file.

pub mod keys;
pub mod model;
mod postgres;
mod settings;

pub use postgres::{
    Catalog, CatalogOptions, CatalogStats, CatalogSync, CatalogUpdate, NOTIFY_CHANNEL,
};
pub use settings::PostgresSettings;

/// Why a catalog operation failed. Messages never contain the database URL or an API key.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Postgres did not answer in time or the connection failed; nothing was written.
    #[error("the policy database is unreachable ({0}); nothing was changed")]
    Unavailable(String),
    #[error(
        "the database schema is at version {found}, newer than this build understands ({known}); run a newer slidegate"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] model::Invalid),
    /// Anything else the database refused: a bug or a schema problem, not the caller's doing.
    #[error("the policy database failed: {0}")]
    Database(String),
    #[error("invalid postgres.url: {0}")]
    Url(String),
}
