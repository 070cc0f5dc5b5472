//! Trace context across process boundaries: W3C `traceparent` / `tracestate`
//! and `baggage` in NATS headers (every request and publish) and in HTTP
//! headers (calls to model servers), plus span attribute helpers following the
//! OpenTelemetry messaging conventions.
//!
//! Injecting and extracting goes through the global propagator that
//! [`crate::telemetry::init`] installs; before that (or with
//! `OTEL_SDK_DISABLED=true`) they do nothing.

use std::time::SystemTime;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanLinks,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// W3C trace context header names (lower case, as the spec writes them).
pub const TRACEPARENT: &str = "traceparent";

/// Writes a context into NATS headers.
struct NatsInjector<'a>(&'a mut HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads a context from NATS headers. NATS header names are case-sensitive;
/// the W3C names are lower case, but a sender that capitalised them is still
/// understood.
struct NatsExtractor<'a>(&'a HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.0.get(key) {
            return Some(v.as_str());
        }
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Injects `span`'s trace context into NATS headers.
pub fn inject_span(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    inject_context(&cx, headers);
}

/// Injects the current span's trace context into NATS headers.
pub fn inject(headers: &mut HeaderMap) {
    inject_span(&Span::current(), headers);
}

/// Injects an OpenTelemetry context into NATS headers.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut NatsInjector(headers));
    });
}

/// Injects the current span's trace context into HTTP request headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HttpInjector(headers));
    });
}

/// The context a message's headers carry (empty when they carry none).
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(h) => opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsExtractor(h))),
        None => Context::new(),
    }
}

/// Makes `span` a child of the trace context in `headers`, if they carry
/// one. Call before the span is first entered.
pub fn follow(span: &Span, headers: Option<&HeaderMap>) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` (32 hex digits), if it has a valid one.
pub fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id of the current span.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&Span::current())
}

/// Records an OpenTelemetry status of error with a description and the
/// `error.type` attribute on `span`. Set through the OpenTelemetry layer rather
/// than declared span fields: every declared field costs each open span an
/// attribute slot, and spans of waiting tasks are what a busy process holds.
pub fn record_error(span: &Span, error_type: &str, description: &str) {
    span.set_status(opentelemetry::trace::Status::error(description.to_string()));
    span.set_attribute("error.type", error_type.to_string());
}

/// A span recorded after the fact. While it is open it is its ids and start
/// time (~90 bytes, no allocation, nothing entered or polled); when it ends it
/// is handed to the exporter whole, with its name, kind, attributes and status.
///
/// For spans a busy process holds by the thousand while it waits, such as the
/// coordinator's phase and dispatch-attempt spans: a `tracing` span with its
/// OpenTelemetry data holds 0.7-1.9 KB for its whole life (measured), and its
/// instrumentation runs on every poll. The cost is that log lines are not
/// nested in it (they stay in the enclosing `tracing` span, with its trace id).
///
/// Sampling follows the parent, like the SDK's default parent-based sampler:
/// the span is sampled if its parent is, and invalid if the parent is.
#[derive(Debug)]
pub struct RecordedSpan {
    cx: SpanContext,
    parent: SpanId,
    start: SystemTime,
}

/// What a [`RecordedSpan`] is, known when it ends.
pub struct SpanEnd {
    /// The span's name.
    pub name: std::borrow::Cow<'static, str>,
    /// Its kind (client, producer, internal, ...).
    pub kind: SpanKind,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Its status (`Unset` unless it failed).
    pub status: Status,
}

impl RecordedSpan {
    /// A span that starts now, a child of `parent` (in the same trace).
    pub fn child_of(parent: &SpanContext) -> RecordedSpan {
        let cx = if parent.is_valid() {
            SpanContext::new(
                parent.trace_id(),
                RandomIdGenerator::default().new_span_id(),
                parent.trace_flags(),
                false,
                parent.trace_state().clone(),
            )
        } else {
            SpanContext::empty_context()
        };
        RecordedSpan {
            cx,
            parent: parent.span_id(),
            start: SystemTime::now(),
        }
    }

    /// A span that starts now, a child of the current `tracing` span.
    pub fn child_of_current() -> RecordedSpan {
        let cx = Span::current().context();
        RecordedSpan::child_of(cx.span().span_context())
    }

    /// Its ids: the parent of whatever it does (and of remote spans, through
    /// [`RecordedSpan::inject`]).
    pub fn span_context(&self) -> &SpanContext {
        &self.cx
    }

    /// Injects its trace context into NATS headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if self.cx.is_valid() {
            inject_context(
                &Context::new().with_remote_span_context(self.cx.clone()),
                headers,
            );
        }
    }

    /// Whether ending it exports anything (it is sampled and spans are
    /// exported): when not, there is no need to build its [`SpanEnd`].
    pub fn recording(&self) -> bool {
        self.cx.is_sampled() && crate::telemetry::exporting_spans()
    }

    /// Ends the span now and hands it to the exporter, if it is
    /// [`recording`](Self::recording).
    pub fn end(self, end: SpanEnd) {
        if !self.recording() {
            return;
        }
        crate::telemetry::export_span(SpanData {
            span_context: self.cx,
            parent_span_id: self.parent,
            parent_span_is_remote: false,
            span_kind: end.kind,
            name: end.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: end.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: end.status,
            instrumentation_scope: scope().clone(),
        });
    }
}

/// The instrumentation scope of every span of ours (the tracer's, `orch`).
fn scope() -> &'static InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE.get_or_init(|| InstrumentationScope::builder(crate::telemetry::TRACER_NAME).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extractor_reads_any_case() {
        let mut h = HeaderMap::new();
        h.insert("Traceparent", PARENT);
        let cx = TraceContextPropagator::new().extract(&NatsExtractor(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote());
    }

    #[test]
    fn injector_round_trips() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, PARENT);
        let prop = TraceContextPropagator::new();
        let cx = prop.extract(&NatsExtractor(&h));
        let mut out = HeaderMap::new();
        prop.inject_context(&cx, &mut NatsInjector(&mut out));
        assert_eq!(out.get(TRACEPARENT).map(|v| v.as_str()), Some(PARENT));
    }

    #[test]
    fn garbage_traceparent_is_no_context() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "00-not-a-trace");
        let cx = TraceContextPropagator::new().extract(&NatsExtractor(&h));
        assert!(!cx.span().span_context().is_valid());
        assert!(!extract(None).span().span_context().is_valid());
    }
}
