//! A store that tests script: it decides like the embedded store until told to fail, so the failure modes are tested without a redis-server.
//!
//! Built for the core's own tests and, with the `testing` feature, for any
//! crate's: a front end can test what its clients see when the shared store
//! is down (a 503, an `open` admission, a `local` decision) in a unit test.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{
    Check, Clock, DependencyHealth, LimiterKey, MemoryStore, Outcome, Policy, Store, StoreError,
    StoreHealth,
};

/// How the scripted store fails, until told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// As a refused or lost connection.
    Unavailable,
    /// As a command that outlived its timeout.
    Timeout,
    /// As a reply the limiter cannot read (a bug, never an outage).
    InvalidReply,
}

impl Fault {
    fn error(self) -> StoreError {
        match self {
            Fault::Unavailable => StoreError::Unavailable("scripted: connection refused".into()),
            Fault::Timeout => StoreError::Timeout {
                operation: "running the script",
                after: Duration::from_millis(50),
            },
            Fault::InvalidReply => StoreError::InvalidReply("scripted: garbage".into()),
        }
    }
}

/// A shared store stand-in: decides in memory on the test's clock, or fails
/// with the scripted [`Fault`]; counts the checks that reached it.
pub struct ScriptedStore {
    decides: MemoryStore,
    fault: Mutex<Option<Fault>>,
    checks: AtomicU64,
    live_replicas: AtomicU64,
}

impl ScriptedStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            decides: MemoryStore::new(clock),
            fault: Mutex::new(None),
            checks: AtomicU64::new(0),
            live_replicas: AtomicU64::new(1),
        }
    }

    /// From now on every call fails with `fault`; `None`: decides again.
    pub fn fail(&self, fault: Option<Fault>) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// What heartbeats answer: the replicas sharing this store.
    pub fn set_live_replicas(&self, replicas: u64) {
        self.live_replicas.store(replicas, Ordering::Relaxed);
    }

    /// Checks that reached the store (failed ones included).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    fn fault(&self) -> Option<Fault> {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for ScriptedStore {
    async fn check(
        &self,
        policy: &Policy,
        key: LimiterKey<'_>,
        cost: u64,
    ) -> Result<Outcome, StoreError> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        match self.fault() {
            Some(fault) => Err(fault.error()),
            None => self.decides.check(policy, key, cost).await,
        }
    }

    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Outcome>, StoreError> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        match self.fault() {
            Some(fault) => Err(fault.error()),
            None => self.decides.check_all(checks).await,
        }
    }

    async fn health(&self) -> StoreHealth {
        let fault = self.fault();
        StoreHealth {
            store: "scripted",
            ok: fault.is_none(),
            dependencies: vec![DependencyHealth {
                name: "scripted",
                ok: fault.is_none(),
                latency_ms: fault.is_none().then_some(0.1),
                error: fault.map(|fault| fault.error().to_string()),
                pool: None,
                topology: None,
            }],
            scripts: Vec::new(),
        }
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn heartbeat(&self, _replica: &str, _stale_after: Duration) -> Result<u64, StoreError> {
        match self.fault() {
            Some(fault) => Err(fault.error()),
            None => Ok(self.live_replicas.load(Ordering::Relaxed)),
        }
    }
}
