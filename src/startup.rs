//! Assembles a replica: store, limiter, HTTP server and background tasks. Nothing else knows how the app is wired.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::Condition;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;
use tracing_actix_web::TracingLogger;

use crate::catalog::{Catalog, CatalogError, CatalogOptions};
use crate::configuration::{ConfigurationError, Settings};
use crate::http::admin::AdminToken;
use crate::http::{self, HttpState, RootSpan};
use crate::limiter::{Clock, Limiter, Store, StoreError, SystemClock};
use crate::metrics::Metrics;
use crate::store::{AnyStore, MemoryStore, RedisOptions, RedisStore};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use the policy database: {0}")]
    Catalog(#[from] CatalogError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// A replica, bound to its port and ready to run.
pub struct Application {
    address: SocketAddr,
    store_kind: &'static str,
    example_policy: Option<String>,
    server: Server,
    sweeper: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
}

impl Application {
    /// # Errors
    /// Invalid settings, an unusable Redis URL, or an address that cannot be bound.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with the clock the embedded store judges time
    /// by (Redis mode ignores it: the scripts read Redis `TIME`).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let policies = settings.validate()?;
        let store = match settings.redis.url() {
            Some(url) => AnyStore::Redis(RedisStore::new(RedisOptions {
                url: url.to_owned(),
                key_prefix: settings.limiter.key_prefix.clone(),
                pool_size: settings.redis.pool_size,
                connect_timeout: settings.redis.connect_timeout,
                command_timeout: settings.redis.command_timeout,
            })?),
            None => AnyStore::Memory(MemoryStore::new(clock)),
        };
        let store_kind = store.kind();
        let catalog = Self::open_catalog(settings).await?;
        let metrics = Metrics::new(store_kind, policies.len());
        let (limiter, catalog) = match catalog {
            Some((catalog, loaded)) => {
                let limiter = Limiter::awaiting_catalog(store, &metrics);
                if let Some(update) = loaded {
                    limiter.replace(update);
                }
                (limiter, Some(catalog))
            }
            None => (Limiter::new(policies, store, &metrics), None),
        };
        let example_policy = limiter
            .policies()
            .iter_sorted()
            .first()
            .map(|policy| policy.name().to_string());
        let state = web::Data::new(HttpState {
            limiter,
            metrics,
            max_body_bytes: settings.server.max_body_bytes,
            catalog: catalog.clone(),
            admin_token: settings.admin.token().map(AdminToken::new),
        });
        // Keeps this replica's copy of the catalog current for as long as it runs.
        let syncer = catalog.map(|catalog| {
            let state = state.clone();
            tokio::spawn(catalog.run_sync(move |update| state.limiter.replace(update)))
        });
        // Without tracing the middleware is not in the chain at all, so a
        // request pays for no root span, request id or header parsing.
        let traced = settings.tracing.endpoint().is_some();

        let listener =
            TcpListener::bind(&settings.server.bind).map_err(|source| StartupError::Bind {
                address: settings.server.bind.clone(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            address: settings.server.bind.clone(),
            source,
        })?;

        let server_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(Condition::new(traced, TracingLogger::<RootSpan>::new()))
                .app_data(server_state.clone())
                .configure(http::routes::<AnyStore>)
        })
        .shutdown_timeout(
            // actix counts whole seconds: round up so "2500ms" is not cut to 2 s.
            settings
                .server
                .shutdown_timeout
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64,
        );
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                address: settings.server.bind.clone(),
                source,
            })?
            .run();

        let sweeper = matches!(state.limiter.store(), AnyStore::Memory(_)).then(|| {
            let interval = settings.limiter.sweep_interval;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if let AnyStore::Memory(store) = state.limiter.store() {
                        let evicted = store.evict_idle();
                        tracing::trace!(evicted, remaining = store.len(), "swept idle keys");
                    }
                }
            })
        });

        Ok(Self {
            address,
            store_kind,
            example_policy,
            server,
            sweeper,
            syncer,
        })
    }

    /// With `postgres.url` set: the catalog, migrated, and loaded once if
    /// Postgres answers now. A replica whose Postgres is down still starts
    /// (not ready) and loads the catalog when it can; one whose database
    /// schema is newer than it understands refuses to start.
    async fn open_catalog(
        settings: &Settings,
    ) -> Result<Option<(Arc<Catalog>, Option<crate::limiter::CatalogUpdate>)>, StartupError> {
        let Some(url) = settings.postgres.url() else {
            return Ok(None);
        };
        if settings.policies.is_some() {
            tracing::warn!(
                "the [[policies]] in the configuration are ignored: with postgres.url set, policies come from Postgres"
            );
        }
        let catalog = Arc::new(Catalog::new(CatalogOptions {
            url: url.to_owned(),
            pool_size: settings.postgres.pool_size,
            connect_timeout: settings.postgres.connect_timeout,
            statement_timeout: settings.postgres.statement_timeout,
            resync_interval: settings.postgres.resync_interval,
        })?);
        let loaded = match catalog.load().await {
            Ok(update) => Some(update),
            Err(error @ CatalogError::SchemaTooNew { .. }) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot load policies from Postgres yet; not ready until they are loaded"
                );
                None
            }
        };
        Ok(Some((catalog, loaded)))
    }

    /// The address actually bound (port 0 in settings becomes a real port here).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// A policy name to show in the start-up hint.
    pub fn example_policy(&self) -> Option<&str> {
        self.example_policy.as_deref()
    }

    /// `"memory"` or `"redis"`.
    pub fn store_kind(&self) -> &'static str {
        self.store_kind
    }

    /// Serves until SIGINT or SIGTERM, then lets in-flight requests finish
    /// within `server.shutdown_timeout` and stops background tasks.
    ///
    /// # Errors
    /// When the server fails while running.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        for task in [self.sweeper, self.syncer].into_iter().flatten() {
            task.abort();
        }
        result
    }
}
