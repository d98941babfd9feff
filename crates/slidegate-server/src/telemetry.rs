//! Telemetry set up once per process: logs (JSON lines or readable text) and, when configured, OpenTelemetry traces over OTLP.
//!
//! Two layers sit on one `tracing` registry, each with its own filter:
//!
//! - the log layer, filtered by `RUST_LOG` or `log.level`. The filter is
//!   attached to this layer only: a global filter would also decide which
//!   spans reach OpenTelemetry, and `RUST_LOG=warn` would silently end tracing.
//! - the OpenTelemetry layer, present only when `tracing.endpoint` is set. It
//!   sees slidegate's own spans (the HTTP root span and the debug-level spans
//!   of the limiter and the stores), never those of the HTTP client that
//!   exports them, which would trace the exporter itself.
//!
//! Spans leave through a bounded queue. When it is full, because the
//! collector is down or slow, new spans are dropped and counted
//! ([`span_export_stats`]); a request never waits for the collector.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::otlp::OtlpHttpExporter;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use tracing::dispatcher::WeakDispatch;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{DynFilterFn, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings, TracingSettings};

/// The OTLP/HTTP path for traces, appended to the configured base URL as the
/// specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
const TRACES_PATH: &str = "/v1/traces";

/// What [`init`] installed. Keep it until the process ends, then call
/// [`Telemetry::shutdown`] so the last spans are sent.
#[must_use = "dropping it loses the spans still queued; call shutdown()"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// How long [`Telemetry::shutdown`] waits for the last spans: one
    /// export's `tracing.export_timeout`, a bound the shutdown budget of the
    /// deploy files counts (the SDK's own default is a hidden 5 s).
    export_timeout: std::time::Duration,
}

impl Telemetry {
    /// Whether spans are exported by this process.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is queued and stops the exporter. It blocks on network I/O:
    /// call it on a blocking thread (`spawn_blocking`), never on an async
    /// worker, where the export would stall and the last batch be lost.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(self.export_timeout)
        {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// Installs the global subscriber and, when `tracing` has an endpoint, the
/// OpenTelemetry pipeline. `RUST_LOG`, when set, overrides `log.level`.
///
/// Only the first call in a process installs anything (a later one changes
/// nothing and returns a `Telemetry` that traces nothing), which lets every
/// test ask for logs without coordinating.
pub fn init(log: &LogSettings, tracing: &TracingSettings) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let dispatch = Arc::new(OnceLock::new());
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let log_layer = if json {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds {
                format: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // The current span already carries its fields; the list would repeat them.
                    .with_span_list(false),
                dispatch: Arc::clone(&dispatch),
            })
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };

    let provider = tracing
        .endpoint()
        .map(|endpoint| tracer_provider(endpoint, tracing));
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("slidegate"))
            // Each of these costs work per span (thread names are copied
            // into a new String every time) and says nothing the span
            // names and attributes do not.
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // Kept current for every poll of every traced future, the
            // context cost ~10,000 instructions per traced check; nothing
            // here reads it (the log lines look their ids up).
            .with_context_activation(false)
            .with_filter(
                Targets::new()
                    .with_target("slidegate", Level::DEBUG)
                    .and(sampled_requests_only(tracing.sample_ratio)),
            )
    });

    let installed = tracing_subscriber::registry()
        // First: its "no" for an untraced request's spans stops them before
        // any other layer (or the registry) sees them.
        .with(provider.as_ref().map(|_| UntracedRequests))
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if installed {
        tracing::dispatcher::get_default(|installed| {
            let _ = dispatch.set(installed.downgrade());
        });
    }
    match provider {
        Some(provider) if installed => {
            // Without a propagator an incoming `traceparent` is ignored and
            // every request starts a trace of its own.
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            tracing::info!(
                endpoint = tracing.endpoint(),
                service_name = %tracing.service_name,
                sample_ratio = tracing.sample_ratio,
                "exporting traces over OTLP/HTTP"
            );
            Telemetry {
                provider: Some(provider),
                export_timeout: tracing.export_timeout,
            }
        }
        Some(provider) => {
            let _ = provider.shutdown();
            Telemetry {
                provider: None,
                export_timeout: tracing.export_timeout,
            }
        }
        None => Telemetry {
            provider: None,
            export_timeout: tracing.export_timeout,
        },
    }
}

fn tracer_provider(endpoint: &str, settings: &TracingSettings) -> SdkTracerProvider {
    let url = format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'));
    // Our own exporter, not opentelemetry-otlp's: it writes the protobuf
    // straight from the spans instead of cloning each into prost structs
    // first, which was a third of what tracing every check cost (see
    // `crate::otlp`).
    let exporter = OtlpHttpExporter::new(url, settings.export_timeout);
    let queued = Arc::new(AtomicUsize::new(0));
    let mut provider = SdkTracerProvider::builder()
        // The sample ratio was applied before any span was built (see
        // `sampled_requests_only`): every span that reaches the exporter's
        // tracer belongs to a trace already chosen, and a caller that chose
        // not to sample (`traceparent` flags 00) is followed.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource(settings));
    match exporter {
        Ok(exporter) => {
            let batches = BatchSpanProcessor::new(
                CountingExporter {
                    inner: exporter,
                    queued: Arc::clone(&queued),
                    failing: AtomicBool::new(false),
                },
                BatchConfigBuilder::default()
                    .with_max_queue_size(settings.max_queue_size)
                    .with_max_export_batch_size(settings.max_export_batch_size)
                    .with_scheduled_delay(settings.batch_delay)
                    .build(),
            );
            provider = provider.with_span_processor(BoundedQueue {
                inner: batches,
                queued,
                capacity: settings.max_queue_size,
            });
        }
        // Settings were validated, so this is a bug or an exhausted machine;
        // serving checks matters more than tracing them.
        Err(error) => {
            tracing::error!(%error, "cannot build the OTLP exporter; spans are not exported")
        }
    }
    provider.build()
}

/// `service.name`, `service.version` and `service.instance.id`, on top of
/// whatever `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource(settings: &TracingSettings) -> Resource {
    let instance = settings.instance_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|host| host.trim().to_owned())
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "unknown-host".to_owned());
        format!("{host}-{}", std::process::id())
    });
    Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .build()
}

static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Counts of the span pipeline since the process started (zero without tracing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Export requests that failed or timed out (their spans are lost).
    pub failed_exports: u64,
}

/// Process-wide, like the tracer provider they describe.
pub fn span_export_stats() -> SpanExportStats {
    SpanExportStats {
        exported: SPANS_EXPORTED.load(Ordering::Relaxed),
        dropped: SPANS_DROPPED.load(Ordering::Relaxed),
        failed_exports: EXPORTS_FAILED.load(Ordering::Relaxed),
    }
}

/// Admits a finished span only while fewer than `capacity` are queued or
/// being exported, and counts the rest as dropped.
///
/// The SDK's batch processor drops spans on a full queue too, but keeps the
/// count to itself until shutdown; gating in front of it with the same
/// capacity means it never has to drop, and every drop is counted here.
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    /// Incremented here, decremented by [`CountingExporter`] once a batch is done.
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and logging once when exports
/// start failing and once when they recover, not once per batch.
#[derive(Debug)]
struct CountingExporter {
    inner: OtlpHttpExporter,
    queued: Arc<AtomicUsize>,
    failing: AtomicBool,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                SPANS_EXPORTED.fetch_add(spans as u64, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("span export works again");
                }
            }
            Err(error) => {
                EXPORTS_FAILED.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %error,
                        "cannot export spans; they are dropped until the collector answers"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// JSON log lines with the `trace_id` and `span_id` of the span they were
/// logged in, at the top level where log pipelines look for them.
///
/// The ids are read from the OpenTelemetry data of the current `tracing`
/// span, through the installed dispatcher (`dispatch`, set by [`init`]).
/// The OpenTelemetry layer does not activate a context on every span entry
/// (`with_context_activation(false)`: measured, it cost more instructions
/// per traced check than the match of its policy), so the ids are looked up
/// here, for the few lines a request logs, instead of being kept current for
/// every poll of every future. Lines outside a traced request carry none.
struct WithTraceIds {
    format: Format<Json>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let context = ctx
            .lookup_current()
            .map(|span| span.id())
            .zip(self.dispatch.get().and_then(WeakDispatch::upgrade))
            .and_then(|(id, dispatch)| tracing_opentelemetry::get_otel_context(&id, &dispatch));
        let Some(context) = context else {
            return self.format.format_event(ctx, writer, event);
        };
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.format.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.format
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Reads a gRPC call's metadata as OpenTelemetry's propagators read headers.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// How the Envoy front end's gRPC calls are traced: decided as HTTP requests
/// are ([`request_is_traced`], from the call's `traceparent` metadata), and
/// a traced call's span made a child of the caller's through the global
/// propagator, as the HTTP root span is.
pub struct GrpcTracing {
    pub sample_ratio: f64,
}

impl slidegate_envoy::CallTracing for GrpcTracing {
    fn traced(&self, metadata: &tonic::metadata::MetadataMap) -> bool {
        let traceparent = metadata.get("traceparent").map(|value| value.as_bytes());
        request_is_traced(traceparent, self.sample_ratio)
    }

    fn continue_trace(&self, metadata: &tonic::metadata::MetadataMap, span: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&MetadataExtractor(metadata))
        });
        // Fails only for a span already started elsewhere: this one is new.
        let _ = span.set_parent(parent);
    }
}

/// Whether a request is traced, decided once as it arrives, before any span
/// exists: a `traceparent` decides by its sampled flag (a gateway's trace is
/// never cut in the middle, and never started where the caller declined);
/// without one (or with one that does not parse), a share `sample_ratio`
/// of requests is.
pub fn request_is_traced(traceparent: Option<&[u8]>, sample_ratio: f64) -> bool {
    match traceparent.and_then(sampled_flag) {
        Some(sampled) => sampled,
        None => coin(sample_ratio),
    }
}

/// The sampled flag of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// or `None` when it is not one.
fn sampled_flag(traceparent: &[u8]) -> Option<bool> {
    let hex = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_hexdigit);
    let mut parts = traceparent.split(|byte| *byte == b'-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = version.len() == 2
        && version != b"ff"
        && hex(version)
        && trace.len() == 32
        && hex(trace)
        && trace.iter().any(|digit| *digit != b'0')
        && parent.len() == 16
        && hex(parent)
        && parent.iter().any(|digit| *digit != b'0')
        && flags.len() == 2
        && hex(flags);
    if !well_formed {
        return None;
    }
    let low = char::from(flags[1]).to_digit(16)?;
    Some(low & 1 == 1)
}

/// True with probability `ratio`, from a per-thread xorshift generator: no
/// lock, no allocation, and nothing that needs to be unpredictable.
fn coin(ratio: f64) -> bool {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u8) | 1);
    }
    let draw = STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    });
    // The top 53 bits as a fraction in [0, 1).
    ((draw >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

/// The OpenTelemetry layer's gate: inside a request, only what the request's
/// decision ([`slidegate_core::observe::traced_here`]) allows (an untraced
/// request's spans are refused before this, by `UntracedRequests`; this
/// keeps the exporter's view right for what gets past it). Outside one
/// (background work), a span inside a traced span is traced, and a new
/// root is traced at `sample_ratio`.
fn sampled_requests_only<S>(sample_ratio: f64) -> impl tracing_subscriber::layer::Filter<S>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    DynFilterFn::new(
        move |metadata, cx| match slidegate_core::observe::traced_here() {
            Some(traced) => traced,
            None if cx.lookup_current().is_some() => true,
            None => metadata.is_span() && coin(sample_ratio),
        },
    )
    // Without a hint the combined filter would have none either, and
    // `tracing`'s global level would open up to TRACE: every trace-level
    // callsite of every crate would then ask the filters.
    .with_max_level_hint(LevelFilter::DEBUG)
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    #[test]
    fn a_traceparent_decides_by_its_sampled_flag_and_a_malformed_one_is_absent() {
        let trace = "0af7651916cd43dd8448eb211c80319c";
        let parent = "b7ad6b7169203331";
        let with = |flags: &str| format!("00-{trace}-{parent}-{flags}");
        assert_eq!(sampled_flag(with("01").as_bytes()), Some(true));
        assert_eq!(sampled_flag(with("03").as_bytes()), Some(true));
        assert_eq!(sampled_flag(with("00").as_bytes()), Some(false));
        for malformed in [
            String::new(),
            "garbage".into(),
            format!("ff-{trace}-{parent}-01"),
            format!("00-{}-{parent}-01", "0".repeat(32)),
            format!("00-{trace}-{}-01", "0".repeat(16)),
            format!("00-{trace}-{parent}-0x"),
            format!("00-{trace}-{parent}"),
            format!("00-{}-{parent}-01", &trace[1..]),
        ] {
            assert_eq!(sampled_flag(malformed.as_bytes()), None, "{malformed:?}");
        }
        // The caller's decision beats the ratio, both ways.
        assert!(request_is_traced(Some(with("01").as_bytes()), 0.0));
        assert!(!request_is_traced(Some(with("00").as_bytes()), 1.0));
    }

    #[test]
    fn without_a_traceparent_the_ratio_decides() {
        assert!(request_is_traced(None, 1.0));
        assert!(!request_is_traced(None, 0.0));
        let traced = (0..100_000)
            .filter(|_| request_is_traced(None, 0.1))
            .count();
        assert!(
            (9_000..11_000).contains(&traced),
            "{traced} of 100000 at 0.1"
        );
    }
}

/// Disables, for every layer, slidegate's debug-level spans and events of a
/// request not traced ([`slidegate_core::observe::traced_here`] is
/// `Some(false)`): a layer's `enabled` returning false is the one global "no"
/// in `tracing`, so such a span is never built (no registry slot, no field
/// formatting), as with tracing off. Per-layer filters cannot do this: a
/// span every one of them refuses is still built when any of them is
/// dynamic. Info and above (what the log shows) always pass.
///
/// It has an opinion on slidegate's own callsites only, the only ones the
/// OpenTelemetry layer takes: other crates' (actix-http, redis, hyper…)
/// are left to the other layers, which disable them once, at registration.
/// Asked about them per call instead, it cost a traced check ~10,000
/// instructions (actix-http alone hits a trace-level callsite several
/// times per request); hence also its level hint: it enables nothing itself,
/// and without a hint the subscriber's would be "everything", TRACE.
struct UntracedRequests;

impl UntracedRequests {
    fn gates(metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() > Level::INFO && metadata.target().starts_with("slidegate")
    }
}

impl<S: Subscriber> Layer<S> for UntracedRequests {
    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> Interest {
        if Self::gates(metadata) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !Self::gates(metadata) || slidegate_core::observe::traced_here() != Some(false)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::OFF)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    async fn disabled() -> (bool, bool) {
        let untraced = slidegate_core::observe::traced_as(false, async {
            tracing::debug_span!("limiter.decide").is_disabled()
        })
        .await;
        let traced = slidegate_core::observe::traced_as(true, async {
            tracing::debug_span!("limiter.decide").is_disabled()
        })
        .await;
        (untraced, traced)
    }

    #[tokio::test]
    async fn a_request_not_traced_builds_no_span_and_a_traced_one_does() {
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info"))
            .boxed();
        let exporter = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(
                Targets::new()
                    .with_target("slidegate", Level::DEBUG)
                    .and(sampled_requests_only(0.0)),
            );
        let subscriber = tracing_subscriber::registry()
            .with(UntracedRequests)
            .with(log)
            .with(Some(exporter));
        let _default = tracing::subscriber::set_default(subscriber);
        assert_eq!(disabled().await, (true, false));
    }
}
