//! `GET /health/live` and `GET /health/ready`: whether to restart a replica, and whether to send it traffic.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::HttpState;
use slidegate_catalog::CatalogSync;
use slidegate_core::{DependencyHealth, FailoverHealth, PoolHealth, Store};

/// 200 while the process can answer at all; a load balancer should restart it otherwise.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    /// True from SIGTERM/SIGINT on: the replica still answers, but wants no new traffic.
    draining: bool,
    checks: BTreeMap<&'static str, Check<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Check<'a> {
    Dependency(DependencyCheck<'a>),
    Limiter(LimiterCheck<'a>),
}

#[derive(Serialize)]
struct DependencyCheck<'a> {
    #[serde(flatten)]
    health: &'a DependencyHealth,
    /// How long ago the background probe answered (or gave up waiting).
    checked_ms_ago: u64,
}

/// Where a replica's policies come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum PolicySource {
    /// `[[policies]]` in the configuration (or the demo policy), fixed at start-up.
    Config,
    /// The Postgres catalog, replaced whenever it changes.
    Database,
}

#[derive(Serialize)]
struct LimiterCheck<'a> {
    /// Same as the top-level `ready`: every check gets the answer its configuration asks for.
    ok: bool,
    /// The shared store cannot decide now; checks are answered by their failure modes.
    degraded: bool,
    store: &'static str,
    /// Script SHA1 per algorithm (null for the embedded store, which runs no scripts).
    algorithms: BTreeMap<&'static str, Option<String>>,
    policies: usize,
    /// `config` or `database`.
    source: PolicySource,
    /// Active API keys loaded (database only).
    api_keys: usize,
    /// The catalog version loaded (database only; null before the first load).
    policy_version: Option<i64>,
    /// When the catalog was last loaded, RFC 3339 (database only).
    last_sync: Option<String>,
    /// Failure mode, breaker, live replicas, deny cache and counters (shared store only).
    #[serde(flatten)]
    failover: Option<&'a FailoverHealth>,
}

/// 200 `{"ready": true, ...}` when the replica answers every check as its
/// configuration says (see [`slidegate_core::Limiter::health`] for exactly
/// when) and is not draining; 503 with `"ready": false` otherwise, naming what
/// is wrong in `checks` (or `"draining": true`).
///
/// It waits on nothing: Redis and Postgres are judged by the last answers of
/// their background probes ([`slidegate_core::probe`]), each with its age; the
/// limiter's own state (policies, breaker, draining) is read now.
pub async fn ready<S: Store>(state: web::Data<HttpState<S>>) -> HttpResponse {
    let store = state.probes.store.read();
    let postgres = state.probes.postgres.as_ref().map(|probe| probe.read());
    let mut health = state.limiter.health_given(store.answer);
    let (source, sync) = match &state.catalog {
        Some(catalog) => (PolicySource::Database, catalog.synced()),
        None => (PolicySource::Config, CatalogSync::default()),
    };
    // Pools are read now, not when the probe ran: during an outage they show
    // the connections being lost and reopened.
    let mut pools = state.limiter.store().pools();
    if let Some(catalog) = &state.catalog {
        pools.push(catalog.pool_stats());
    }
    let current_pool = |dependency: &mut DependencyHealth| {
        if let Some(pool) = pools.iter().find(|pool| pool.name == dependency.name) {
            dependency.pool = Some(PoolHealth {
                max_size: pool.max_size,
                connections: pool.connections,
                idle: pool.idle,
            });
        }
    };
    health.store.dependencies.iter_mut().for_each(current_pool);
    let postgres = postgres.map(|mut reading| {
        current_pool(&mut reading.answer);
        reading
    });
    let mut algorithms: BTreeMap<&'static str, Option<String>> = slidegate_core::Algorithm::ALL
        .into_iter()
        .map(|algorithm| (algorithm.as_str(), None))
        .collect();
    for (algorithm, sha) in &health.store.scripts {
        algorithms.insert(algorithm.as_str(), Some(sha.clone()));
    }
    let mut checks: BTreeMap<&'static str, Check<'_>> = health
        .store
        .dependencies
        .iter()
        .map(|dependency| {
            let check = DependencyCheck {
                health: dependency,
                checked_ms_ago: millis(store.age),
            };
            (dependency.name, Check::Dependency(check))
        })
        .collect();
    if let Some(postgres) = &postgres {
        let check = DependencyCheck {
            health: &postgres.answer,
            checked_ms_ago: millis(postgres.age),
        };
        checks.insert(postgres.answer.name, Check::Dependency(check));
    }
    checks.insert(
        "limiter",
        Check::Limiter(LimiterCheck {
            ok: health.ready,
            degraded: health.degraded,
            store: health.store.store,
            algorithms,
            policies: health.policies,
            source,
            api_keys: sync.api_keys,
            policy_version: sync.version,
            last_sync: sync
                .synced_at
                .map(|at| humantime::format_rfc3339_millis(at).to_string()),
            failover: health.failover.as_ref(),
        }),
    );
    // Postgres is left out on purpose: once the catalog is loaded, checks are
    // decided from the cached copy, so a replica stays routable while
    // Postgres is away (the `postgres` entry says so).
    let draining = state.draining.load(Ordering::SeqCst);
    let ready = !draining && health.ready;
    let body = Readiness {
        ready,
        draining,
        checks,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

fn millis(age: std::time::Duration) -> u64 {
    u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
}
