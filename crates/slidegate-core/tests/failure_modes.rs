//! The failure modes (closed, open, local) and the breaker, decided by the core in front of a scripted store: no redis-server, a fake clock.
//!
//! The same behaviour is tested end to end against a killed `redis-server`
//! in the server's chaos tests; these pin down the core's part exactly.

use std::sync::Arc;
use std::time::Duration;

use slidegate_core::testing::{Fault, ScriptedStore};
use slidegate_core::{
    Algorithm, BreakerOptions, BreakerState, CheckError, Failover, FailoverOptions, FailureMode,
    FakeClock, Limiter, Policy, PolicyName, PolicySet, StoreError, Window, unobserved,
};

const LIMIT: u64 = 9;

fn policy(name: &str, mode: FailureMode) -> Policy {
    Policy::new(
        PolicyName::parse(name).unwrap(),
        Algorithm::SlidingLog,
        LIMIT,
        Window::parse("1m").unwrap(),
        1,
    )
    .unwrap()
    .with_failure_mode(mode)
}

fn breaker() -> BreakerOptions {
    BreakerOptions {
        failures: 3,
        probes: 2,
        ..BreakerOptions::default()
    }
}

/// A limiter with one policy per failure mode, in front of a scripted store.
fn limiter(modes: &[FailureMode]) -> (Limiter<ScriptedStore>, FakeClock) {
    let clock = FakeClock::default();
    let policies = modes
        .iter()
        .map(|mode| policy(mode.as_str(), *mode))
        .collect::<Vec<_>>();
    let options = FailoverOptions {
        default_mode: FailureMode::Closed,
        breaker: breaker(),
        deny_cache_max_keys: Some(100),
        local_max_keys: 1000,
        heartbeat_interval: Duration::from_secs(1),
    };
    let limiter = Limiter::new(
        PolicySet::new(policies).unwrap(),
        ScriptedStore::new(Arc::new(clock.clone())),
        unobserved(),
    )
    .with_failover(Failover::new(options, Arc::new(clock.clone())));
    (limiter, clock)
}

fn breaker_state(limiter: &Limiter<ScriptedStore>) -> BreakerState {
    limiter.failover().unwrap().breaker_state()
}

#[tokio::test]
async fn closed_answers_the_store_error_and_the_open_breaker_keeps_checks_away_until_probes_succeed()
 {
    let (limiter, clock) = limiter(&[FailureMode::Closed]);
    assert!(
        limiter
            .check("closed", "k", None)
            .await
            .unwrap()
            .decision
            .allowed
    );

    limiter.store().fail(Some(Fault::Unavailable));
    for _ in 0..breaker().failures {
        let error = limiter.check("closed", "k", None).await.unwrap_err();
        assert!(
            matches!(error, CheckError::Store(StoreError::Unavailable(_))),
            "{error:?}"
        );
    }
    assert_eq!(breaker_state(&limiter), BreakerState::Open);
    let asked = limiter.store().checks();
    let error = limiter.check("closed", "k", None).await.unwrap_err();
    assert!(
        matches!(error, CheckError::Store(StoreError::CircuitOpen)),
        "{error:?}"
    );
    assert_eq!(
        limiter.store().checks(),
        asked,
        "an open breaker does not ask the store"
    );
    let health = limiter.health().await;
    assert!(!health.ready, "a closed policy answers 503: not ready");
    assert!(health.degraded);

    // The store is back, but the breaker waits out its cool-down…
    limiter.store().fail(None);
    assert!(limiter.check("closed", "k", None).await.is_err());
    assert_eq!(limiter.store().checks(), asked);
    // …then lets probes through; enough successes close it.
    clock.advance(breaker().cool_down);
    for probe in 0..breaker().probes {
        let checked = limiter.check("closed", "k", None).await.unwrap();
        assert!(checked.decision.allowed, "probe {probe}");
        assert_eq!(checked.decision.fallback, None, "decided by the store");
    }
    assert_eq!(breaker_state(&limiter), BreakerState::Closed);
    assert!(limiter.health().await.ready);
}

#[tokio::test]
async fn open_admits_every_check_marked_and_counts_nothing_in_the_store() {
    let (limiter, _clock) = limiter(&[FailureMode::Open]);
    limiter.store().fail(Some(Fault::Timeout));
    for check in 0..3 * LIMIT {
        let checked = limiter.check("open", "k", None).await.unwrap();
        assert!(checked.decision.allowed, "check {check}");
        assert_eq!(checked.decision.fallback, Some(FailureMode::Open));
    }
    assert_eq!(breaker_state(&limiter), BreakerState::Open);
    assert!(
        limiter.health().await.ready,
        "no policy fails closed: every check gets the answer its configuration asks for"
    );
}

#[tokio::test]
async fn local_enforces_this_replicas_share_of_the_limit_by_the_last_live_count() {
    let (limiter, _clock) = limiter(&[FailureMode::Local]);
    limiter.store().set_live_replicas(3);
    limiter.heartbeat().await;
    assert_eq!(limiter.failover().unwrap().live_replicas(), 3);

    limiter.store().fail(Some(Fault::Unavailable));
    let mut admitted = 0;
    for _ in 0..LIMIT {
        let checked = limiter.check("local", "k", None).await.unwrap();
        assert_eq!(checked.decision.fallback, Some(FailureMode::Local));
        admitted += u64::from(checked.decision.allowed);
    }
    // floor(9 / 3) each: three replicas together admit at most the limit.
    assert_eq!(admitted, LIMIT / 3);
    // Another key has its own share.
    assert!(
        limiter
            .check("local", "other", None)
            .await
            .unwrap()
            .decision
            .allowed
    );
}

#[tokio::test]
async fn an_unreadable_reply_takes_the_failure_mode_but_never_opens_the_breaker() {
    let (limiter, _clock) = limiter(&[FailureMode::Open, FailureMode::Closed]);
    limiter.store().fail(Some(Fault::InvalidReply));
    for _ in 0..3 * breaker().failures {
        let open = limiter.check("open", "k", None).await.unwrap();
        assert_eq!(open.decision.fallback, Some(FailureMode::Open));
        let closed = limiter.check("closed", "k", None).await.unwrap_err();
        assert!(
            matches!(closed, CheckError::Store(StoreError::InvalidReply(_))),
            "{closed:?}"
        );
    }
    assert_eq!(
        breaker_state(&limiter),
        BreakerState::Closed,
        "one key's bad reply is not an outage of the store"
    );
}
