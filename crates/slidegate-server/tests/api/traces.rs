//! Traces, received by a real OTLP/HTTP receiver from the real binary: the span tree, the caller's trace, a stalled collector, log correlation.
//!
//! The tracer is global to a process, so each test runs `slidegate` as a
//! child process configured only through the environment, which also proves
//! that the standard `OTEL_*` variables work.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use tokio::sync::Notify;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::helpers::{ADMIN_TOKEN, Replica, TestDatabase, redis_url, unique_prefix, wait_until};
use crate::metrics::{parse_exposition, value};

/// A span as the collector received it, with ids in hex as Jaeger shows them.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    resource: HashMap<String, String>,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    status: i32,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Every request body, to search for what must never be exported.
    raw: Mutex<Vec<Vec<u8>>>,
    arrived: Notify,
}

/// An OTLP/HTTP collector on a free port that decodes `ExportTraceServiceRequest`.
struct OtlpReceiver {
    endpoint: String,
    received: web::Data<Received>,
    server: actix_web::dev::ServerHandle,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = web::Data::new(Received::default());
        let shared = received.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(export))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            endpoint,
            received,
            server: handle,
        }
    }

    /// Waits until the spans of `trace_id` include every name in `names`.
    async fn wait_for_trace(&self, trace_id: &str, names: &[&str]) -> Vec<ReceivedSpan> {
        let received = &self.received;
        wait_until(
            &format!("spans {names:?} of trace {trace_id}"),
            Duration::from_secs(20),
            &received.arrived,
            || {
                let spans: Vec<_> = received
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|span| span.trace_id == trace_id)
                    .cloned()
                    .collect();
                names
                    .iter()
                    .all(|name| spans.iter().any(|span| span.name == *name))
                    .then_some(spans)
            },
        )
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // Not awaited: stopping is requested and the runtime ends with the test.
        drop(self.server.stop(false));
    }
}

async fn export(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let request = ExportTraceServiceRequest::decode(body.as_ref())
        .expect("the body is an OTLP ExportTraceServiceRequest");
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    resource: resource.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    status: span.status.map_or(0, |status| status.code),
                });
            }
        }
    }
    received.raw.lock().unwrap().push(body.to_vec());
    received.spans.lock().unwrap().extend(spans);
    received.arrived.notify_one();
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), show(pair.value.as_ref())))
        .collect()
}

fn show(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Fresh W3C ids for a caller's trace: 32 and 16 hex digits, never all zero.
fn caller_ids() -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
    let parent = format!("{:016x}", (nanos as u64) | 1);
    (trace, parent)
}

const POLICY: &str = r#"
[[policies]]
name = "api"
algorithm = "sliding_log"
limit = 5
window = "1m"
"#;

/// A key that looks like personal data: it must not appear in any span.
const PERSONAL_KEY: &str = "jane.doe+4711@example.com";

fn tracing_env(receiver: &OtlpReceiver, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("SLIDEGATE__TRACING__BATCH_DELAY", "50ms".to_owned()),
    ]
}

/// `POST /v1/check` of `key` under policy `api`, sampled, as a child of
/// `caller_span` in `trace_id`; its status.
async fn traced_check(replica: &Replica, trace_id: &str, caller_span: &str, key: &str) -> u16 {
    replica
        .client
        .post(format!("{}/v1/check", replica.address))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&serde_json::json!({"policy": "api", "key": key}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn span<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|span| span.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_a_traceparent_is_exported_as_a_span_tree_inside_the_callers_trace() {
    let receiver = OtlpReceiver::start().await;
    let mut env = tracing_env(&receiver, "slidegate-under-test");
    env.push(("SLIDEGATE__REDIS__URL", redis_url()));
    env.push(("SLIDEGATE__LIMITER__KEY_PREFIX", unique_prefix()));
    let replica = Replica::spawn(POLICY, &env).await;

    // Probes and scrapes first, sampled by their caller: none is traced.
    let (probe_trace, probe_span) = caller_ids();
    for path in ["/health/ready", "/health/live", "/metrics"] {
        let response = replica
            .client
            .get(format!("{}{path}", replica.address))
            .header("traceparent", format!("00-{probe_trace}-{probe_span}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    let (trace_id, caller_span) = caller_ids();
    let status = traced_check(&replica, &trace_id, &caller_span, PERSONAL_KEY).await;
    assert_eq!(status, 200);

    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/check", "EVALSHA"])
        .await;
    let root = span(&spans, "POST /v1/check");
    let redis = span(&spans, "EVALSHA");
    // Spans are exported in the order they end: the probes' would have come first.
    let untraced: Vec<String> = receiver
        .received
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|span| {
            span.trace_id == probe_trace
                || span.name.contains("health")
                || span.name.contains("metrics")
        })
        .map(|span| span.name.clone())
        .collect();
    assert!(untraced.is_empty(), "probes were traced: {untraced:?}");

    // One tree, hanging from the caller's span.
    assert_eq!(root.parent_span_id, caller_span);
    assert_eq!(redis.parent_span_id, root.span_id);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(redis.kind, SpanKind::Client as i32);

    // OpenTelemetry HTTP field names on the root.
    assert_eq!(root.attributes["http.method"], "POST");
    assert_eq!(root.attributes["http.route"], "/v1/check");
    assert_eq!(root.attributes["http.status_code"], "200");
    assert_eq!(root.status, StatusCode::Ok as i32);

    // Two spans, no more: a single check has no span of its own (its
    // decision is on the root, and the Redis call is the client span), and
    // the root is this service's, not a middleware's with the client's
    // address, target and user agent.
    let in_trace: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert_eq!(in_trace.len(), 2, "{in_trace:?}");
    for never in [
        "http.target",
        "http.client_ip",
        "http.user_agent",
        "request_id",
    ] {
        assert!(
            !root.attributes.contains_key(never),
            "{never} on the root span"
        );
    }
    for (attribute, expected) in [
        ("slidegate.policy", "api"),
        ("slidegate.algorithm", "sliding_log"),
        ("slidegate.outcome", "allowed"),
        ("slidegate.remaining", "4"),
        ("slidegate.cost", "1"),
    ] {
        assert_eq!(root.attributes[attribute], expected, "{attribute}");
    }
    // Redis answered: no failure mode stood in, no store error.
    assert!(!root.attributes.contains_key("slidegate.fallback"));
    assert!(!root.attributes.contains_key("slidegate.store_error"));
    assert_eq!(redis.attributes["db.system"], "redis");
    assert_eq!(redis.attributes["db.operation.name"], "EVALSHA");

    assert_eq!(root.resource["service.name"], "slidegate-under-test");
    assert_eq!(root.resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert!(!root.resource["service.instance.id"].is_empty());

    // Neither the key nor the Redis key built from it left the process.
    let raw = receiver.received.raw.lock().unwrap().concat();
    let needle = PERSONAL_KEY.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|window| window == needle),
        "the limiter key was exported"
    );
}

/// A replica on the shared Redis with the Envoy listener on (domain `edge`:
/// `user` and `path` at 50 per minute), tracing to `receiver`, and a client
/// of its listener; the rules' directory lives as long as the last value.
async fn rls_replica(
    receiver: &OtlpReceiver,
    service: &str,
    extra_env: &[(&'static str, String)],
) -> (
    Replica,
    envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient<
        tonic::transport::Channel,
    >,
    tempfile::TempDir,
){
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("ratelimit.yaml");
    std::fs::write(
        &rules,
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: { unit: minute, requests_per_unit: 50 }\n  - key: path\n    rate_limit: { unit: minute, requests_per_unit: 50 }\n",
    )
    .unwrap();
    let mut env = tracing_env(receiver, service);
    env.push(("SLIDEGATE__REDIS__URL", redis_url()));
    env.push(("SLIDEGATE__LIMITER__KEY_PREFIX", unique_prefix()));
    env.push(("SLIDEGATE__ENVOY_RLS__BIND", "127.0.0.1:0".to_owned()));
    env.push(("SLIDEGATE__ENVOY_RLS__RULES", rules.display().to_string()));
    env.extend(extra_env.iter().cloned());
    let replica = Replica::spawn(POLICY, &env).await;
    let address = replica.envoy_rls_address.expect("the RLS listener is on");
    let client = envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    (replica, client, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_should_rate_limit_call_continues_the_callers_trace_down_to_redis() {
    let receiver = OtlpReceiver::start().await;
    let (_replica, mut client, _rules) = rls_replica(&receiver, "slidegate-under-test", &[]).await;

    let (trace_id, caller_span) = caller_ids();
    let descriptor = |key: &str| RateLimitDescriptor {
        entries: vec![Entry {
            key: key.to_owned(),
            value: PERSONAL_KEY.to_owned(),
        }],
        ..RateLimitDescriptor::default()
    };
    let mut call = tonic::Request::new(RateLimitRequest {
        domain: "edge".to_owned(),
        descriptors: vec![descriptor("user"), descriptor("path")],
        hits_addend: 0,
    });
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    client.should_rate_limit(call).await.expect("answered");

    let root_name = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let spans = receiver
        .wait_for_trace(&trace_id, &[root_name, "limiter.decide", "EVALSHA"])
        .await;
    let root = span(&spans, root_name);
    let deciding = span(&spans, "limiter.decide");
    let redis = span(&spans, "EVALSHA");
    // One tree from the caller's span; both descriptors in one store call.
    assert_eq!(root.parent_span_id, caller_span);
    assert_eq!(deciding.parent_span_id, root.span_id);
    assert_eq!(redis.parent_span_id, deciding.span_id);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(root.attributes["rpc.system"], "grpc");
    assert_eq!(root.attributes["rpc.method"], "ShouldRateLimit");
    assert_eq!(root.attributes["rpc.grpc.status_code"], "0");
    assert_eq!(root.attributes["slidegate.rls.domain"], "edge");
    assert_eq!(root.attributes["slidegate.outcome"], "ok");
    assert_eq!(root.status, StatusCode::Ok as i32);
    assert_eq!(deciding.attributes["slidegate.checks"], "2");

    let raw = receiver.received.raw.lock().unwrap().concat();
    let needle = PERSONAL_KEY.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|window| window == needle),
        "a descriptor value was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_sampled_builds_no_span_and_the_callers_decision_beats_the_ratio() {
    let receiver = OtlpReceiver::start().await;
    // Nothing without a traceparent is traced.
    let ratio = [("SLIDEGATE__TRACING__SAMPLE_RATIO", "0".to_owned())];
    let (replica, mut rls, _rules) = rls_replica(&receiver, "slidegate-sampling", &ratio).await;
    let call = |traceparent: Option<String>| {
        let mut call = tonic::Request::new(RateLimitRequest {
            domain: "edge".to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "user".to_owned(),
                    value: "u".to_owned(),
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 0,
        });
        if let Some(traceparent) = traceparent {
            call.metadata_mut()
                .insert("traceparent", traceparent.parse().unwrap());
        }
        call
    };
    let checks = std::sync::atomic::AtomicU32::new(0);
    let check = |traceparent: Option<String>| {
        // A key each: the policy admits 5 per minute.
        let key = format!(
            "k{}",
            checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut request = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "api", "key": key}));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.send()
    };

    // Not sampled: no traceparent at ratio 0, and a caller that declined (flags 00).
    let (declined, declined_span) = caller_ids();
    for traceparent in [None, Some(format!("00-{declined}-{declined_span}-00"))] {
        for _ in 0..3 {
            assert_eq!(check(traceparent.clone()).await.unwrap().status(), 200);
            rls.should_rate_limit(call(traceparent.clone()))
                .await
                .unwrap();
        }
    }
    // Sampled by the caller, at ratio 0: traced, HTTP and gRPC.
    let (trace_id, caller_span) = caller_ids();
    let sampled = format!("00-{trace_id}-{caller_span}-01");
    assert_eq!(check(Some(sampled.clone())).await.unwrap().status(), 200);
    rls.should_rate_limit(call(Some(sampled))).await.unwrap();
    let root_name = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/check", root_name, "EVALSHA"])
        .await;
    // One descriptor is one check: its decision is on the call's span, whose
    // own outcome stays the call's overall code.
    let call_span = span(&spans, root_name);
    assert_eq!(call_span.attributes["slidegate.policy"], "rls.edge.user");
    assert_eq!(call_span.attributes["slidegate.outcome"], "ok");
    assert!(call_span.attributes.contains_key("slidegate.remaining"));

    // Spans are exported in the order they end, the unsampled requests came
    // first, and they built none: every span received is of the sampled trace.
    let others: Vec<(String, String)> = receiver
        .received
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|span| span.trace_id != trace_id)
        .map(|span| (span.trace_id.clone(), span.name.clone()))
        .collect();
    assert!(
        others.is_empty(),
        "unsampled requests were traced: {others:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_is_traced_down_to_its_postgres_statement() {
    let database = TestDatabase::create().await;
    let receiver = OtlpReceiver::start().await;
    let mut env = tracing_env(&receiver, "slidegate-admin");
    env.push(("SLIDEGATE__POSTGRES__URL", database.url.clone()));
    env.push(("SLIDEGATE__ADMIN__TOKEN", ADMIN_TOKEN.to_owned()));
    let replica = Replica::spawn(POLICY, &env).await;

    let (trace_id, caller_span) = caller_ids();
    let response = replica
        .client
        .post(format!("{}/v1/admin/policies", replica.address))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({
            "name": "traced", "algorithm": "gcra", "limit": 5, "window": "1m"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/admin/policies", "INSERT policies"])
        .await;
    let root = span(&spans, "POST /v1/admin/policies");
    let insert = span(&spans, "INSERT policies");
    assert_eq!(root.parent_span_id, caller_span);
    assert_eq!(insert.parent_span_id, root.span_id);
    assert_eq!(insert.kind, SpanKind::Client as i32);
    assert_eq!(insert.attributes["db.system"], "postgresql");
    assert_eq!(insert.attributes["db.operation.name"], "INSERT");
    // Neither the admin token nor the database URL left the process.
    let raw = receiver.received.raw.lock().unwrap().concat();
    for secret in [ADMIN_TOKEN.as_bytes(), database.url.as_bytes()] {
        assert!(
            !raw.windows(secret.len()).any(|window| window == secret),
            "a secret was exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_at_shutdown_are_exported_before_the_process_exits() {
    let receiver = OtlpReceiver::start().await;
    let mut env = tracing_env(&receiver, "slidegate-shutdown");
    // Far longer than the test: only the flush at shutdown can send them.
    env.retain(|(name, _)| *name != "SLIDEGATE__TRACING__BATCH_DELAY");
    env.push(("SLIDEGATE__TRACING__BATCH_DELAY", "10m".into()));
    let mut replica = Replica::spawn(POLICY, &env).await;

    let (trace_id, caller_span) = caller_ids();
    let status = traced_check(&replica, &trace_id, &caller_span, "k").await;
    assert_eq!(status, 200);
    assert!(receiver.received.spans.lock().unwrap().is_empty());

    assert!(replica.terminate().await.success());
    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/check"])
        .await;
    // The embedded store makes no client span: the root is the whole trace.
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(
        span(&spans, "POST /v1/check").attributes["slidegate.outcome"],
        "allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_stalled_checks_are_answered_and_overflowing_spans_are_counted_as_dropped()
 {
    // Accepts connections (the kernel does, up to the backlog) but never
    // answers: every export waits for its full timeout.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", stalled.local_addr().unwrap());
    let config = r#"
[[policies]]
name = "api"
algorithm = "gcra"
limit = 1000
window = "1m"
"#;
    let replica = Replica::spawn(
        config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("SLIDEGATE__TRACING__MAX_QUEUE_SIZE", "8".into()),
            ("SLIDEGATE__TRACING__MAX_EXPORT_BATCH_SIZE", "4".into()),
            ("SLIDEGATE__TRACING__BATCH_DELAY", "20ms".into()),
            ("SLIDEGATE__TRACING__EXPORT_TIMEOUT", "60s".into()),
            // Every check traced (the default traces 1% of those without a traceparent).
            ("SLIDEGATE__TRACING__SAMPLE_RATIO", "1.0".into()),
        ],
    )
    .await;

    let started = Instant::now();
    for index in 0..50 {
        let response = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "api", "key": format!("k{index}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Had any check waited for the collector it would have taken a minute.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "50 checks took {took:?}");

    let metrics = replica
        .client
        .get(format!("{}/metrics", replica.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_exposition(&metrics);
    // 50 checks on the embedded store make 50 spans (the root: a single
    // check has none of its own); at most 8 fit in the queue.
    let dropped = value(&samples, "slidegate_trace_spans_dropped_total", &[]);
    assert!(dropped >= 42.0, "dropped {dropped}");
    assert_eq!(
        value(&samples, "slidegate_trace_spans_exported_total", &[]),
        0.0
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_written_during_a_traced_request_carry_its_trace_and_span_ids() {
    let receiver = OtlpReceiver::start().await;
    let password = "hunter2-in-logs";
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = tracing_env(&receiver, "slidegate-logs");
    env.push((
        "SLIDEGATE__REDIS__URL",
        format!("redis://:{password}@127.0.0.1:{closed_port}"),
    ));
    // The store failure below is logged at debug, once per failed check.
    env.push(("RUST_LOG", "info,slidegate=debug".into()));
    let replica = Replica::spawn(POLICY, &env).await;

    let (trace_id, caller_span) = caller_ids();
    let status = traced_check(&replica, &trace_id, &caller_span, PERSONAL_KEY).await;
    assert_eq!(status, 503);

    let line = replica
        .wait_for_log("the store failure to be logged", |line| {
            line["message"] == "check failed in the store"
        })
        .await;
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    let span_id = line["span_id"].as_str().expect("a span_id");
    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/check"])
        .await;
    assert!(
        spans.iter().any(|span| span.span_id == span_id),
        "{span_id} is none of the request's spans: {spans:#?}"
    );
    let root = span(&spans, "POST /v1/check");
    assert_eq!(root.attributes["http.status_code"], "503");
    assert_eq!(root.attributes["error.type"], "limiter_unavailable");
    assert_eq!(root.status, StatusCode::Error as i32);
    // The decision that could not be made, with the store's reason.
    assert_eq!(root.attributes["slidegate.policy"], "api");
    assert_eq!(root.attributes["slidegate.outcome"], "error");
    let kind = root.attributes["slidegate.store_error"].as_str();
    assert!(["timeout", "unavailable"].contains(&kind), "{kind}");
    assert!(!root.attributes.contains_key("slidegate.remaining"));

    // Losing Redis is one line, whatever the number of failed checks.
    let lost = |logs: &[serde_json::Value]| {
        logs.iter()
            .filter(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("cannot reach Redis"))
            })
            .count()
    };
    replica
        .wait_for_log("the lost Redis to be logged", |line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("cannot reach Redis"))
        })
        .await;
    for _ in 0..3 {
        let response = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "api", "key": "k"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    assert_eq!(lost(&replica.logs()), 1);
    let logs = serde_json::to_string(&replica.logs()).unwrap();
    assert!(!logs.contains(password), "the Redis password was logged");
    assert!(!logs.contains(PERSONAL_KEY), "the limiter key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_answered_by_its_failure_mode_says_so_on_the_root_span() {
    let receiver = OtlpReceiver::start().await;
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = tracing_env(&receiver, "slidegate-fallback");
    env.push((
        "SLIDEGATE__REDIS__URL",
        format!("redis://127.0.0.1:{closed_port}"),
    ));
    let config = r#"
[[policies]]
name = "api"
algorithm = "gcra"
limit = 5
window = "1m"
failure_mode = "open"
"#;
    let replica = Replica::spawn(config, &env).await;

    let (trace_id, caller_span) = caller_ids();
    let status = traced_check(&replica, &trace_id, &caller_span, "k").await;
    assert_eq!(status, 200);

    let spans = receiver
        .wait_for_trace(&trace_id, &["POST /v1/check"])
        .await;
    let root = span(&spans, "POST /v1/check");
    assert_eq!(root.attributes["slidegate.outcome"], "allowed");
    assert_eq!(root.attributes["slidegate.fallback"], "open");
    assert_eq!(root.status, StatusCode::Ok as i32);
}
