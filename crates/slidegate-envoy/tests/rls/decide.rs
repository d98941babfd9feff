//! What Envoy is answered: codes, current limits, remaining, resets, per descriptor and overall.

use std::sync::Arc;
use std::time::Duration;

use slidegate_core::testing::{Fault, ScriptedStore};
use slidegate_core::{BreakerOptions, Failover, FailoverOptions, FailureMode, Limiter, unobserved};

use crate::helpers::{OK, OVER_LIMIT, descriptor, request, spawn, spawn_on, spawn_with, with_hits};

pub const RULES: &str = r#"
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: { unit: second, requests_per_unit: 5 }
      - key: subkey1
        value: subvalue1
        rate_limit: { unit: second, requests_per_unit: 10 }
  - key: key2
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: key2
    value: value2
    rate_limit: { unit: minute, requests_per_unit: 30 }
  - key: key3
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: key6
    rate_limit: { unlimited: true }
  - key: path
    value: /api/*
    rate_limit: { name: api, unit: minute, requests_per_unit: 2 }
  - key: shadow
    shadow_mode: true
    rate_limit: { name: shadowed, unit: minute, requests_per_unit: 1 }
  - key: per_user
    rate_limit: { name: per_user, unit: minute, requests_per_unit: 1 }
  - key: vip_user
    rate_limit:
      name: vip
      unit: minute
      requests_per_unit: 100
      replaces: [ { name: per_user } ]
  - key: cost
    rate_limit: { unit: minute, requests_per_unit: 10, algorithm: gcra }
  - key: limit_a
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: limit_b
    rate_limit: { unit: minute, requests_per_unit: 3, algorithm: sliding_window }
"#;

#[tokio::test]
async fn an_unknown_domain_or_descriptor_is_ok_without_a_current_limit() {
    let rls = spawn(RULES).await;
    for request in [
        request("other-domain", vec![descriptor(&[("key2", "x")])]),
        request("test-domain", vec![descriptor(&[("nothing", "x")])]),
        // Depth must match: a rule one level up is no match.
        request(
            "test-domain",
            vec![descriptor(&[("key2", "x"), ("deeper", "y")])],
        ),
        request("test-domain", vec![descriptor(&[("key1", "value1")])]),
    ] {
        let response = rls.ok(request).await;
        assert_eq!(response.overall_code, OK);
        assert_eq!(response.statuses.len(), 1);
        assert_eq!(response.statuses[0].code, OK);
        assert!(response.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn key2_at_20_per_minute_is_over_from_the_21st_hit() {
    let rls = spawn(RULES).await;
    for hit in 1..=20u32 {
        let response = rls
            .ok(request(
                "test-domain",
                vec![descriptor(&[("key2", "alice")])],
            ))
            .await;
        assert_eq!(response.overall_code, OK, "hit {hit}");
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, 20 - hit);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (20, 2 /* MINUTE */));
    }
    let response = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key2", "alice")])],
        ))
        .await;
    assert_eq!(response.overall_code, OVER_LIMIT);
    assert_eq!(response.statuses[0].code, OVER_LIMIT);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    // Another value is another counter; the exact value has its own limit.
    let bob = rls
        .ok(request("test-domain", vec![descriptor(&[("key2", "bob")])]))
        .await;
    assert_eq!(bob.overall_code, OK);
    let exact = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key2", "value2")])],
        ))
        .await;
    assert_eq!(
        exact.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        30
    );
}

#[tokio::test]
async fn one_descriptor_over_makes_the_request_over_and_statuses_stay_in_order() {
    let rls = spawn(RULES).await;
    let both = || {
        request(
            "test-domain",
            vec![
                descriptor(&[("key2", "alice")]),
                descriptor(&[("key3", "alice")]),
                descriptor(&[("unmatched", "x")]),
            ],
        )
    };
    let first = rls.ok(both()).await;
    assert_eq!(first.overall_code, OK);
    assert_eq!(first.statuses.len(), 3);
    let second = rls.ok(both()).await;
    assert_eq!(second.overall_code, OVER_LIMIT);
    let codes: Vec<i32> = second.statuses.iter().map(|status| status.code).collect();
    assert_eq!(codes, [OK, OVER_LIMIT, OK]);
    // Refused: key2 was not counted, and says what it holds without it.
    assert_eq!(second.statuses[0].limit_remaining, 19);
    assert_eq!(
        second.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        20
    );
    assert_eq!(
        second.statuses[1]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
    assert!(second.statuses[2].current_limit.is_none());
}

#[tokio::test]
async fn a_refused_request_consumes_no_descriptor_all_or_nothing() {
    let rls = spawn(RULES).await;
    let both = || {
        request(
            "test-domain",
            vec![
                descriptor(&[("limit_a", "alice")]),
                descriptor(&[("limit_b", "alice")]),
            ],
        )
    };
    let mut admitted = 0;
    for call in 1..=10 {
        let response = rls.ok(both()).await;
        if response.overall_code == OK {
            admitted += 1;
            continue;
        }
        let codes: Vec<i32> = response.statuses.iter().map(|status| status.code).collect();
        assert_eq!(codes, [OK, OVER_LIMIT], "call {call}");
        assert_eq!(response.statuses[0].limit_remaining, 7, "call {call}");
    }
    assert_eq!(admitted, 3);
    // Limit A counted exactly the 3 admitted requests: this one is its 4th.
    let alone = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("limit_a", "alice")])],
        ))
        .await;
    assert_eq!(alone.statuses[0].limit_remaining, 6);

    // A cost above a rule's whole limit refuses before anything is counted.
    let mut huge = request(
        "test-domain",
        vec![
            descriptor(&[("limit_a", "bob")]),
            with_hits(descriptor(&[("limit_b", "bob")]), 4),
        ],
    );
    huge.hits_addend = 1;
    let refused = rls.ok(huge).await;
    assert_eq!(refused.overall_code, OVER_LIMIT);
    assert_eq!(
        (
            refused.statuses[0].code,
            refused.statuses[0].limit_remaining
        ),
        (OK, 10)
    );
    assert_eq!(refused.statuses[1].code, OVER_LIMIT);
}

#[tokio::test]
async fn duration_until_reset_counts_down_on_the_clock() {
    let rls = spawn(RULES).await;
    let call = || request("test-domain", vec![descriptor(&[("key3", "alice")])]);
    let reset = |response: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
        let duration = response.statuses[0].duration_until_reset.unwrap();
        Duration::new(duration.seconds as u64, duration.nanos as u32)
    };
    let first = reset(&rls.ok(call()).await);
    assert_eq!(first, Duration::from_secs(3600));
    rls.clock.advance(Duration::from_secs(600));
    let over = rls.ok(call()).await;
    assert_eq!(over.overall_code, OVER_LIMIT);
    assert_eq!(reset(&over), Duration::from_secs(3000));
    rls.clock.advance(Duration::from_secs(3000));
    assert_eq!(rls.ok(call()).await.overall_code, OK);
}

#[tokio::test]
async fn nested_descriptors_take_the_most_specific_rule() {
    let rls = spawn(RULES).await;
    let nested = |value: &str| {
        request(
            "test-domain",
            vec![descriptor(&[("key1", "value1"), ("subkey1", value)])],
        )
    };
    let exact = rls.ok(nested("subvalue1")).await;
    assert_eq!(
        exact.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        10
    );
    let any = rls.ok(nested("other")).await;
    assert_eq!(
        any.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        5
    );
    for _ in 1..5 {
        rls.ok(nested("other")).await;
    }
    assert_eq!(rls.ok(nested("other")).await.overall_code, OVER_LIMIT);
    // Per value: `other` is over, `another` is not.
    assert_eq!(rls.ok(nested("another")).await.overall_code, OK);
}

#[tokio::test]
async fn a_value_wildcard_counts_each_value_apart() {
    let rls = spawn(RULES).await;
    let path = |value: &str| request("test-domain", vec![descriptor(&[("path", value)])]);
    let response = rls.ok(path("/api/users")).await;
    let limit = response.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((limit.name.as_str(), limit.requests_per_unit), ("api", 2));
    rls.ok(path("/api/users")).await;
    assert_eq!(rls.ok(path("/api/users")).await.overall_code, OVER_LIMIT);
    assert_eq!(rls.ok(path("/api/orders")).await.overall_code, OK);
    assert!(
        rls.ok(path("/static/x")).await.statuses[0]
            .current_limit
            .is_none()
    );
}

#[tokio::test]
async fn replaces_drops_the_replaced_limit_from_the_request() {
    let rls = spawn(RULES).await;
    let user = || descriptor(&[("per_user", "alice")]);
    let vip = || descriptor(&[("vip_user", "alice")]);
    for _ in 0..3 {
        let response = rls.ok(request("test-domain", vec![user(), vip()])).await;
        assert_eq!(response.overall_code, OK);
        assert!(
            response.statuses[0].current_limit.is_none(),
            "per_user is replaced"
        );
        assert_eq!(
            response.statuses[1].current_limit.as_ref().unwrap().name,
            "vip"
        );
    }
    // Alone, per_user applies (and was never counted above).
    assert_eq!(
        rls.ok(request("test-domain", vec![user()]))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        rls.ok(request("test-domain", vec![user()]))
            .await
            .overall_code,
        OVER_LIMIT
    );
}

#[tokio::test]
async fn unlimited_answers_ok_and_counts_nothing() {
    let rls = spawn(RULES).await;
    for _ in 0..50 {
        let response = rls
            .ok(request("test-domain", vec![descriptor(&[("key6", "x")])]))
            .await;
        assert_eq!(response.overall_code, OK);
        assert_eq!(response.statuses[0].limit_remaining, u32::MAX);
        assert!(response.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn shadow_mode_counts_but_never_refuses() {
    let rls = spawn_with(RULES, true).await;
    let shadow = || request("test-domain", vec![descriptor(&[("shadow", "alice")])]);
    assert_eq!(rls.ok(shadow()).await.statuses[0].limit_remaining, 0);
    let over = rls.ok(shadow()).await;
    assert_eq!(over.overall_code, OK);
    assert_eq!(over.statuses[0].code, OK);
    assert_eq!(
        over.statuses[0].current_limit.as_ref().unwrap().name,
        "shadowed"
    );
    let header = over
        .response_headers_to_add
        .iter()
        .find(|header| header.key == "slidegate-shadow-decision")
        .expect("the shadow verdict is reported");
    assert_eq!(header.value, "denied");
}

#[tokio::test]
async fn hits_addend_is_the_cost_per_request_or_per_descriptor() {
    let rls = spawn(RULES).await;
    let cost = || descriptor(&[("cost", "alice")]);
    let mut by_request = request("test-domain", vec![cost()]);
    by_request.hits_addend = 4;
    assert_eq!(rls.ok(by_request).await.statuses[0].limit_remaining, 6);
    // The descriptor's own hits_addend wins over the request's.
    let mut both = request("test-domain", vec![with_hits(cost(), 5)]);
    both.hits_addend = 9;
    assert_eq!(rls.ok(both).await.statuses[0].limit_remaining, 1);
    // 0 on the descriptor looks without counting, as envoyproxy/ratelimit.
    let peek = rls
        .ok(request("test-domain", vec![with_hits(cost(), 0)]))
        .await;
    assert_eq!(
        (peek.overall_code, peek.statuses[0].limit_remaining),
        (OK, 1)
    );
    // 0 on the request means 1.
    assert_eq!(
        rls.ok(request("test-domain", vec![cost()])).await.statuses[0].limit_remaining,
        0
    );
    // More than is left: over, and nothing consumed.
    let over = rls
        .ok(request(
            "test-domain",
            vec![with_hits(descriptor(&[("cost", "bob")]), 11)],
        ))
        .await;
    assert_eq!(over.overall_code, OVER_LIMIT);
    assert_eq!(over.statuses[0].limit_remaining, 10);
}

#[tokio::test]
async fn response_headers_are_the_http_apis_when_enabled() {
    let rls = spawn_with(RULES, true).await;
    let response = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key3", "alice")])],
        ))
        .await;
    let header =
        |name: &str,
         response: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
            response
                .response_headers_to_add
                .iter()
                .find(|header| header.key == name)
                .map(|header| header.value.clone())
        };
    assert_eq!(header("x-ratelimit-limit", &response).as_deref(), Some("1"));
    assert_eq!(
        header("x-ratelimit-remaining", &response).as_deref(),
        Some("0")
    );
    assert_eq!(
        header("x-ratelimit-reset", &response).as_deref(),
        Some("3600")
    );
    assert_eq!(
        header("ratelimit-policy", &response).as_deref(),
        Some("\"rls.test-domain.key3\";q=1;w=3600")
    );
    assert_eq!(header("retry-after", &response), None);
    let over = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key3", "alice")])],
        ))
        .await;
    assert_eq!(header("retry-after", &over).as_deref(), Some("3600"));

    let quiet = spawn(RULES).await;
    let response = quiet
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key3", "alice")])],
        ))
        .await;
    assert!(response.response_headers_to_add.is_empty());
}

fn failover_limiter(
    mode: FailureMode,
    clock: &slidegate_core::FakeClock,
) -> Limiter<ScriptedStore> {
    let options = FailoverOptions {
        default_mode: mode,
        breaker: BreakerOptions::default(),
        deny_cache_max_keys: None,
        local_max_keys: 1000,
        heartbeat_interval: Duration::from_secs(1),
    };
    Limiter::awaiting_bundle(ScriptedStore::new(Arc::new(clock.clone())), unobserved())
        .with_failover(Failover::new(options, Arc::new(clock.clone())))
}

#[tokio::test]
async fn a_closed_failure_is_unavailable_and_open_admits_marked() {
    let clock = slidegate_core::FakeClock::default();
    let closed = spawn_on(
        RULES,
        true,
        clock.clone(),
        failover_limiter(FailureMode::Closed, &clock),
    )
    .await;
    let call = || request("test-domain", vec![descriptor(&[("key2", "alice")])]);
    assert_eq!(closed.ok(call()).await.overall_code, OK);
    closed
        .engine
        .limiter()
        .store()
        .fail(Some(Fault::Unavailable));
    let error = closed.call(call()).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    // No rule matched: nothing to ask the store, still OK.
    let unmatched = closed
        .ok(request("test-domain", vec![descriptor(&[("none", "x")])]))
        .await;
    assert_eq!(unmatched.overall_code, OK);

    let clock = slidegate_core::FakeClock::default();
    let open = spawn_on(
        RULES,
        true,
        clock.clone(),
        failover_limiter(FailureMode::Open, &clock),
    )
    .await;
    open.engine.limiter().store().fail(Some(Fault::Unavailable));
    let response = open.ok(call()).await;
    assert_eq!(response.overall_code, OK);
    assert!(
        response
            .response_headers_to_add
            .iter()
            .any(|header| header.key == "slidegate-fallback" && header.value == "open"),
        "{:?}",
        response.response_headers_to_add
    );
}
