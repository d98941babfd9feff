//! Assembles a replica: store, limiter, HTTP server and background tasks. Nothing else knows how the app is wired.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;

use crate::configuration::{ConfigurationError, Settings};
use crate::http::{self, HttpState};
use crate::limiter::{Clock, Failover, Limiter, MonotonicClock, StoreError};
use crate::store::{AnyStore, MemoryStore, RedisOptions, RedisStore};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
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
    server: Server,
    /// Background work (sweeping, heartbeats), stopped when the server stops.
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// # Errors
    /// Invalid settings, an unusable Redis URL, or an address that cannot be bound.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(MonotonicClock::new())).await
    }

    /// As [`Application::build`], with the clock in-process time is judged by:
    /// the embedded store's windows, and in Redis mode the deny cache, the
    /// breaker's cool-down and the `local` failure mode. (Shared decisions
    /// never use it: the scripts read Redis `TIME`.)
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let policies = settings.validate()?;
        let limiter = match settings.redis.url() {
            Some(url) => {
                let store = RedisStore::new(RedisOptions {
                    url: url.to_owned(),
                    key_prefix: settings.limiter.key_prefix.clone(),
                    pool_size: settings.redis.pool_size,
                    connect_timeout: settings.redis.connect_timeout,
                    command_timeout: settings.redis.command_timeout,
                })?;
                let failover = Failover::new(settings.failover(), clock);
                Limiter::with_failover(policies, AnyStore::Redis(store), failover)
            }
            None => Limiter::new(policies, AnyStore::Memory(MemoryStore::new(clock))),
        };
        let store_kind = match limiter.store() {
            AnyStore::Memory(_) => "memory",
            AnyStore::Redis(_) => "redis",
        };
        let state = web::Data::new(HttpState {
            limiter,
            max_body_bytes: settings.server.max_body_bytes,
        });

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
                .app_data(server_state.clone())
                .configure(http::routes::<AnyStore>)
        })
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs().max(1));
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

        let sweep_interval = settings.limiter.sweep_interval;
        let sweep_state = state.clone();
        let mut tasks = vec![every(sweep_interval, move || {
            let state = sweep_state.clone();
            async move {
                if let AnyStore::Memory(store) = state.limiter.store() {
                    let evicted = store.evict_idle();
                    tracing::trace!(evicted, remaining = store.len(), "swept idle keys");
                }
                if let Some(failover) = state.limiter.failover() {
                    failover.sweep();
                }
            }
        })];
        if state.limiter.failover().is_some() {
            let heartbeat_state = state.clone();
            tasks.push(every(settings.limiter.heartbeat_interval, move || {
                let state = heartbeat_state.clone();
                async move { state.limiter.heartbeat().await }
            }));
        }

        Ok(Self {
            address,
            store_kind,
            server,
            tasks,
        })
    }

    /// The address actually bound (port 0 in settings becomes a real port here).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
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
        for task in self.tasks {
            task.abort();
        }
        result
    }
}

/// Runs `work` now and then every `period`, one run at a time: a run that
/// overruns (a heartbeat waiting out its timeout) delays the next instead of
/// piling runs up.
fn every<F, Fut>(period: Duration, mut work: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            work().await;
        }
    })
}
