//! The OTLP/HTTP span exporter: writes `ExportTraceServiceRequest` protobuf straight from the SDK's spans and POSTs it.
//!
//! Callgrind put opentelemetry-otlp 0.32's HTTP exporter at about 12,000
//! instructions per span: `group_spans_by_resource_and_scope` clones every
//! `SpanData`, converts it into prost structs (a `String` per attribute key
//! and value), and `encode_to_vec` then recomputes every nested length. Here
//! [`encode_export_request`] reads `&[SpanData]` in place: one pass measures
//! each span (plain arithmetic, no allocation), a second writes the bytes
//! into a buffer allocated once at its final size. The resource is encoded
//! once, when the SDK hands it over, and each instrumentation scope once per
//! batch. The output is the canonical proto3 encoding that prost produces
//! for the same request (fields in tag order, scalar defaults omitted), so
//! the tests compare it byte for byte with opentelemetry-proto's.

use std::error::Error as _;
use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, Link, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

/// The `Content-Type` of an OTLP/HTTP binary protobuf body.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// Headers sent with every export, `key=value` pairs separated by commas.
pub const HEADERS_VAR: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Trace-only headers; a key here replaces the same key from [`HEADERS_VAR`].
pub const TRACES_HEADERS_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";

/// A response body larger than this is not read: the connection is dropped
/// instead of reused, rather than spending the export's time on a body whose
/// only content (partial success counts) is not used.
const MAX_DRAINED_RESPONSE: u64 = 64 * 1024;

/// Why an [`OtlpHttpExporter`] could not be built. No variant carries a
/// header value or the endpoint's credentials.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid OTLP endpoint URL: {0}")]
    InvalidEndpoint(String),
    #[error("OTLP endpoint scheme must be http or https, not {0:?}")]
    UnsupportedScheme(String),
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the thread that builds the OTLP HTTP client: {0}")]
    Thread(#[source] std::io::Error),
    #[error("building the OTLP HTTP client panicked")]
    ClientPanicked,
}

/// Sends spans to an OTLP/HTTP collector (`POST` of binary protobuf to a
/// full URL such as `http://collector:4318/v1/traces`).
///
/// Meant for the SDK's `BatchSpanProcessor`, which calls [`SpanExporter::export`]
/// from its own plain thread under `futures_executor::block_on`, one batch at a
/// time; the HTTP client is therefore reqwest's blocking one, as in
/// opentelemetry-otlp's `reqwest-blocking-client` (its `build_client` builds a
/// `reqwest::blocking::Client` and opentelemetry-http's `HttpClient` impl for
/// it calls the blocking `execute`).
pub struct OtlpHttpExporter {
    endpoint: reqwest::Url,
    timeout: Duration,
    /// Carries the configured headers as its default headers, so a request
    /// does not copy them.
    client: Client,
    /// For `Debug` only: the names, never the values.
    header_names: Vec<HeaderName>,
    resource: EncodedResource,
    is_shutdown: AtomicBool,
}

impl fmt::Debug for OtlpHttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL's user info is a credential as much as a header is.
        let mut endpoint = self.endpoint.clone();
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            let _ = endpoint.set_username("redacted");
            let _ = endpoint.set_password(None);
        }
        f.debug_struct("OtlpHttpExporter")
            .field("endpoint", &endpoint.as_str())
            .field("header_names", &self.header_names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OtlpHttpExporter {
    /// An exporter for `endpoint_url` (the full URL, path included), with
    /// headers from [`HEADERS_VAR`] and [`TRACES_HEADERS_VAR`]. `timeout`
    /// bounds each export: connecting, sending and waiting for the answer.
    ///
    /// Headers whose name or value is not valid in HTTP are left out, as
    /// opentelemetry-otlp leaves them out.
    pub fn new(endpoint_url: String, timeout: Duration) -> Result<Self, OtlpError> {
        let general = std::env::var(HEADERS_VAR).ok();
        let traces = std::env::var(TRACES_HEADERS_VAR).ok();
        Self::with_headers(
            &endpoint_url,
            timeout,
            parse_headers(general.as_deref(), traces.as_deref()),
        )
    }

    fn with_headers(
        endpoint_url: &str,
        timeout: Duration,
        headers: Vec<(String, String)>,
    ) -> Result<Self, OtlpError> {
        let endpoint = reqwest::Url::parse(endpoint_url)
            .map_err(|error| OtlpError::InvalidEndpoint(error.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(OtlpError::UnsupportedScheme(endpoint.scheme().to_owned()));
        }
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in &headers {
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                // Keeps reqwest's and hyper's own debug output from showing it.
                value.set_sensitive(true);
                map.insert(name, value);
            }
        }
        let header_names = map.keys().cloned().collect();
        Ok(Self {
            endpoint,
            timeout,
            client: build_client(timeout, map)?,
            header_names,
            resource: EncodedResource::default(),
            is_shutdown: AtomicBool::new(false),
        })
    }

    fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, PROTOBUF_CONTENT_TYPE)
            .body(body)
            .send()
            .map_err(|error| self.transport_error(error))?;
        let status = response.status();
        // Reading a small body to its end lets the connection go back to the
        // pool for the next batch; an unsized or large one is not worth the wait.
        if response
            .content_length()
            .is_some_and(|length| length <= MAX_DRAINED_RESPONSE)
        {
            let _ = std::io::copy(
                &mut response.take(MAX_DRAINED_RESPONSE),
                &mut std::io::sink(),
            );
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "OTLP collector answered HTTP {}",
                status.as_u16()
            )))
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> OTelSdkError {
        if error.is_timeout() {
            return OTelSdkError::Timeout(self.timeout);
        }
        // The causes say what failed (refused, reset, DNS); the URL could
        // carry user info, so it is left out.
        let error = error.without_url();
        let mut message = format!("OTLP export failed: {error}");
        let mut cause = error.source();
        while let Some(inner) = cause {
            let _ = write!(message, ": {inner}");
            cause = inner.source();
        }
        OTelSdkError::InternalFailure(message)
    }
}

/// reqwest's blocking client runs a runtime of its own and panics (in debug
/// builds) when built or used on a thread that is inside a Tokio runtime, as
/// the caller of [`OtlpHttpExporter::new`] may be; a short-lived thread of our
/// own never is. opentelemetry-otlp builds its blocking client the same way.
fn build_client(timeout: Duration, headers: HeaderMap) -> Result<Client, OtlpError> {
    std::thread::scope(|scope| {
        let builder = std::thread::Builder::new()
            .name("otlp-client-build".into())
            .spawn_scoped(scope, move || {
                Client::builder()
                    .timeout(timeout)
                    .default_headers(headers)
                    .build()
            })
            .map_err(OtlpError::Thread)?;
        builder
            .join()
            .map_err(|_| OtlpError::ClientPanicked)?
            .map_err(OtlpError::Client)
    })
}

impl SpanExporter for OtlpHttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.is_shutdown.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // reqwest's blocking body must own its bytes, so a buffer kept across
        // batches would cost a copy per batch; measuring first lets this one
        // be allocated once, at its final size, and handed over as it is.
        let mut body = Vec::new();
        encode_export_request(&self.resource, &batch, &mut body);
        // The spans are in `body` now; no need to hold them through the round trip.
        drop(batch);
        if tokio::runtime::Handle::try_current().is_ok() {
            // Only when driven from inside a runtime (a simple processor on
            // a Tokio thread), where the blocking client would panic.
            std::thread::scope(|scope| {
                match std::thread::Builder::new()
                    .name("otlp-export".into())
                    .spawn_scoped(scope, || self.post(body))
                {
                    Ok(handle) => handle.join().unwrap_or_else(|_| {
                        Err(OTelSdkError::InternalFailure(
                            "the OTLP export thread panicked".into(),
                        ))
                    }),
                    Err(error) => Err(OTelSdkError::InternalFailure(format!(
                        "cannot start the OTLP export thread: {error}"
                    ))),
                }
            })
        } else {
            self.post(body)
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.is_shutdown.swap(true, Ordering::AcqRel) {
            Err(OTelSdkError::AlreadyShutdown)
        } else {
            Ok(())
        }
    }

    /// Nothing is buffered here: every export is sent before it returns.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

/// The headers from the two variables' values (`None` when unset): the
/// general list first, then the traces list, whose keys replace the same
/// keys (compared ignoring ASCII case, as HTTP does) in place.
///
/// Each `key=value` pair is trimmed and its value percent-decoded; a value
/// whose escapes are invalid, or decode to invalid UTF-8, is kept as written
/// (what opentelemetry-otlp does). A pair without `=`, or with an empty key
/// or value, is ignored.
pub fn parse_headers(general: Option<&str>, traces: Option<&str>) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for list in [general, traces].into_iter().flatten() {
        for pair in list.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.is_empty() {
                continue;
            }
            let value = percent_decode(value).unwrap_or_else(|| value.to_owned());
            match headers
                .iter_mut()
                .find(|(known, _)| known.eq_ignore_ascii_case(key))
            {
                Some(entry) => entry.1 = value,
                None => headers.push((key.to_owned(), value)),
            }
        }
    }
    headers
}

fn percent_decode(value: &str) -> Option<String> {
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut bytes = value.bytes();
    let mut decoded = Vec::with_capacity(value.len());
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = hex(bytes.next()?)?;
            let low = hex(bytes.next()?)?;
            decoded.push(high << 4 | low);
        } else {
            decoded.push(byte);
        }
    }
    String::from_utf8(decoded).ok()
}

/// A resource in wire form: the `ResourceSpans.resource` and
/// `ResourceSpans.schema_url` fields, encoded once and copied into every request.
#[derive(Clone)]
pub struct EncodedResource {
    resource_field: Vec<u8>,
    schema_url_field: Vec<u8>,
}

impl EncodedResource {
    /// Encodes `resource`'s attributes (in its own iteration order, as
    /// opentelemetry-proto lists them) and schema URL.
    pub fn new(resource: &Resource) -> Self {
        // opentelemetry-proto always sends 0 dropped attributes and no entity refs.
        let body_len: usize = resource
            .iter()
            .map(|(key, value)| ld_len(1, key_value_len(key.as_str(), value)))
            .sum();
        let mut resource_field = Vec::with_capacity(ld_len(1, body_len));
        put_ld_header(&mut resource_field, 1, body_len);
        for (key, value) in resource.iter() {
            put_key_value(&mut resource_field, 1, key.as_str(), value);
        }
        let schema_url = resource.schema_url().unwrap_or_default();
        let mut schema_url_field = Vec::with_capacity(opt_str_len(3, schema_url));
        put_opt_str(&mut schema_url_field, 3, schema_url);
        Self {
            resource_field,
            schema_url_field,
        }
    }
}

/// What an exporter sends before the SDK calls `set_resource`: no
/// attributes, like opentelemetry-otlp's `ResourceAttributesWithSchema::default()`.
impl Default for EncodedResource {
    fn default() -> Self {
        Self::new(&Resource::builder_empty().build())
    }
}

impl fmt::Debug for EncodedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedResource")
            .field("encoded_len", &self.resource_field.len())
            .finish_non_exhaustive()
    }
}

/// Replaces `out` with the protobuf `ExportTraceServiceRequest` for `spans`:
/// one `ResourceSpans` for `resource`, with one `ScopeSpans` per distinct
/// instrumentation scope in order of first appearance, each holding its
/// spans in batch order. Equal, field for field, to what opentelemetry-proto's
/// `group_spans_by_resource_and_scope` builds (which orders scopes by a
/// `HashMap`), and byte for byte to prost's encoding when there is one scope.
pub fn encode_export_request(resource: &EncodedResource, spans: &[SpanData], out: &mut Vec<u8>) {
    struct Group<'a> {
        scope: &'a InstrumentationScope,
        scope_len: usize,
        /// The `ScopeSpans` message's length, grown span by span.
        body_len: usize,
        /// Each span's index in the batch and its measured length, so no
        /// span is measured twice.
        spans: Vec<(usize, usize)>,
    }
    // A batch comes from a handful of tracers (usually one): a linear scan
    // is cheaper than hashing a scope, whose `Hash` sorts a copy of its
    // attributes.
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        let len = span_len(span);
        let scope = &span.instrumentation_scope;
        let group = match groups.iter().position(|g| same_scope(g.scope, scope)) {
            Some(position) => &mut groups[position],
            None => {
                let scope_len = scope_len(scope);
                groups.push(Group {
                    scope,
                    scope_len,
                    body_len: ld_len(1, scope_len)
                        + opt_str_len(3, scope.schema_url().unwrap_or_default()),
                    // Sized for the rest of the batch, which is usually all
                    // this scope's, so it never grows.
                    spans: Vec::with_capacity(spans.len() - index),
                });
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        group.body_len += ld_len(2, len);
        group.spans.push((index, len));
    }

    let resource_spans_len = resource.resource_field.len()
        + groups.iter().map(|g| ld_len(2, g.body_len)).sum::<usize>()
        + resource.schema_url_field.len();
    let total = ld_len(1, resource_spans_len);
    out.clear();
    out.reserve_exact(total);

    put_ld_header(out, 1, resource_spans_len);
    out.extend_from_slice(&resource.resource_field);
    for group in &groups {
        put_ld_header(out, 2, group.body_len);
        put_ld_header(out, 1, group.scope_len);
        put_scope(out, group.scope);
        for &(index, len) in &group.spans {
            put_ld_header(out, 2, len);
            put_span(out, &spans[index]);
        }
        put_opt_str(out, 3, group.scope.schema_url().unwrap_or_default());
    }
    out.extend_from_slice(&resource.schema_url_field);
    debug_assert_eq!(out.len(), total, "measured and written lengths differ");
}

/// `InstrumentationScope`'s `==` sorts copies of both attribute lists, two
/// allocations per call; scopes cloned from one tracer compare equal in
/// order, so that cheap check goes first and `==` decides the rest.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    (a.name() == b.name()
        && a.version() == b.version()
        && a.schema_url() == b.schema_url()
        && a.attributes().eq(b.attributes()))
        || a == b
}

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// prost's `encoded_len_varint`.
fn varint_len(value: u64) -> usize {
    ((((value | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A length-delimited field: key, length, payload.
fn ld_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

fn opt_str_len(field: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        ld_len(field, value.len())
    }
}

fn opt_varint_len(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + varint_len(value)
    }
}

fn opt_fixed64_len(field: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(field) + 8 }
}

fn opt_fixed32_len(field: u32, value: u32) -> usize {
    if value == 0 { 0 } else { key_len(field) + 4 }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

fn put_ld_header(out: &mut Vec<u8>, field: u32, len: usize) {
    put_key(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    put_ld_header(out, field, value.len());
    out.extend_from_slice(value);
}

fn put_opt_str(out: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        put_bytes(out, field, value.as_bytes());
    }
}

fn put_opt_varint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(out, field, VARINT);
        put_varint(out, value);
    }
}

fn put_opt_fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_opt_fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        put_key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// opentelemetry-proto's `to_nanos`.
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// opentelemetry-proto's `build_span_flags`: the W3C trace flags, plus
/// SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (0x100) always and
/// SPAN_FLAGS_CONTEXT_IS_REMOTE (0x200) when the parent (or linked span) is remote.
fn span_flags(is_remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if is_remote { 0x200 } else { 0 }
}

/// The `proto` enum values; the API has no `Unspecified` (0).
fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `TraceState::header()` without building the string: `k=v` joined by `,`.
fn trace_state_len(state: &TraceState) -> usize {
    let (pairs, bytes) = state.into_iter().fold((0, 0), |(pairs, bytes), (k, v)| {
        (pairs + 1, bytes + k.len() + 1 + v.len())
    });
    (bytes + pairs).saturating_sub(1)
}

fn put_trace_state(out: &mut Vec<u8>, field: u32, state: &TraceState) {
    let len = trace_state_len(state);
    if len == 0 {
        return;
    }
    put_ld_header(out, field, len);
    for (index, (key, value)) in state.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
}

// AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4,
// array_value = 5 (ArrayValue { values = 1 }). A oneof member is written even
// when it holds its type's default.

const BOOL_VALUE_LEN: usize = 2;
const DOUBLE_VALUE_LEN: usize = 9;

fn int_value_len(value: i64) -> usize {
    1 + varint_len(value as u64)
}

fn string_value_len(value: &str) -> usize {
    ld_len(1, value.len())
}

/// The `ArrayValue` message's length; `None` for an array kind newer than
/// this code.
fn array_value_len(array: &Array) -> Option<usize> {
    Some(match array {
        Array::Bool(vs) => vs.len() * ld_len(1, BOOL_VALUE_LEN),
        Array::I64(vs) => vs.iter().map(|v| ld_len(1, int_value_len(*v))).sum(),
        Array::F64(vs) => vs.len() * ld_len(1, DOUBLE_VALUE_LEN),
        Array::String(vs) => vs
            .iter()
            .map(|v| ld_len(1, string_value_len(v.as_str())))
            .sum(),
        _ => return None,
    })
}

/// The `AnyValue` message's length, as opentelemetry-proto's
/// `From<Value> for AnyValue` would build it.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(_) => BOOL_VALUE_LEN,
        Value::I64(v) => int_value_len(*v),
        Value::F64(_) => DOUBLE_VALUE_LEN,
        Value::String(v) => string_value_len(v.as_str()),
        Value::Array(array) => match array_value_len(array) {
            Some(len) => ld_len(5, len),
            None => display_string_value_len(value),
        },
        // A variant newer than this code (opentelemetry-proto panics on
        // those): sent as its `Display` text rather than lost.
        other => display_string_value_len(other),
    }
}

fn put_bool_value(out: &mut Vec<u8>, value: bool) {
    put_key(out, 2, VARINT);
    out.push(u8::from(value));
}

fn put_int_value(out: &mut Vec<u8>, value: i64) {
    put_key(out, 3, VARINT);
    put_varint(out, value as u64);
}

fn put_double_value(out: &mut Vec<u8>, value: f64) {
    put_key(out, 4, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_string_value(out: &mut Vec<u8>, value: &str) {
    put_bytes(out, 1, value.as_bytes());
}

/// The `AnyValue` message's fields (its length is written by the caller).
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(v) => put_bool_value(out, *v),
        Value::I64(v) => put_int_value(out, *v),
        Value::F64(v) => put_double_value(out, *v),
        Value::String(v) => put_string_value(out, v.as_str()),
        Value::Array(array) => match array_value_len(array) {
            Some(len) => {
                put_ld_header(out, 5, len);
                put_array_values(out, array);
            }
            None => put_display_string_value(out, value),
        },
        other => put_display_string_value(out, other),
    }
}

fn put_array_values(out: &mut Vec<u8>, array: &Array) {
    match array {
        Array::Bool(vs) => {
            for v in vs {
                put_ld_header(out, 1, BOOL_VALUE_LEN);
                put_bool_value(out, *v);
            }
        }
        Array::I64(vs) => {
            for v in vs {
                put_ld_header(out, 1, int_value_len(*v));
                put_int_value(out, *v);
            }
        }
        Array::F64(vs) => {
            for v in vs {
                put_ld_header(out, 1, DOUBLE_VALUE_LEN);
                put_double_value(out, *v);
            }
        }
        Array::String(vs) => {
            for v in vs {
                put_ld_header(out, 1, string_value_len(v.as_str()));
                put_string_value(out, v.as_str());
            }
        }
        // `array_value_len` returned `None` for it, so the caller wrote text.
        _ => {}
    }
}

/// Counts the bytes `Display` writes, without keeping them.
struct ByteCounter(usize);

impl fmt::Write for ByteCounter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Appends `Display` output to a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn display_len(value: &Value) -> usize {
    let mut counter = ByteCounter(0);
    let _ = write!(counter, "{value}");
    counter.0
}

fn display_string_value_len(value: &Value) -> usize {
    ld_len(1, display_len(value))
}

fn put_display_string_value(out: &mut Vec<u8>, value: &Value) {
    put_ld_header(out, 1, display_len(value));
    let _ = write!(ByteWriter(out), "{value}");
}

// KeyValue: key = 1, value = 2 (always present, as opentelemetry-proto sets it).

fn key_value_len(key: &str, value: &Value) -> usize {
    opt_str_len(1, key) + ld_len(2, any_value_len(value))
}

/// A `KeyValue` as field `field` of its parent, key and length included.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    put_ld_header(out, field, key_value_len(key, value));
    put_opt_str(out, 1, key);
    put_ld_header(out, 2, any_value_len(value));
    put_any_value(out, value);
}

fn attributes_len<'a>(field: u32, attributes: impl IntoIterator<Item = &'a KeyValue>) -> usize {
    attributes
        .into_iter()
        .map(|kv| ld_len(field, key_value_len(kv.key.as_str(), &kv.value)))
        .sum()
}

fn put_attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) {
    for kv in attributes {
        put_key_value(out, field, kv.key.as_str(), &kv.value);
    }
}

// InstrumentationScope: name = 1, version = 2, attributes = 3,
// dropped_attributes_count = 4 (always 0 from opentelemetry-proto).

fn scope_len(scope: &InstrumentationScope) -> usize {
    opt_str_len(1, scope.name())
        + opt_str_len(2, scope.version().unwrap_or_default())
        + attributes_len(3, scope.attributes())
}

fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_opt_str(out, 1, scope.name());
    put_opt_str(out, 2, scope.version().unwrap_or_default());
    put_attributes(out, 3, scope.attributes());
}

// Status: message = 2, code = 3 (Unset 0, Ok 1, Error 2).

fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

fn status_len(status: &Status) -> usize {
    let (code, message) = status_parts(status);
    opt_str_len(2, message) + opt_varint_len(3, code)
}

fn put_status(out: &mut Vec<u8>, status: &Status) {
    let (code, message) = status_parts(status);
    put_opt_str(out, 2, message);
    put_opt_varint(out, 3, code);
}

// Span.Event: time_unix_nano = 1, name = 2, attributes = 3, dropped_attributes_count = 4.

fn event_len(event: &Event) -> usize {
    opt_fixed64_len(1, unix_nanos(event.timestamp))
        + opt_str_len(2, &event.name)
        + attributes_len(3, &event.attributes)
        + opt_varint_len(4, u64::from(event.dropped_attributes_count))
}

fn put_event(out: &mut Vec<u8>, event: &Event) {
    put_opt_fixed64(out, 1, unix_nanos(event.timestamp));
    put_opt_str(out, 2, &event.name);
    put_attributes(out, 3, &event.attributes);
    put_opt_varint(out, 4, u64::from(event.dropped_attributes_count));
}

// Span.Link: trace_id = 1, span_id = 2, trace_state = 3, attributes = 4,
// dropped_attributes_count = 5, flags = 6.

fn link_flags(link: &Link) -> u32 {
    span_flags(
        link.span_context.is_remote(),
        link.span_context.trace_flags().to_u8(),
    )
}

fn link_len(link: &Link) -> usize {
    let context = &link.span_context;
    ld_len(1, 16)
        + ld_len(2, 8)
        + opt_ld_len(3, trace_state_len(context.trace_state()))
        + attributes_len(4, &link.attributes)
        + opt_varint_len(5, u64::from(link.dropped_attributes_count))
        + opt_fixed32_len(6, link_flags(link))
}

fn put_link(out: &mut Vec<u8>, link: &Link) {
    let context = &link.span_context;
    put_bytes(out, 1, &context.trace_id().to_bytes());
    put_bytes(out, 2, &context.span_id().to_bytes());
    put_trace_state(out, 3, context.trace_state());
    put_attributes(out, 4, &link.attributes);
    put_opt_varint(out, 5, u64::from(link.dropped_attributes_count));
    put_opt_fixed32(out, 6, link_flags(link));
}

/// A length-delimited field omitted when empty, as prost omits `""`.
fn opt_ld_len(field: u32, len: usize) -> usize {
    if len == 0 { 0 } else { ld_len(field, len) }
}

// Span: trace_id = 1, span_id = 2, trace_state = 3, parent_span_id = 4,
// name = 5, kind = 6, start = 7, end = 8, attributes = 9,
// dropped_attributes_count = 10, events = 11, dropped_events_count = 12,
// links = 13, dropped_links_count = 14, status = 15, flags = 16 (prost
// writes in tag order, so flags comes last though the .proto declares it
// after parent_span_id).

fn span_flags_of(span: &SpanData) -> u32 {
    span_flags(
        span.parent_span_is_remote,
        span.span_context.trace_flags().to_u8(),
    )
}

fn span_len(span: &SpanData) -> usize {
    let context = &span.span_context;
    // trace_id and span_id are fixed-size and never empty; status is always
    // present (opentelemetry-proto sets `Some`), even when it is empty.
    ld_len(1, 16)
        + ld_len(2, 8)
        + opt_ld_len(3, trace_state_len(context.trace_state()))
        + if span.parent_span_id == SpanId::INVALID {
            0
        } else {
            ld_len(4, 8)
        }
        + opt_str_len(5, &span.name)
        + opt_varint_len(6, span_kind(&span.span_kind))
        + opt_fixed64_len(7, unix_nanos(span.start_time))
        + opt_fixed64_len(8, unix_nanos(span.end_time))
        + attributes_len(9, &span.attributes)
        + opt_varint_len(10, u64::from(span.dropped_attributes_count))
        + span
            .events
            .iter()
            .map(|event| ld_len(11, event_len(event)))
            .sum::<usize>()
        + opt_varint_len(12, u64::from(span.events.dropped_count))
        + span
            .links
            .iter()
            .map(|link| ld_len(13, link_len(link)))
            .sum::<usize>()
        + opt_varint_len(14, u64::from(span.links.dropped_count))
        + ld_len(15, status_len(&span.status))
        + opt_fixed32_len(16, span_flags_of(span))
}

/// The `Span` message's fields (its length is written by the caller).
fn put_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    put_bytes(out, 1, &context.trace_id().to_bytes());
    put_bytes(out, 2, &context.span_id().to_bytes());
    put_trace_state(out, 3, context.trace_state());
    if span.parent_span_id != SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_opt_str(out, 5, &span.name);
    put_opt_varint(out, 6, span_kind(&span.span_kind));
    put_opt_fixed64(out, 7, unix_nanos(span.start_time));
    put_opt_fixed64(out, 8, unix_nanos(span.end_time));
    put_attributes(out, 9, &span.attributes);
    put_opt_varint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        put_ld_header(out, 11, event_len(event));
        put_event(out, event);
    }
    put_opt_varint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        put_ld_header(out, 13, link_len(link));
        put_link(out, link);
    }
    put_opt_varint(out, 14, u64::from(span.links.dropped_count));
    put_ld_header(out, 15, status_len(&span.status));
    put_status(out, &span.status);
    put_opt_fixed32(out, 16, span_flags_of(span));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::pin::pin;
    use std::str::FromStr;
    use std::sync::{Arc, mpsc};
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread;
    use std::time::Instant;

    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, Tracer, TracerProvider};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanEvents, SpanLinks};
    use prost::Message;

    /// The SDK drives `export` with `futures_executor::block_on`, which is
    /// not a dependency here; this is the same thing in a few lines.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            thread::park();
        }
    }

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_schema_url(
                [
                    KeyValue::new("service.name", "slidegate"),
                    KeyValue::new("service.instance.id", "host-1-42"),
                    KeyValue::new("replicas", 3_i64),
                ],
                "https://opentelemetry.io/schemas/1.21.0",
            )
            .build()
    }

    fn scope_a() -> InstrumentationScope {
        InstrumentationScope::builder("slidegate")
            .with_version("0.1.0")
            .with_attributes([KeyValue::new("scope.flag", true)])
            .build()
    }

    fn scope_b() -> InstrumentationScope {
        InstrumentationScope::builder("tracing-opentelemetry")
            .with_schema_url("https://example.test/schema")
            .build()
    }

    fn every_value_type() -> Vec<KeyValue> {
        vec![
            KeyValue::new("bool.true", true),
            KeyValue::new("bool.false", false),
            KeyValue::new("int.zero", 0_i64),
            KeyValue::new("int.negative", -42_i64),
            KeyValue::new("int.max", i64::MAX),
            KeyValue::new("double", 1.5_f64),
            KeyValue::new("double.negative_zero", -0.0_f64),
            KeyValue::new("string.empty", ""),
            KeyValue::new("string", "héllo"),
            KeyValue::new("", "an empty key"),
            KeyValue::new("array.bool", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("array.int", Value::Array(Array::I64(vec![1, -1, 300, 0]))),
            KeyValue::new("array.double", Value::Array(Array::F64(vec![0.25, -8.0]))),
            KeyValue::new(
                "array.string",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("array.empty", Value::Array(Array::I64(vec![]))),
        ]
    }

    fn context(
        trace: u128,
        span: u64,
        flags: TraceFlags,
        remote: bool,
        state: &str,
    ) -> SpanContext {
        let state = if state.is_empty() {
            TraceState::default()
        } else {
            TraceState::from_str(state).expect("valid trace state")
        };
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        scope: InstrumentationScope,
        span_context: SpanContext,
        parent_span_id: SpanId,
        parent_span_is_remote: bool,
        span_kind: SpanKind,
        name: &'static str,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context,
            parent_span_id,
            parent_span_is_remote,
            span_kind,
            name: name.into(),
            start_time: at(1_700_000_000_123_456_789),
            end_time: at(1_700_000_000_223_456_789),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope,
        }
    }

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SERVER: u64 = 0x00f0_67aa_0ba9_02b7;

    /// A request's spans as slidegate makes them, plus a span from a second
    /// scope in the middle, so grouping has to keep order of first appearance.
    fn batch() -> Vec<SpanData> {
        let sampled = TraceFlags::SAMPLED;
        let mut server = span(
            scope_a(),
            context(
                TRACE,
                SERVER,
                sampled,
                false,
                "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            ),
            SpanId::from(0x1111_2222_3333_4444),
            true,
            SpanKind::Server,
            "POST /v1/check",
            every_value_type(),
            Status::Ok,
        );
        server.dropped_attributes_count = 2;

        let client = span(
            scope_a(),
            context(TRACE, 0x0102_0304_0506_0708, sampled, false, ""),
            SpanId::from(SERVER),
            false,
            SpanKind::Client,
            "redis EVALSHA",
            vec![KeyValue::new("db.system", "redis")],
            Status::Unset,
        );

        let mut internal = span(
            scope_a(),
            context(
                TRACE,
                0x0a0b_0c0d_0e0f_1011,
                TraceFlags::default(),
                false,
                "",
            ),
            SpanId::from(SERVER),
            false,
            SpanKind::Internal,
            "decide",
            vec![],
            Status::error("store unavailable"),
        );
        internal.events.events = vec![
            Event::new(
                "limit.exceeded",
                at(1_700_000_000_150_000_000),
                vec![
                    KeyValue::new("remaining", 0_i64),
                    KeyValue::new("policy", "per-key"),
                ],
                1,
            ),
            Event::new("", UNIX_EPOCH, vec![], 0),
        ];
        internal.events.dropped_count = 3;

        let mut consumer = span(
            scope_b(),
            context(0x77, 0x88, sampled, false, "vendor=value"),
            SpanId::INVALID,
            false,
            SpanKind::Consumer,
            "",
            vec![KeyValue::new("big", "x".repeat(20_000))],
            Status::error(""),
        );
        consumer.start_time = UNIX_EPOCH;
        // Before the epoch: opentelemetry-proto sends 0 (so, nothing).
        consumer.end_time = UNIX_EPOCH - Duration::from_secs(1);
        consumer.links.links = vec![
            Link::new(
                context(0x99, 0xaa, sampled, true, "linked=yes"),
                vec![KeyValue::new("link.reason", "fan-in")],
                1,
            ),
            Link::new(
                context(0x99, 0xab, TraceFlags::default(), false, ""),
                vec![],
                0,
            ),
        ];
        consumer.links.dropped_count = 1;

        let producer = span(
            scope_a(),
            context(TRACE, 0x2222, sampled, false, ""),
            SpanId::from(SERVER),
            false,
            SpanKind::Producer,
            "publish",
            vec![],
            Status::Unset,
        );

        vec![server, client, internal, consumer, producer]
    }

    fn ours(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_export_request(&EncodedResource::new(resource), spans, &mut out);
        out
    }

    fn theirs(resource: &Resource, spans: &[SpanData]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.to_vec(),
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn scope_name(scope_spans: &ScopeSpans) -> &str {
        scope_spans
            .scope
            .as_ref()
            .map_or("", |scope| scope.name.as_str())
    }

    #[test]
    fn a_batch_from_two_scopes_decodes_to_what_opentelemetry_proto_builds() {
        let resource = resource();
        let spans = batch();
        let decoded = ExportTraceServiceRequest::decode(ours(&resource, &spans).as_slice())
            .expect("our bytes decode");
        let expected = theirs(&resource, &spans);

        let names: Vec<&str> = decoded.resource_spans[0]
            .scope_spans
            .iter()
            .map(scope_name)
            .collect();
        assert_eq!(
            names,
            ["slidegate", "tracing-opentelemetry"],
            "first appearance"
        );
        let spans_per_scope: Vec<usize> = decoded.resource_spans[0]
            .scope_spans
            .iter()
            .map(|s| s.spans.len())
            .collect();
        assert_eq!(spans_per_scope, [4, 1]);

        assert_eq!(by_scope_name(decoded), by_scope_name(expected));
    }

    /// opentelemetry-proto groups through a HashMap: its scope order is arbitrary.
    fn by_scope_name(mut request: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        for resource_spans in &mut request.resource_spans {
            resource_spans
                .scope_spans
                .sort_by(|a, b| scope_name(a).cmp(scope_name(b)));
        }
        request
    }

    #[test]
    fn a_single_scope_batch_is_byte_for_byte_what_prost_encodes() {
        let resource = resource();
        let all = batch();
        for scope in [scope_a(), scope_b()] {
            let spans: Vec<SpanData> = all
                .iter()
                .filter(|span| span.instrumentation_scope == scope)
                .cloned()
                .collect();
            assert!(!spans.is_empty());
            assert_eq!(
                ours(&resource, &spans),
                theirs(&resource, &spans).encode_to_vec(),
                "scope {}",
                scope.name()
            );
        }
    }

    #[test]
    fn spans_of_a_scope_cloned_with_reordered_attributes_share_one_group() {
        let reordered = InstrumentationScope::builder("s")
            .with_attributes([KeyValue::new("b", 2_i64), KeyValue::new("a", 1_i64)])
            .build();
        let ordered = InstrumentationScope::builder("s")
            .with_attributes([KeyValue::new("a", 1_i64), KeyValue::new("b", 2_i64)])
            .build();
        let mut spans = batch();
        spans.truncate(2);
        spans[0].instrumentation_scope = ordered;
        spans[1].instrumentation_scope = reordered;
        // One resource for both: its attributes live in a HashMap, whose
        // order differs between two otherwise equal resources.
        let resource = resource();
        let decoded =
            ExportTraceServiceRequest::decode(ours(&resource, &spans).as_slice()).expect("decodes");
        assert_eq!(decoded.resource_spans[0].scope_spans.len(), 1);
        assert_eq!(decoded, theirs(&resource, &spans));
    }

    #[test]
    fn resources_and_empty_batches_match_prost() {
        let resource = resource();
        assert_eq!(ours(&resource, &[]), theirs(&resource, &[]).encode_to_vec());

        let empty = Resource::builder_empty().build();
        let spans = &batch()[..1];
        let mut out = vec![1, 2, 3];
        encode_export_request(&EncodedResource::default(), spans, &mut out);
        assert_eq!(
            out,
            theirs(&empty, spans).encode_to_vec(),
            "and `out` is replaced"
        );
    }

    #[test]
    fn lengths_past_one_and_two_varint_bytes_are_canonical() {
        let resource = resource();
        let mut spans = Vec::new();
        for i in 0..300_u64 {
            let mut span = batch().swap_remove(0);
            span.span_context = context(TRACE, i + 1, TraceFlags::SAMPLED, false, "");
            spans.push(span);
        }
        let bytes = ours(&resource, &spans);
        assert!(bytes.len() > 1 << 14, "a three-byte top-level length");
        assert_eq!(bytes, theirs(&resource, &spans).encode_to_vec());
    }

    #[test]
    fn headers_are_trimmed_and_percent_decoded() {
        assert_eq!(
            parse_headers(Some(" api-key = abc , tenant=t%201 ,k=a=b"), None),
            [
                ("api-key".to_owned(), "abc".to_owned()),
                ("tenant".to_owned(), "t 1".to_owned()),
                ("k".to_owned(), "a=b".to_owned()),
            ]
        );
        assert_eq!(
            parse_headers(None, Some("a=100%,b=%zz,c=%C3%A9,d=%FF")),
            [
                ("a".to_owned(), "100%".to_owned()),
                ("b".to_owned(), "%zz".to_owned()),
                ("c".to_owned(), "é".to_owned()),
                ("d".to_owned(), "%FF".to_owned()),
            ],
            "an invalid escape or invalid UTF-8 leaves the value as written"
        );
        assert!(parse_headers(None, None).is_empty());
    }

    #[test]
    fn trace_headers_override_the_general_ones_per_key() {
        assert_eq!(
            parse_headers(
                Some("Authorization=general,x-general=1"),
                Some("authorization=traces,x-traces=2")
            ),
            [
                ("Authorization".to_owned(), "traces".to_owned()),
                ("x-general".to_owned(), "1".to_owned()),
                ("x-traces".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[test]
    fn malformed_header_pairs_are_ignored() {
        assert_eq!(
            parse_headers(Some("novalue,=nokey,empty=,  ,,=,ok=1,"), Some("=")),
            [("ok".to_owned(), "1".to_owned())]
        );
    }

    fn exporter(url: &str, timeout: Duration) -> OtlpHttpExporter {
        OtlpHttpExporter::with_headers(
            url,
            timeout,
            vec![
                ("Authorization".into(), "Bearer s3cr3t-token".into()),
                ("x-tenant".into(), "tenant-value".into()),
                ("bad header".into(), "dropped".into()),
            ],
        )
        .expect("exporter")
    }

    #[test]
    fn debug_shows_header_names_and_no_secrets() {
        let exporter = exporter(
            "http://user:hunter2@127.0.0.1:4318/v1/traces",
            Duration::from_secs(1),
        );
        let debug = format!("{exporter:?}");
        for shown in ["authorization", "x-tenant", "127.0.0.1:4318/v1/traces"] {
            assert!(debug.contains(shown), "{shown} missing from {debug}");
        }
        for hidden in ["s3cr3t", "tenant-value", "hunter2", "user", "dropped"] {
            assert!(!debug.contains(hidden), "{hidden} leaked in {debug}");
        }
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let timeout = Duration::from_secs(1);
        assert!(matches!(
            OtlpHttpExporter::with_headers("not a url", timeout, vec![]),
            Err(OtlpError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            OtlpHttpExporter::with_headers("ftp://collector/v1/traces", timeout, vec![]),
            Err(OtlpError::UnsupportedScheme(_))
        ));
    }

    struct Received {
        request_line: String,
        /// Names lowercased.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A one-connection HTTP server on loopback: reads `requests` requests,
    /// reports each, and answers each with `response`, or, when it is `None`,
    /// never answers (holding the connection until `release` is dropped or
    /// ten seconds pass).
    fn serve(
        requests: usize,
        response: Option<&'static str>,
    ) -> (String, mpsc::Receiver<Received>, mpsc::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let (report, received) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        thread::spawn(move || {
            for _ in 0..requests {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.trim_end().split_once(':') {
                        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                    }
                }
                let length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let _ = report.send(Received {
                    request_line: request_line.trim_end().to_owned(),
                    headers,
                    body,
                });
                let mut stream = reader.into_inner();
                match response {
                    Some(response) => {
                        let _ = stream.write_all(response.as_bytes());
                        let _ = stream.flush();
                    }
                    None => {
                        let _ = released.recv_timeout(Duration::from_secs(10));
                    }
                }
            }
        });
        (url, received, release)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    #[test]
    fn an_export_posts_protobuf_with_the_headers() {
        let (url, received, _release) = serve(1, Some(OK));
        let exporter = exporter(&url, Duration::from_secs(5));
        let spans = batch();
        assert!(matches!(block_on(exporter.export(spans.clone())), Ok(())));

        let request = received
            .recv_timeout(Duration::from_secs(5))
            .expect("a request");
        assert_eq!(request.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        assert_eq!(request.header("authorization"), Some("Bearer s3cr3t-token"));
        assert_eq!(request.header("x-tenant"), Some("tenant-value"));
        let decoded = ExportTraceServiceRequest::decode(request.body.as_slice()).expect("decodes");
        // No `set_resource` yet: the empty resource, as opentelemetry-otlp sends then.
        let expected = theirs(&Resource::builder_empty().build(), &spans);
        assert_eq!(by_scope_name(decoded), by_scope_name(expected));
    }

    #[test]
    fn a_non_2xx_answer_is_an_error_naming_the_status() {
        let (url, _received, _release) = serve(
            1,
            Some("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!"),
        );
        let exporter = exporter(&url, Duration::from_secs(5));
        match block_on(exporter.export(batch())) {
            Err(OTelSdkError::InternalFailure(message)) => {
                assert!(message.contains("500"), "{message}");
                assert!(!message.contains("s3cr3t"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_collector_that_never_answers_times_out() {
        let (url, _received, release) = serve(1, None);
        let exporter = exporter(&url, Duration::from_millis(300));
        let started = Instant::now();
        let result = block_on(exporter.export(batch()));
        assert!(
            matches!(result, Err(OTelSdkError::Timeout(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(release);
    }

    #[test]
    fn no_export_after_shutdown() {
        let exporter = exporter("http://127.0.0.1:9/v1/traces", Duration::from_secs(1));
        assert!(exporter.shutdown().is_ok());
        assert!(matches!(
            block_on(exporter.export(batch())),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert!(matches!(
            exporter.shutdown(),
            Err(OTelSdkError::AlreadyShutdown)
        ));
    }

    #[test]
    fn built_and_driven_inside_a_tokio_runtime_it_still_works() {
        let (url, received, _release) = serve(1, Some(OK));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async {
            let exporter = exporter(&url, Duration::from_secs(5));
            exporter.export(batch()).await
        });
        assert!(result.is_ok(), "{result:?}");
        assert!(received.recv_timeout(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn the_batch_processor_sends_the_providers_resource() {
        let (url, received, _release) = serve(1, Some(OK));
        // A clone shares the attribute map, so the two list them in one order.
        let resource = resource();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter(&url, Duration::from_secs(5)))
            .with_resource(resource.clone())
            .build();
        provider.tracer("slidegate").in_span("checked", |_| {});
        assert!(provider.force_flush().is_ok());

        let request = received
            .recv_timeout(Duration::from_secs(5))
            .expect("a request");
        let decoded = ExportTraceServiceRequest::decode(request.body.as_slice()).expect("decodes");
        let resource_spans = &decoded.resource_spans[0];
        assert_eq!(
            resource_spans.resource,
            theirs(&resource, &[]).resource_spans[0].resource
        );
        assert_eq!(
            resource_spans.schema_url,
            "https://opentelemetry.io/schemas/1.21.0"
        );
        assert_eq!(resource_spans.scope_spans[0].spans[0].name, "checked");
        assert!(provider.shutdown().is_ok());
    }
}
