//! Trace context across process boundaries: W3C `traceparent` / `tracestate`
//! and `baggage` in NATS headers (every request and publish) and in HTTP
//! headers (calls to model servers), plus span attribute helpers following the
//! OpenTelemetry messaging conventions.
//!
//! Injecting and extracting goes through the global propagator that
//! [`crate::telemetry::init`] installs; before that (or with
//! `OTEL_SDK_DISABLED=true`) they do nothing.
//!
//! Spans come in two kinds. Short-lived work (a worker's job, a provider
//! call) uses `tracing` spans, exported by `tracing-opentelemetry`. What a busy
//! process holds by the thousand while it waits (the coordinator's tasks,
//! phases and dispatch attempts) is recorded after the fact: a
//! [`TaskTrace`] and [`RecordedSpan`]s keep ids and start times while open and
//! go to the same exporter whole when they end.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample, SpanData, SpanEvents,
    SpanLinks,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// W3C trace context header names (lower case, as the spec writes them).
pub const TRACEPARENT: &str = "traceparent";

/// Writes a context into NATS headers.
struct NatsInjector<'a>(&'a mut HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when it is empty; W3C trace
        // context leaves an empty one out (one header less on every message).
        if !value.is_empty() {
            self.0.insert(key, value.as_str());
        }
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
        if value.is_empty() {
            return;
        }
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
    inject_context(&current_context(), headers);
}

/// The current trace context: the running [`TaskTrace`]'s, else the current
/// `tracing` span's.
pub fn current_context() -> Context {
    TASK.try_with(TaskTrace::context)
        .unwrap_or_else(|_| Span::current().context())
}

/// The ids of the current trace context (see [`current_context`]), read
/// without building a context when a task trace is running.
fn current_span_context() -> SpanContext {
    TASK.try_with(|task| {
        task.span
            .as_ref()
            .map_or_else(SpanContext::empty_context, |s| s.cx.clone())
    })
    .unwrap_or_else(|_| Span::current().context().span().span_context().clone())
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
    let cx = current_context();
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

/// The trace id of the current trace context (see [`current_context`]).
pub fn current_trace_id() -> Option<String> {
    let sc = current_span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
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
    parent_is_remote: bool,
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
    /// Its events.
    pub events: Vec<opentelemetry::trace::Event>,
    /// How many more events it had than it kept.
    pub dropped_events: u32,
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
            parent_is_remote: false,
            start: SystemTime::now(),
        }
    }

    /// A span that starts now, a child of the current trace context (see
    /// [`current_context`]).
    pub fn child_of_current() -> RecordedSpan {
        RecordedSpan::child_of(&current_span_context())
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
    /// exported).
    pub fn recording(&self) -> bool {
        self.cx.is_sampled() && crate::telemetry::exporting_spans()
    }

    /// Ends the span now and hands it to the exporter, if it is
    /// [`recording`](Self::recording); only then is `end` called to describe
    /// it (so a span nobody exports costs no name or attributes).
    pub fn end(self, end: impl FnOnce() -> SpanEnd) {
        if !self.recording() {
            return;
        }
        let end = end();
        crate::telemetry::export_span(SpanData {
            span_context: self.cx,
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: end.kind,
            name: end.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: end.attributes,
            dropped_attributes_count: 0,
            events: {
                let mut events = SpanEvents::default();
                events.events = end.events;
                events.dropped_count = end.dropped_events;
                events
            },
            links: SpanLinks::default(),
            status: end.status,
            instrumentation_scope: scope().clone(),
        });
    }
}

tokio::task_local! {
    /// The trace of the task whose future is running (see [`TaskTrace::run`]).
    static TASK: TaskTrace;
}

/// Decides whether a new task trace is sampled: the SDK's configured sampler
/// (`OTEL_TRACES_SAMPLER`), installed by [`crate::telemetry::init`]. Without
/// it (no telemetry) task traces have no ids, as `tracing` spans then do not.
static SAMPLER: OnceLock<Box<dyn ShouldSample>> = OnceLock::new();

/// Installs the sampler task traces use (the same the tracer provider uses).
pub(crate) fn install_sampler(sampler: Box<dyn ShouldSample>) {
    let _ = SAMPLER.set(sampler);
}

/// The trace of one long-waiting unit of work, such as a coordinator's task:
/// a span recorded after the fact ([`RecordedSpan`]) that is the current
/// trace context for everything its future does.
///
/// Within [`TaskTrace::run`], [`current_context`], [`current_trace_id`],
/// [`inject`] and [`RecordedSpan::child_of_current`] use it; JSON log lines
/// carry its `trace_id`/`span_id`, and log lines at the exported levels become
/// its span events (as `tracing-opentelemetry` does for `tracing` spans).
/// Attributes and status can be added while it runs; it ends, and is
/// exported, when its future finishes or is dropped.
///
/// A `tracing` span with its OpenTelemetry data costs a waiting task ~1.3 KB
/// (measured) and instrumentation on every poll; this costs its ids, start
/// time and whatever is added to it.
///
/// Every task in flight holds one inside its tokio task, whose allocation
/// grows in steps of 128 bytes: what is only needed to export it (its name and
/// kind too) is boxed with what is added, and the box is a `Cell` (taken out
/// and put back) rather than a `RefCell` with its borrow flag.
pub struct TaskTrace {
    span: Option<RecordedSpan>,
    /// `None` unless recording: a task that is not exported holds nothing.
    added: Cell<Option<Box<Added>>>,
}

/// What a recording [`TaskTrace`] exports besides its ids: its name and
/// kind, and what is added to it while it runs.
struct Added {
    name: &'static str,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    events: Vec<opentelemetry::trace::Event>,
    /// Events past [`MAX_EVENTS`] (counted, not kept).
    dropped_events: u32,
    status: Status,
}

impl Added {
    fn new(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Added {
        Added {
            name,
            kind,
            attributes,
            events: Vec::new(),
            dropped_events: 0,
            status: Status::Unset,
        }
    }

    /// Keeps `attribute` unless [`MAX_ATTRIBUTES`] are kept already.
    fn attribute(&mut self, attribute: KeyValue) {
        if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push(attribute);
        }
    }
}

/// Most events a task trace keeps: the SDK's default span limit. A task that
/// logs on every retry for minutes must not grow without bound.
const MAX_EVENTS: usize = 128;
/// Most attributes it keeps (the SDK's default too).
const MAX_ATTRIBUTES: usize = 128;

impl TaskTrace {
    /// A task trace that starts now: a child of `parent` (the context a
    /// message carried) when it is valid, else a new trace. The configured
    /// sampler decides, as the SDK would for a span.
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> TaskTrace {
        let psc = parent.span().span_context().clone();
        let cx = match SAMPLER.get() {
            None => SpanContext::empty_context(),
            Some(sampler) => {
                let ids = RandomIdGenerator::default();
                let trace_id = if psc.is_valid() {
                    psc.trace_id()
                } else {
                    ids.new_trace_id()
                };
                let decision =
                    sampler.should_sample(Some(parent), trace_id, name, &kind, &attributes, &[]);
                let sampled = decision.decision == SamplingDecision::RecordAndSample;
                SpanContext::new(
                    trace_id,
                    ids.new_span_id(),
                    psc.trace_flags().with_sampled(sampled),
                    false,
                    decision.trace_state,
                )
            }
        };
        let span = RecordedSpan {
            cx,
            parent: if psc.is_valid() {
                psc.span_id()
            } else {
                SpanId::INVALID
            },
            parent_is_remote: psc.is_valid() && psc.is_remote(),
            start: SystemTime::now(),
        };
        let added = span
            .recording()
            .then(|| Box::new(Added::new(name, kind, attributes)));
        TaskTrace {
            span: Some(span),
            added: Cell::new(added),
        }
    }

    /// `fut`, run with this as its trace; the span ends when it is done (or
    /// dropped). Not an `async fn`: that would store both twice.
    pub fn run<F: std::future::Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<TaskTrace, F> {
        TASK.scope(self, fut)
    }

    /// Calls `f` with the trace of the running task, if there is one.
    pub fn with_current<R>(f: impl FnOnce(&TaskTrace) -> R) -> Option<R> {
        TASK.try_with(f).ok()
    }

    /// The running task trace's trace id and span id (hex), if there is one
    /// with valid ids.
    pub fn current_ids() -> Option<(String, String)> {
        TASK.try_with(|task| {
            let span = task.span.as_ref()?;
            span.cx.is_valid().then(|| {
                (
                    span.cx.trace_id().to_string(),
                    span.cx.span_id().to_string(),
                )
            })
        })
        .ok()
        .flatten()
    }

    /// Its trace context (ids, sampled flag, trace state).
    pub fn context(&self) -> Context {
        match &self.span {
            Some(span) if span.cx.is_valid() => {
                Context::new().with_remote_span_context(span.cx.clone())
            }
            _ => Context::new(),
        }
    }

    /// Whether anything added to it is exported.
    pub fn recording(&self) -> bool {
        self.span.as_ref().is_some_and(RecordedSpan::recording)
    }

    /// Changes what will be exported, when it is [`recording`](Self::recording).
    fn add(&self, f: impl FnOnce(&mut Added)) {
        if let Some(mut added) = self.added.take() {
            f(&mut added);
            self.added.set(Some(added));
        }
    }

    /// Adds an attribute.
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.add(|a| a.attribute(attribute));
    }

    /// Marks it failed: an error status with `description`, and `error.type`.
    pub fn set_error(&self, error_type: &str, description: &str) {
        self.add(|a| {
            a.status = Status::error(description.to_string());
            a.attribute(KeyValue::new("error.type", error_type.to_string()));
        });
    }

    /// Adds a span event.
    pub fn add_event(&self, name: String, attributes: Vec<KeyValue>) {
        self.add(|a| {
            if a.events.len() < MAX_EVENTS {
                a.events.push(opentelemetry::trace::Event::new(
                    name,
                    SystemTime::now(),
                    attributes,
                    0,
                ));
            } else {
                a.dropped_events = a.dropped_events.saturating_add(1);
            }
        });
    }
}

impl Drop for TaskTrace {
    fn drop(&mut self) {
        if let Some(span) = self.span.take()
            && let Some(added) = self.added.get_mut().take()
        {
            span.end(|| SpanEnd {
                name: added.name.into(),
                kind: added.kind,
                attributes: added.attributes,
                status: added.status,
                events: added.events,
                dropped_events: added.dropped_events,
            });
        }
    }
}

/// The instrumentation scope of every span of ours (the tracer's, `orch`).
fn scope() -> &'static InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
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
        assert!(
            out.get("tracestate").is_none(),
            "an empty tracestate is left out"
        );

        // A caller's vendor entries go on, to NATS and to HTTP.
        h.insert("tracestate", "vendor=abc");
        let cx = prop.extract(&NatsExtractor(&h));
        let mut out = HeaderMap::new();
        prop.inject_context(&cx, &mut NatsInjector(&mut out));
        assert_eq!(
            out.get("tracestate").map(|v| v.as_str()),
            Some("vendor=abc")
        );
        let mut http_out = http::HeaderMap::new();
        prop.inject_context(&cx, &mut HttpInjector(&mut http_out));
        assert_eq!(
            http_out.get("tracestate").and_then(|v| v.to_str().ok()),
            Some("vendor=abc")
        );
        assert!(http_out.get(TRACEPARENT).is_some());
        let empty = prop.extract(&NatsExtractor(&{
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, PARENT);
            h
        }));
        let mut http_out = http::HeaderMap::new();
        prop.inject_context(&empty, &mut HttpInjector(&mut http_out));
        assert!(http_out.get("tracestate").is_none());
    }

    #[test]
    fn garbage_traceparent_is_no_context() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "00-not-a-trace");
        let cx = TraceContextPropagator::new().extract(&NatsExtractor(&h));
        assert!(!cx.span().span_context().is_valid());
        assert!(!extract(None).span().span_context().is_valid());
    }

    /// The ids of the `traceparent` in `h`: (trace id, span id, flags).
    fn traceparent(h: &HeaderMap) -> (String, String, String) {
        let v = h.get(TRACEPARENT).expect("a traceparent").as_str();
        let parts: Vec<&str> = v.split('-').collect();
        assert_eq!(parts.len(), 4, "{v}");
        (parts[1].into(), parts[2].into(), parts[3].into())
    }

    #[test]
    fn a_task_trace_keeps_at_most_the_span_limits() {
        let task = TaskTrace {
            span: None,
            added: Cell::new(Some(Box::new(Added::new(
                "orch.task",
                SpanKind::Server,
                vec![],
            )))),
        };
        for i in 0..200 {
            task.add_event(format!("retry {i}"), vec![]);
            task.set_attribute(KeyValue::new(format!("a{i}"), i64::from(i)));
        }
        let added = task.added.take().expect("recording");
        assert_eq!(added.events.len(), MAX_EVENTS);
        assert_eq!(added.dropped_events, 200 - MAX_EVENTS as u32);
        assert_eq!(added.events[0].name, "retry 0");
        assert_eq!(added.attributes.len(), MAX_ATTRIBUTES);
    }

    #[tokio::test]
    async fn a_task_trace_is_the_current_context_of_its_future() {
        install_sampler(Box::new(opentelemetry_sdk::trace::Sampler::ParentBased(
            Box::new(opentelemetry_sdk::trace::Sampler::AlwaysOn),
        )));
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        assert_eq!(current_trace_id(), None, "no trace outside a task");

        // A child of the caller's context: same trace, a new span, sampled.
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, PARENT);
        let task = TaskTrace::start(
            "orch.task",
            SpanKind::Server,
            &extract(Some(&incoming)),
            vec![KeyValue::new("messaging.system", "nats")],
        );
        let (task_span, child) = task
            .run(async {
                assert_eq!(
                    current_trace_id().as_deref(),
                    Some("4bf92f3577b34da6a3ce929d0e0e4736")
                );
                let mut out = HeaderMap::new();
                inject(&mut out);
                assert!(
                    out.get("tracestate").is_none(),
                    "an empty tracestate is left out"
                );
                let (trace, span, flags) = traceparent(&out);
                assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_ne!(span, "00f067aa0ba902b7", "the task has its own span id");
                assert_eq!(flags, "01");
                // It stays current across awaits and inside child spans' parents.
                tokio::task::yield_now().await;
                let child = RecordedSpan::child_of_current();
                (span, child)
            })
            .await;
        assert_eq!(
            child.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(child.parent.to_string(), task_span);
        assert!(!child.parent_is_remote);
        assert_eq!(current_trace_id(), None, "the trace ends with its future");

        // Without a caller's context: a new trace; an unsampled caller is followed.
        let root = TaskTrace::start("orch.task", SpanKind::Server, &Context::new(), vec![]);
        let root_id = root.run(async { current_trace_id() }).await;
        assert!(root_id.is_some_and(|id| id.len() == 32 && id != "0".repeat(32)));
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        let task = TaskTrace::start(
            "orch.task",
            SpanKind::Server,
            &extract(Some(&unsampled)),
            vec![],
        );
        assert!(!task.recording());
        let flags = task
            .run(async {
                let mut out = HeaderMap::new();
                inject(&mut out);
                traceparent(&out).2
            })
            .await;
        assert_eq!(flags, "00", "an unsampled caller's trace stays unsampled");
    }
}
