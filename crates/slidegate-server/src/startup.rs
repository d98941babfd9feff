//! Assembles a replica: store, limiter, HTTP server and background tasks. Nothing else knows how the app is wired.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::Condition;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;

use crate::configuration::{ConfigurationError, ServerSettings, Settings, Validated};
use crate::http::admin::AdminToken;
use crate::http::{self, ForwardAuth, HttpState, Listener, SampledTracing};
use crate::metrics::Metrics;
use crate::store::{AnyStore, ClusterStore, MemoryStore, RedisStore};
use slidegate_catalog::{Catalog, CatalogError};
use slidegate_core::probe::{Probe, Probes};
use slidegate_core::{
    Clock, DependencyHealth, Failover, Limiter, MonotonicClock, Store, StoreError, StoreHealth,
};

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

/// The Envoy rate-limit gRPC server of a replica, stopped with the HTTP ones.
struct EnvoyRls {
    address: SocketAddr,
    /// Sent once: stop taking calls, finish those in flight.
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<Result<(), slidegate_envoy::ServeError>>,
    /// Re-reads the rule files; stopped when dropped.
    _watcher: slidegate_envoy::RulesWatcher,
    engine: Arc<slidegate_envoy::Engine<Arc<AnyStore>>>,
    /// What the gRPC health service answers (see [`EnvoyRls::follow_readiness`]).
    ready: tokio::sync::watch::Sender<bool>,
}

impl EnvoyRls {
    /// Keeps the gRPC health service's answer current: `SERVING` while the
    /// replica is not draining and the rules' limiter is ready by the same
    /// rule as `/health/ready` (its policies loaded, and the store decides or
    /// no rule fails closed), judged on the background store probe's last
    /// answer. Sweeps that limiter's failover state (deny cache, local
    /// mode) on `sweep_interval` too.
    fn follow_readiness(
        &self,
        store: Arc<Probe<slidegate_core::StoreHealth>>,
        draining: Arc<AtomicBool>,
        check_every: Duration,
        sweep_interval: Duration,
    ) -> Vec<JoinHandle<()>> {
        let engine = Arc::clone(&self.engine);
        let ready = self.ready.clone();
        let readiness = every(check_every, move || {
            let serving = !draining.load(Ordering::SeqCst)
                && engine.limiter().health_given(store.read().answer).ready;
            ready.send_if_modified(|answer| std::mem::replace(answer, serving) != serving);
            std::future::ready(())
        });
        let engine = Arc::clone(&self.engine);
        let sweep = every(sweep_interval, move || {
            if let Some(failover) = engine.limiter().failover() {
                failover.sweep();
            }
            std::future::ready(())
        });
        vec![readiness, sweep]
    }
}

/// A replica, bound to its port (and its admin port) and ready to run.
pub struct Application {
    address: SocketAddr,
    admin_address: Option<SocketAddr>,
    store_kind: &'static str,
    example_policy: Option<String>,
    /// The public server, then the admin one if `server.admin_bind` is set.
    servers: Vec<Server>,
    /// Background work (sweeping, heartbeats, catalog sync), stopped when the server stops.
    tasks: Vec<JoinHandle<()>>,
    signals: StopSignals,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    envoy_rls: Option<EnvoyRls>,
}

impl Application {
    /// # Errors
    /// Invalid settings, an unusable Redis URL, or an address that cannot be bound.
    pub async fn build(valid: Validated) -> Result<Self, StartupError> {
        Self::build_with_clock(valid, Arc::new(MonotonicClock::new())).await
    }

    /// As [`Application::build`], with the clock in-process time is judged by:
    /// the embedded store's windows, and in Redis mode the deny cache, the
    /// breaker's cool-down and the `local` failure mode. (Shared decisions
    /// never use it: the scripts read Redis `TIME`.)
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_clock(
        valid: Validated,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let Validated {
            settings,
            policies,
            forward_auth_rules,
            client_ip,
            redis_tls,
            envoy_rules,
        } = valid;
        let settings = &settings;
        let forward_auth = ForwardAuth {
            rules: forward_auth_rules,
            client_ip,
            no_match: settings.forward_auth.no_match,
        };
        let draining = Arc::new(AtomicBool::new(false));
        let prefix = &settings.limiter.key_prefix;
        let shared = match settings.redis.cluster_options(prefix, redis_tls.clone()) {
            Some(options) => Some(AnyStore::Cluster(Box::new(ClusterStore::new(options)?))),
            None => match settings.redis.options(prefix, redis_tls) {
                Some(options) => Some(AnyStore::Redis(Box::new(RedisStore::new(options)?))),
                None => None,
            },
        };
        let (store, failover) = match shared {
            Some(store) => (
                store,
                Some(Failover::new(settings.failover(), Arc::clone(&clock))),
            ),
            None => (
                AnyStore::Memory(MemoryStore::bounded(
                    Arc::clone(&clock),
                    settings.limiter.max_keys,
                    "embedded",
                )),
                None,
            ),
        };
        // One store for every front end: the Envoy limiter shares its pools.
        let store = Arc::new(store);
        let store_kind = store.kind();
        let catalog = Self::open_catalog(settings).await?;
        let metrics = Metrics::new(store_kind, policies.len());
        let (limiter, catalog, loaded) = match catalog {
            Some((catalog, loaded)) => (
                Limiter::awaiting_bundle(Arc::clone(&store), metrics.observer()),
                Some(catalog),
                loaded,
            ),
            None => (
                Limiter::new(policies, Arc::clone(&store), metrics.observer()),
                None,
                None,
            ),
        };
        // Failover first: a catalog loaded into the limiter takes its default failure mode.
        let shared_store = failover.is_some();
        let limiter = match failover {
            Some(failover) => limiter.with_failover(failover),
            None => limiter,
        };
        let envoy_rls = match (settings.envoy_rls.bind, envoy_rules) {
            (Some(bind), Some((rules, sources))) => Some(
                Self::start_envoy_rls(
                    settings,
                    bind,
                    rules,
                    sources,
                    &store,
                    shared_store.then(|| Arc::clone(&clock)),
                    &metrics,
                )
                .await?,
            ),
            _ => None,
        };
        if let (Some(update), Some(catalog)) = (loaded, &catalog) {
            catalog.apply(update, |bundle| limiter.replace(bundle));
        }
        let example_policy = limiter
            .policies()
            .iter_sorted()
            .first()
            .map(|policy| policy.name().to_string());
        let probe_settings = settings.health.probes();
        let probes = Probes {
            store: Arc::new(Probe::new(probe_settings, unprobed_store(limiter.store()))),
            postgres: catalog
                .as_ref()
                .map(|_| Arc::new(Probe::new(probe_settings, unprobed("postgres")))),
        };
        // The first answers before the first request, so that readiness is
        // right from the start; at most one probe timeout.
        tokio::join!(probes.store.refresh(|_| limiter.probe_store()), async {
            if let (Some(probe), Some(catalog)) = (&probes.postgres, &catalog) {
                probe.refresh(|deadline| catalog.health(deadline)).await;
            }
        });
        let state = web::Data::new(HttpState {
            limiter,
            metrics,
            max_body_bytes: settings.server.max_body_bytes,
            forward_auth,
            draining: Arc::clone(&draining),
            catalog: catalog.clone(),
            admin_token: settings.admin.token().map(AdminToken::new),
            probes: probes.clone(),
        });
        // Keeps this replica's copy of the catalog current for as long as it runs.
        let syncer = catalog.clone().map(|catalog| {
            let state = state.clone();
            tokio::spawn(catalog.run_sync(move |bundle| state.limiter.replace(bundle)))
        });
        // Without tracing the middleware is not in the chain at all, so a
        // request pays for no root span, request id or header parsing.
        let traced = settings.tracing.endpoint().is_some();

        let (listener, address) = bind(&settings.server.bind)?;
        let admin = settings.server.admin_bind().map(bind).transpose()?;
        let public_routes = if admin.is_some() {
            Listener::Public
        } else {
            Listener::All
        };
        let serving = Serving {
            state: &state,
            draining: &draining,
            traced,
            sample_ratio: settings.tracing.sample_ratio,
            settings: &settings.server,
        };
        let mut servers = vec![serving.serve(
            listener,
            &settings.server.bind,
            public_routes,
            settings.server.workers,
        )?];
        let admin_address = match admin {
            Some((listener, admin_address)) => {
                // Operators' requests are few: one worker, so the admin side
                // costs the checks no threads (nor Redis pools).
                servers.push(serving.serve(
                    listener,
                    &admin_address.to_string(),
                    Listener::Admin,
                    Some(1),
                )?);
                Some(admin_address)
            }
            None => None,
        };

        let sweep_interval = settings.limiter.sweep_interval;
        let sweep_state = state.clone();
        let mut tasks = vec![every(sweep_interval, move || {
            let state = sweep_state.clone();
            async move {
                if let AnyStore::Memory(store) = &**state.limiter.store() {
                    let evicted = store.evict_idle();
                    tracing::trace!(evicted, remaining = store.len(), "swept idle keys");
                }
                if let Some(failover) = state.limiter.failover() {
                    failover.sweep();
                }
            }
        })];
        tasks.extend(syncer);
        let store_state = state.clone();
        // The Redis probe ends by its own timeouts (connect + command) or at the deadline.
        tasks.push(tokio::spawn(Arc::clone(&probes.store).run(move |_| {
            let state = store_state.clone();
            async move { state.limiter.probe_store().await }
        })));
        if let (Some(probe), Some(catalog)) = (&probes.postgres, &catalog) {
            let catalog = Arc::clone(catalog);
            tasks.push(tokio::spawn(Arc::clone(probe).run(move |deadline| {
                let catalog = Arc::clone(&catalog);
                async move { catalog.health(deadline).await }
            })));
        }
        if let Some(envoy) = &envoy_rls {
            tasks.extend(envoy.follow_readiness(
                Arc::clone(&probes.store),
                Arc::clone(&draining),
                probe_settings.interval.min(Duration::from_secs(1)),
                sweep_interval,
            ));
        }
        if state.limiter.failover().is_some() {
            let heartbeat_state = state.clone();
            tasks.push(every(settings.limiter.heartbeat_interval, move || {
                let state = heartbeat_state.clone();
                async move { state.limiter.heartbeat().await }
            }));
        }

        Ok(Self {
            address,
            admin_address,
            store_kind,
            example_policy,
            servers,
            tasks,
            signals: StopSignals::install(),
            draining,
            drain_delay: settings.server.drain_delay,
            shutdown_timeout: settings.server.shutdown_timeout,
            envoy_rls,
        })
    }

    /// The Envoy front end: its own limiter over the same store (its
    /// policies are the rules', swapped on reload; its failover has the
    /// rules' failure mode), the rule watcher and the gRPC server on `bind`.
    async fn start_envoy_rls(
        settings: &Settings,
        bind: SocketAddr,
        rules: slidegate_envoy::RuleSet,
        sources: Vec<slidegate_envoy::rules::Source>,
        store: &Arc<AnyStore>,
        shared_clock: Option<Arc<dyn Clock>>,
        metrics: &Metrics,
    ) -> Result<EnvoyRls, StartupError> {
        let envoy = &settings.envoy_rls;
        let limiter = Limiter::awaiting_bundle(Arc::clone(store), metrics.observer());
        let limiter = match shared_clock {
            Some(clock) => {
                let mut options = settings.failover();
                if let Some(mode) = envoy.failure_mode {
                    options.default_mode = mode;
                }
                limiter.with_failover(Failover::new(options, clock))
            }
            None => limiter,
        };
        let engine = Arc::new(slidegate_envoy::Engine::new(limiter, rules));
        let path = envoy.rules.clone().unwrap_or_default();
        let watcher = slidegate_envoy::RulesWatcher::start(
            Arc::clone(&engine),
            path,
            envoy.reload_interval,
            sources,
            None,
        );
        metrics.count_envoy_reloads(Arc::clone(watcher.counters()));
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| StartupError::Bind {
                address: bind.to_string(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            address: bind.to_string(),
            source,
        })?;
        let mut service =
            slidegate_envoy::RlsService::new(Arc::clone(&engine), envoy.response_headers);
        if settings.tracing.endpoint().is_some() {
            service = service.with_tracing(Arc::new(crate::telemetry::GrpcTracing {
                sample_ratio: settings.tracing.sample_ratio,
            }));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // NOT_SERVING until readiness is first judged, once the store's
        // first probe has answered (see `follow_readiness`).
        let (ready, readiness) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(slidegate_envoy::serve_on(
            listener,
            service,
            readiness,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(EnvoyRls {
            address,
            stop,
            server,
            _watcher: watcher,
            engine,
            ready,
        })
    }

    /// The Envoy rate-limit gRPC listener's address, with `envoy_rls.bind` set.
    pub fn envoy_rls_address(&self) -> Option<SocketAddr> {
        self.envoy_rls.as_ref().map(|envoy| envoy.address)
    }

    /// With `postgres.url` set: the catalog, migrated, and loaded once if
    /// Postgres answers now. A replica whose Postgres is down still starts
    /// (not ready) and loads the catalog when it can; one whose database
    /// schema is newer than it understands refuses to start.
    async fn open_catalog(
        settings: &Settings,
    ) -> Result<Option<(Arc<Catalog>, Option<slidegate_catalog::CatalogUpdate>)>, StartupError>
    {
        let Some(options) = settings.postgres.options() else {
            return Ok(None);
        };
        if settings.policies.is_some() {
            tracing::warn!(
                "the [[policies]] in the configuration are ignored: with postgres.url set, policies come from Postgres"
            );
        }
        let catalog = Arc::new(Catalog::new(options)?);
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

    /// The admin listener's address, with `server.admin_bind` set.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_address
    }

    /// A policy name to show in the start-up hint.
    pub fn example_policy(&self) -> Option<&str> {
        self.example_policy.as_deref()
    }

    /// `"memory"` or `"redis"`.
    pub fn store_kind(&self) -> &'static str {
        self.store_kind
    }

    /// Serves until SIGINT or SIGTERM, then shuts down in the order load
    /// balancers need: readiness answers 503 at once while requests are
    /// still served for `server.drain_delay`; then the listeners (public and
    /// admin together) close and in-flight requests get
    /// `server.shutdown_timeout` to finish; then background tasks stop. A
    /// second signal during the drain cuts it short.
    ///
    /// # Errors
    /// When a server fails while running.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let handles: Vec<ServerHandle> = self.servers.iter().map(Server::handle).collect();
        let mut servers = tokio::task::JoinSet::new();
        for server in self.servers {
            servers.spawn(server);
        }
        let ended_by_itself = tokio::select! {
            finished = servers.join_next() => finished,
            () = self.signals.next() => None,
        };
        let mut result = Ok(());
        match ended_by_itself {
            // One server failed: the replica stops, without a drain.
            Some(finished) => result = flatten(finished),
            None => {
                self.draining.store(true, Ordering::SeqCst);
                tracing::info!(
                    drain_delay = ?self.drain_delay,
                    "stop signal received; readiness now answers 503, still serving while load balancers notice"
                );
                tokio::select! {
                    () = tokio::time::sleep(self.drain_delay) => {}
                    () = self.signals.next() => tracing::info!("second stop signal; ending the drain early"),
                }
                tracing::info!("no longer accepting connections; finishing in-flight requests");
            }
        }
        // Every listener closes at once and shares the one shutdown_timeout.
        let envoy_stopped = async {
            if let Some(envoy) = self.envoy_rls {
                let _ = envoy.stop.send(());
                match tokio::time::timeout(self.shutdown_timeout, envoy.server).await {
                    Ok(Ok(Err(error))) => tracing::error!(%error, "the Envoy gRPC server failed"),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!("Envoy gRPC calls still running after shutdown_timeout")
                    }
                }
            }
        };
        futures_util::future::join(
            futures_util::future::join_all(handles.iter().map(|handle| handle.stop(true))),
            envoy_stopped,
        )
        .await;
        while let Some(finished) = servers.join_next().await {
            let finished = flatten(finished);
            if result.is_ok() {
                result = finished;
            }
        }
        for task in self.tasks {
            task.abort();
        }
        tracing::info!("stopped");
        result
    }
}

fn flatten(finished: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    finished
        .map_err(std::io::Error::other)
        .and_then(|result| result)
}

fn bind(address: &str) -> Result<(TcpListener, SocketAddr), StartupError> {
    let failed = |source| StartupError::Bind {
        address: address.to_owned(),
        source,
    };
    let listener = TcpListener::bind(address).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// What every listener's server shares.
struct Serving<'a> {
    state: &'a web::Data<HttpState<Arc<AnyStore>>>,
    draining: &'a Arc<AtomicBool>,
    traced: bool,
    /// `tracing.sample_ratio`: the share of requests without a `traceparent` traced.
    sample_ratio: f64,
    settings: &'a ServerSettings,
}

impl Serving<'_> {
    /// An HTTP server on `listener` serving the routes of `routes`.
    fn serve(
        &self,
        listener: TcpListener,
        address: &str,
        routes: Listener,
        workers: Option<usize>,
    ) -> Result<Server, StartupError> {
        let state = self.state.clone();
        let draining = Arc::clone(self.draining);
        let traced = self.traced;
        let sample_ratio = self.sample_ratio;
        let mut server = HttpServer::new(move || {
            // Runs once on each worker thread as it starts. A PING through this
            // worker's own Redis pool opens its connections now, so the first
            // checks it serves find one instead of opening it within
            // redis.connect_timeout (readiness, which used to do this on the
            // worker it ran on, now reads background probes).
            if routes != Listener::Admin {
                let state = state.clone();
                actix_web::rt::spawn(async move {
                    let _ = state.limiter.store().health().await;
                });
            }
            let draining = Arc::clone(&draining);
            App::new()
                .wrap_fn(move |request, service| {
                    http::close_connections_while_draining(&draining, request, service)
                })
                .wrap(Condition::new(traced, SampledTracing { sample_ratio }))
                .app_data(state.clone())
                .configure(|config| http::routes::<Arc<AnyStore>>(routes, config))
        })
        // Signals are ours (see `run_until`): actix would stop accepting at
        // once, before load balancers have noticed the replica is leaving.
        .disable_signals()
        // Longer than any proxy keeps an idle connection to us (the shipped
        // nginx: 30 s), so the proxy closes idle connections, never we: a
        // check the proxy writes as we close would fail, not be retried.
        .keep_alive(self.settings.keep_alive)
        .shutdown_timeout(
            // actix counts whole seconds: round up so "2500ms" is not cut to 2 s.
            self.settings.shutdown_timeout.as_secs_f64().ceil().max(1.0) as u64,
        );
        if let Some(workers) = workers {
            server = server.workers(workers);
        }
        Ok(server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                address: address.to_owned(),
                source,
            })?
            .run())
    }
}

/// The store's readiness until its first probe answers: the embedded store
/// is always ready; Redis is not until a probe says so.
fn unprobed_store(store: &AnyStore) -> StoreHealth {
    match store {
        AnyStore::Memory(_) => StoreHealth {
            store: store.kind(),
            ok: true,
            dependencies: Vec::new(),
            scripts: Vec::new(),
        },
        AnyStore::Redis(redis) => StoreHealth {
            store: store.kind(),
            ok: false,
            dependencies: vec![unprobed("redis")],
            scripts: redis.script_hashes(),
        },
        AnyStore::Cluster(_) => StoreHealth {
            store: store.kind(),
            ok: false,
            dependencies: vec![unprobed("redis")],
            scripts: Vec::new(),
        },
    }
}

fn unprobed(name: &'static str) -> DependencyHealth {
    DependencyHealth {
        name,
        ok: false,
        latency_ms: None,
        error: Some("not probed yet".to_owned()),
        pool: None,
        topology: None,
    }
}

/// SIGTERM (what orchestrators send) and SIGINT (Ctrl-C), listened for from
/// the moment the application is built: a signal sent as soon as the replica
/// says it is listening must stop it gracefully, not kill it by default action.
struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(terminate), Ok(interrupt)) => Some((terminate, interrupt)),
                _ => {
                    tracing::error!("cannot listen for stop signals; stopping only on Ctrl-C");
                    None
                }
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Completes at the next stop signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((terminate, interrupt)) = &mut self.streams {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
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
