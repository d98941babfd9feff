//! Keeping a replica's copy current: LISTEN/NOTIFY, resyncs, and reloads after reconnecting.

use super::*;

impl Catalog {
    /// Puts `update` in force through `put_in_force` (the limiter's
    /// `replace`) unless a newer version already is: two loads that finish
    /// out of order (a resync and an admin write's reload) never take the
    /// version back. Records what is in force; `false` when it was older.
    pub fn apply(&self, update: CatalogUpdate, put_in_force: impl FnOnce(Bundle)) -> bool {
        // A poisoned lock guards plain numbers, rewritten whole below.
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = applied.version;
        if previous.is_some_and(|loaded| loaded > update.version) {
            return false;
        }
        let policies = update.bundle.policies.len();
        let api_keys = update.bundle.tenants.len();
        put_in_force(update.bundle);
        *applied = CatalogSync {
            version: Some(update.version),
            synced_at: Some(SystemTime::now()),
            policies,
            api_keys,
        };
        // Once per version: the same catalog reloaded (every resync interval,
        // and after an admin write both by the writer and by its notification) is not news.
        if previous != Some(update.version) {
            tracing::info!(
                version = update.version,
                previous_version = previous,
                policies,
                api_keys,
                "catalog applied"
            );
        }
        true
    }

    /// What this replica has put in force from the catalog.
    pub fn synced(&self) -> CatalogSync {
        *self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `apply` fed with the current catalog, in version order (see
    /// [`Catalog::apply`]), until the process stops:
    /// LISTEN for changes, reload on each (a burst of notifications is one
    /// reload), reload every `resync_interval`, and after any reconnection,
    /// which catches whatever was missed while disconnected.
    pub async fn run_sync(self: Arc<Self>, apply: impl Fn(Bundle) + Send + Sync + 'static) {
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
    async fn resync(&self, apply: &(impl Fn(Bundle) + Send + Sync)) -> bool {
        match self.load().await {
            Ok(update) => {
                tracing::debug!(version = update.version, "catalog loaded");
                self.apply(update, apply);
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
