//! `GET /health/live` and `GET /health/ready`: whether to restart a replica, and whether to send it traffic.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::HttpState;
use crate::limiter::{DependencyHealth, FailoverHealth, Store};

/// 200 while the process can answer at all; a load balancer should restart it otherwise.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    checks: BTreeMap<&'static str, Check<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Check<'a> {
    Dependency(&'a DependencyHealth),
    Limiter(LimiterCheck<'a>),
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
    /// Failure mode, breaker, live replicas, deny cache and counters (shared store only).
    #[serde(flatten)]
    failover: Option<&'a FailoverHealth>,
}

/// 200 `{"ready": true, ...}` when the replica answers every check as its
/// configuration says (see [`crate::limiter::Limiter::health`] for exactly
/// when); 503 with `"ready": false` otherwise, naming what is wrong in `checks`.
pub async fn ready<S: Store>(state: web::Data<HttpState<S>>) -> HttpResponse {
    let health = state.limiter.health().await;
    let mut algorithms: BTreeMap<&'static str, Option<String>> = crate::limiter::Algorithm::ALL
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
        .map(|dependency| (dependency.name, Check::Dependency(dependency)))
        .collect();
    checks.insert(
        "limiter",
        Check::Limiter(LimiterCheck {
            ok: health.ready,
            degraded: health.degraded,
            store: health.store.store,
            algorithms,
            policies: health.policies,
            failover: health.failover.as_ref(),
        }),
    );
    let body = Readiness {
        ready: health.ready,
        checks,
    };
    if health.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
