//! Trace context across process boundaries: W3C `traceparent` / `tracestate`
//! and `baggage` in NATS headers (every request and publish) and in HTTP
//! headers (calls to model servers), plus span attribute helpers following the
//! OpenTelemetry messaging conventions.
//!
//! Injecting and extracting goes through the global propagator that
//! [`crate::telemetry::init`] installs; before that (or with
//! `OTEL_SDK_DISABLED=true`) they do nothing.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
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
