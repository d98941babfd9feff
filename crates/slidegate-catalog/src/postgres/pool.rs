//! Connecting to Postgres: the pool, its health for readiness and its counters for metrics.

use super::*;

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
            applied: std::sync::Mutex::new(CatalogSync::default()),
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
    pub(super) fn counted<T>(&self, result: Result<T, CatalogError>) -> Result<T, CatalogError> {
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

    pub(super) async fn connection(&self) -> Result<PooledConnection<'_, Manager>, CatalogError> {
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
            topology: None,
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
}
