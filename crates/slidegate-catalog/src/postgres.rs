//! The catalog in Postgres: the types every part shares; each job in its own module.
//!
//! - [`pool`]: connecting (TLS, timeouts), the pool, its health and counters;
//! - [`migrations`]: the embedded schema, applied once under an advisory lock;
//! - [`load`]: reading the whole enabled catalog into a [`CatalogUpdate`];
//! - [`admin`]: what the admin API reads and writes, one transaction per write;
//! - [`sync`]: LISTEN/NOTIFY and resyncs that keep a replica's copy current,
//!   applied in version order ([`Catalog::apply`]).

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
use super::model::{ApiKeyRecord, Invalid, MatchRules, PolicyRecord, ValidPolicy};
use slidegate_core::rules::{KeySpec, RequestMatch, StoredRule};
use slidegate_core::{
    Algorithm, ApiKeyDigest, Bundle, DependencyHealth, Policy, PolicyName, PolicySet, PoolHealth,
    PoolStats, TenantKey, TenantName, Window,
};

mod admin;
mod load;
mod migrations;
mod pool;
mod sync;

/// The channel every write notifies, with the new catalog version as payload.
pub const NOTIFY_CHANNEL: &str = "slidegate_catalog";

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

/// A catalog as loaded: what the limiter takes, and the version it was loaded at.
#[derive(Debug)]
pub struct CatalogUpdate {
    pub bundle: Bundle,
    pub version: i64,
}

/// What this replica has put in force from the catalog, for readiness and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatalogSync {
    /// `None` before the first load.
    pub version: Option<i64>,
    pub synced_at: Option<SystemTime>,
    pub policies: usize,
    pub api_keys: usize,
}

/// The catalog's Postgres side: a pool for reads and writes, and what the listener needs to connect.
pub struct Catalog {
    /// What is in force, and the lock [`Catalog::apply`] holds while it
    /// compares versions and swaps, so two loads finishing together apply in order.
    applied: std::sync::Mutex<CatalogSync>,
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

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
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
