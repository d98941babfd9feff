//! `GET /health/live` and `GET /health/ready`: whether to restart a replica, and whether to send it traffic.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::HttpState;
use crate::limiter::{DependencyHealth, Store};

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
    Dependency(&'a DependencyHealth),
    Limiter(LimiterCheck),
}

#[derive(Serialize)]
struct LimiterCheck {
    ok: bool,
    store: &'static str,
    /// Script SHA1 per algorithm (null for the embedded store, which runs no scripts).
    algorithms: BTreeMap<&'static str, Option<String>>,
    policies: usize,
}

/// 200 `{"ready": true, ...}` when the replica can decide checks: its store
/// answers and it has at least one policy, and it is not draining. 503 with
/// `"ready": false` otherwise, naming what is wrong in `checks` (or `"draining": true`).
pub async fn ready<S: Store>(state: web::Data<HttpState<S>>) -> HttpResponse {
    let health = state.limiter.health().await;
    let policies = state.limiter.policies().len();
    let mut algorithms: BTreeMap<&'static str, Option<String>> = crate::limiter::Algorithm::ALL
        .into_iter()
        .map(|algorithm| (algorithm.as_str(), None))
        .collect();
    for (algorithm, sha) in &health.scripts {
        algorithms.insert(algorithm.as_str(), Some(sha.clone()));
    }
    let limiter_ok = health.ok && policies > 0;
    let mut checks: BTreeMap<&'static str, Check<'_>> = health
        .dependencies
        .iter()
        .map(|dependency| (dependency.name, Check::Dependency(dependency)))
        .collect();
    checks.insert(
        "limiter",
        Check::Limiter(LimiterCheck {
            ok: limiter_ok,
            store: health.store,
            algorithms,
            policies,
        }),
    );
    let draining = state.draining.load(Ordering::SeqCst);
    let ready =
        !draining && limiter_ok && health.dependencies.iter().all(|dependency| dependency.ok);
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
