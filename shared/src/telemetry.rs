//! Logging, tracing and metrics setup, in one place for every binary.
//!
//! - **Logs** go to stderr as text (default) or JSON lines (`--log-format
//!   json`, each line carrying the `trace_id`/`span_id` of the span it was
//!   logged in). The filter comes from `--log-level` / `RUST_LOG`.
//! - **Traces** are OpenTelemetry spans made from `tracing` spans. Trace and
//!   span ids always exist (so results, events and log lines carry a trace id
//!   and a caller's `traceparent` is honoured); spans are *exported* only when
//!   an OTLP endpoint is configured by the standard variables:
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` default, `http/json`, or
//!   `grpc` with the `otlp-grpc` feature), `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_SERVICE_NAME` (default: the binary's name), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`.
//!   `OTEL_SDK_DISABLED=true` turns OpenTelemetry off entirely;
//!   `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` turn off one signal.
//! - **Metrics** go to the same endpoint (`/v1/metrics`) every
//!   `OTEL_METRIC_EXPORT_INTERVAL` ms (default 60 000).
//!
//! The batch exporters run on their own threads with a blocking HTTP client;
//! [`Telemetry::shutdown`] flushes them from a blocking task.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The name of the tracer (the instrumentation scope of every span of ours).
pub const TRACER_NAME: &str = "orch";

/// Where spans recorded after the fact ([`crate::trace::RecordedSpan`]) go:
/// the tracer's own batch processor, set when traces are exported.
static RECORDER: OnceLock<Arc<BatchSpanProcessor>> = OnceLock::new();

/// Hands a finished span to the exporter (nothing when traces are not exported).
pub(crate) fn export_span(span: SpanData) {
    if let Some(batch) = RECORDER.get() {
        batch.on_end(span);
    }
}

/// Whether spans are exported (recorded spans are built only then).
pub(crate) fn exporting_spans() -> bool {
    RECORDER.get().is_some()
}

/// The tracer provider's processor: the batch processor it shares with
/// [`RECORDER`]. The resource was set on it before it was shared.
#[derive(Debug)]
struct SharedProcessor(Arc<BatchSpanProcessor>);

impl SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with `trace_id` and `span_id`.
    Json,
}

/// Logging and tracing flags shared by every binary.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long = "log-format", env = "ORCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `orch_coordinator=debug,async_nats=warn`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub level: String,
    /// Record prompts and model answers on provider spans
    /// (`gen_ai.input.messages` / `gen_ai.output.messages`). Off by default:
    /// they may hold personal data. Secrets are never recorded.
    #[arg(long = "otel-capture-content", env = "ORCH_OTEL_CAPTURE_CONTENT")]
    pub capture_content: bool,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            format: LogFormat::Text,
            level: "info".into(),
            capture_content: false,
        }
    }
}

/// Whether this process records prompt/response content on spans.
static CAPTURE_CONTENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `--otel-capture-content` is on in this process.
pub fn capture_content() -> bool {
    CAPTURE_CONTENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Handle that flushes telemetry on shutdown.
#[must_use = "call shutdown() before exiting so buffered telemetry is flushed"]
pub struct Telemetry {
    service: String,
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// The service name telemetry reports.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether spans are exported somewhere.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Flushes buffered spans and metrics and stops the exporters (bounded:
    /// an unreachable collector cannot hold the exit up for more than a few
    /// seconds). The exporters block, so this runs on a blocking thread.
    pub async fn shutdown(self) {
        let Telemetry {
            service,
            tracer,
            meter,
        } = self;
        if tracer.is_none() && meter.is_none() {
            return;
        }
        let flush = move || {
            if let Some(t) = tracer
                && let Err(e) = t.shutdown_with_timeout(Duration::from_secs(5))
            {
                eprintln!("{service}: flushing traces failed: {e}");
            }
            if let Some(m) = meter
                && let Err(e) = m.shutdown_with_timeout(Duration::from_secs(5))
            {
                eprintln!("{service}: flushing metrics failed: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let _ = rt.spawn_blocking(flush).await;
            }
            Err(_) => flush(),
        }
    }
}

/// What the environment asks of OpenTelemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OtelEnv {
    disabled: bool,
    export_traces: bool,
    export_metrics: bool,
    protocol: String,
    /// `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    service_name_set: bool,
}

impl OtelEnv {
    fn from(get: impl Fn(&str) -> Option<String>) -> OtelEnv {
        let set = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
        let none = |k: &str| get(k).is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let disabled =
            get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let any_endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        OtelEnv {
            disabled,
            export_traces: !disabled
                && !none("OTEL_TRACES_EXPORTER")
                && (any_endpoint || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            export_metrics: !disabled
                && !none("OTEL_METRICS_EXPORTER")
                && (any_endpoint || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
            protocol: get("OTEL_EXPORTER_OTLP_PROTOCOL")
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "http/protobuf".into()),
            service_name_set: set("OTEL_SERVICE_NAME")
                || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
                    a.split(',')
                        .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
                }),
        }
    }
}

/// `filter` with the OpenTelemetry SDK's own `info` notices ("Global tracer
/// provider is set", at every start) held back, unless the filter names
/// `opentelemetry` or asks for `debug`/`trace`.
fn quiet_sdk_notices(filter: &str) -> String {
    if filter.contains("opentelemetry") || filter.contains("debug") || filter.contains("trace") {
        filter.to_string()
    } else {
        format!("{filter},opentelemetry=warn,opentelemetry_sdk=warn")
    }
}

/// Installs the global subscriber, propagator and (when configured) the OTLP
/// exporters. Safe to call more than once: later calls keep the first setup,
/// so tests can run several components in one process.
pub fn init(service: &str, args: &LogArgs) -> Telemetry {
    CAPTURE_CONTENT.store(args.capture_content, std::sync::atomic::Ordering::Relaxed);
    let level = quiet_sdk_notices(&crate::config::quiet_nats_events(&args.level));
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|e| {
        eprintln!(
            "{service}: invalid log filter `{}` ({e}); using `info`",
            args.level
        );
        EnvFilter::new("info")
    });
    let env = OtelEnv::from(|k| std::env::var(k).ok());
    let none = Telemetry {
        service: service.to_string(),
        tracer: None,
        meter: None,
    };

    let fmt = match args.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .event_format(TextLines(tracing_subscriber::fmt::format()))
            .with_writer(std::io::stderr)
            // Colours only on a terminal: log files, journald and container
            // logs get plain text.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    if env.disabled {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return none;
    }

    let resource = {
        let b = opentelemetry_sdk::Resource::builder();
        let b = if env.service_name_set {
            b
        } else {
            b.with_service_name(service.to_string())
        };
        b.with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
    };

    if env.export_traces || env.export_metrics {
        // The exporters' HTTP client needs a TLS crypto provider (https
        // endpoints); an already installed one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut exporting_traces = false;
    let mut recorder = None;
    let (trace_client, metric_client) = otlp_clients(
        &|k| std::env::var(k).ok(),
        env.export_traces,
        env.export_metrics,
    );
    if env.export_traces {
        match trace_client.and_then(|c| span_exporter(&env.protocol, c)) {
            Ok(exporter) => {
                // One batch processor, shared by the tracer and the spans
                // recorded after the fact (`trace::RecordedSpan`). It gets the
                // resource now: once shared, the provider cannot set it.
                let mut batch = BatchSpanProcessor::builder(exporter).build();
                batch.set_resource(&resource);
                let batch = Arc::new(batch);
                tracer_builder = tracer_builder.with_span_processor(SharedProcessor(batch.clone()));
                recorder = Some(batch);
                exporting_traces = true;
            }
            Err(e) => eprintln!("{service}: OTLP trace export disabled: {e}"),
        }
    }
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer(TRACER_NAME);

    // Spans of our code and the HTTP/NATS libraries' warnings; never the
    // exporter's own logs (they would feed back into the exporter).
    let otel_targets = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("opentelemetry-otlp", LevelFilter::OFF)
        .with_target("async_nats", LevelFilter::WARN)
        .with_target("hyper", LevelFilter::WARN)
        .with_target("hyper_util", LevelFilter::WARN)
        .with_target("h2", LevelFilter::WARN)
        .with_target("reqwest", LevelFilter::WARN)
        .with_target("rustls", LevelFilter::WARN);
    // Log lines within a task trace (no `tracing` span around them) become
    // its span events, under the same filter.
    let task_events = TaskEvents.with_filter(otel_targets.clone());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        // Busy/idle time attributes cost a clock read on every poll of every
        // instrumented future; spans keep their start and end times anyway.
        .with_tracked_inactivity(false)
        .with_filter(otel_targets);

    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(task_events)
        .try_init()
        .is_err()
    {
        // Someone set up telemetry in this process already: keep theirs.
        let _ = tracer_provider.shutdown();
        return none;
    }
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    // Task traces (`trace::TaskTrace`) sample as the provider does: its
    // default configuration reads the same OTEL_TRACES_SAMPLER variables.
    crate::trace::install_sampler(opentelemetry_sdk::trace::Config::default().sampler);
    if let Some(batch) = recorder {
        let _ = RECORDER.set(batch);
    }

    let mut meter = None;
    if env.export_metrics {
        match metric_client.and_then(|c| metric_exporter(&env.protocol, c)) {
            Ok(exporter) => {
                let provider = SdkMeterProvider::builder()
                    .with_resource(resource)
                    .with_reader(PeriodicReader::builder(exporter).build())
                    .build();
                opentelemetry::global::set_meter_provider(provider.clone());
                meter = Some(provider);
            }
            Err(e) => eprintln!("{service}: OTLP metric export disabled: {e}"),
        }
    }
    if exporting_traces || meter.is_some() {
        tracing::info!(
            service,
            protocol = %env.protocol,
            traces = exporting_traces,
            metrics = meter.is_some(),
            "exporting OpenTelemetry data over OTLP"
        );
    }
    Telemetry {
        service: service.to_string(),
        tracer: exporting_traces.then_some(tracer_provider),
        meter,
    }
}

/// `fn $name(protocol, client) -> Result<$exporter, String>`: an OTLP exporter
/// for `protocol`, over `client` when TLS settings asked for one. (Span and
/// metric exporter builders are distinct types with the same methods.)
macro_rules! otlp_exporter {
    ($name:ident, $exporter:ty) => {
        fn $name(
            protocol: &str,
            client: Option<reqwest::blocking::Client>,
        ) -> Result<$exporter, String> {
            use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
            let b = <$exporter>::builder();
            let http = |p: Protocol| {
                let h = b.clone().with_http().with_protocol(p);
                match client.clone() {
                    Some(c) => h.with_http_client(c).build(),
                    None => h.build(),
                }
            };
            match protocol {
                "http/protobuf" => http(Protocol::HttpBinary),
                "http/json" => http(Protocol::HttpJson),
                #[cfg(feature = "otlp-grpc")]
                "grpc" => b.with_tonic().build(),
                other => return Err(unsupported(other)),
            }
            .map_err(|e| e.to_string())
        }
    };
}

otlp_exporter!(span_exporter, opentelemetry_otlp::SpanExporter);
otlp_exporter!(metric_exporter, opentelemetry_otlp::MetricExporter);

/// TLS settings for an OTLP/HTTP exporter from the standard variables
/// `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE` (PEM file of the CAs to trust
/// besides the system's), `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY` (PEM
/// files for mutual TLS); the per-signal variable wins. `None` when none is set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OtlpTls {
    ca: Option<Vec<u8>>,
    /// Client certificate chain followed by its key, both PEM.
    identity: Option<Vec<u8>>,
    timeout: Duration,
}

fn otlp_tls(get: &dyn Fn(&str) -> Option<String>, signal: &str) -> Result<Option<OtlpTls>, String> {
    let var = |name: &str| {
        get(&format!("OTEL_EXPORTER_OTLP_{signal}_{name}"))
            .or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{name}")))
            .filter(|v| !v.trim().is_empty())
    };
    let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
        var(name)
            .map(|path| {
                std::fs::read(path.trim())
                    .map_err(|e| format!("OTEL_EXPORTER_OTLP_{name} `{}`: {e}", path.trim()))
            })
            .transpose()
    };
    let ca = read("CERTIFICATE")?;
    let identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            Some(cert)
        }
        (None, None) => None,
        _ => {
            return Err(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
                    .into(),
            );
        }
    };
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    // A custom client does not inherit the exporter's default timeout.
    let timeout = var("TIMEOUT")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    Ok(Some(OtlpTls {
        ca,
        identity,
        timeout,
    }))
}

type ClientResult = Result<Option<reqwest::blocking::Client>, String>;

/// The (traces, metrics) exporters' HTTP clients: custom only where TLS
/// variables ask for one, and built once when both signals have the same
/// settings (the usual case: the general variables only).
fn otlp_clients(
    get: &dyn Fn(&str) -> Option<String>,
    traces: bool,
    metrics: bool,
) -> (ClientResult, ClientResult) {
    let settings = |on: bool, signal: &str| if on { otlp_tls(get, signal) } else { Ok(None) };
    let (t, m) = (settings(traces, "TRACES"), settings(metrics, "METRICS"));
    let build =
        |tls: Result<Option<OtlpTls>, String>| tls.and_then(|t| t.map(OtlpTls::client).transpose());
    if t.is_ok() && t == m {
        let shared = build(t);
        return (shared.clone(), shared);
    }
    (build(t), build(m))
}

impl OtlpTls {
    /// The exporter's blocking HTTP client with these settings.
    fn client(self) -> Result<reqwest::blocking::Client, String> {
        let mut b = reqwest::blocking::Client::builder().timeout(self.timeout);
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?;
            if certs.is_empty() {
                return Err("OTEL_EXPORTER_OTLP_CERTIFICATE holds no PEM certificate".into());
            }
            b = b.tls_certs_merge(certs);
        }
        if let Some(pem) = &self.identity {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / _KEY: {e}"))?;
            b = b.identity(id);
        }
        // The blocking client runs its own runtime; it must not be built (or
        // dropped) on an async runtime thread, which init may be called from.
        std::thread::spawn(move || b.build().map_err(|e| e.to_string()))
            .join()
            .map_err(|_| "building the OTLP HTTP client panicked".to_string())?
    }
}

fn unsupported(protocol: &str) -> String {
    if protocol == "grpc" {
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs a build with the `otlp-grpc` feature; use http/protobuf".into()
    } else {
        format!("unknown OTEL_EXPORTER_OTLP_PROTOCOL `{protocol}` (http/protobuf, http/json, grpc)")
    }
}

/// Text log lines (tracing-subscriber's format), with the `trace_id` of the
/// running [`crate::trace::TaskTrace`] appended to lines logged within one: a
/// task trace is not a `tracing` span, so the line has no span prefix to
/// tell which task it belongs to. (Such lines are formatted through a buffer,
/// without colours.)
struct TextLines<F>(F);

impl<S, N, F> FormatEvent<S, N> for TextLines<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, _)) = crate::trace::TaskTrace::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} trace_id={trace_id}")
    }
}

/// JSON log lines: timestamp, level, target, the event's fields, the current
/// span (name and fields) and the OpenTelemetry `trace_id` / `span_id` of the
/// innermost span that has them.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use serde_json::{Map, Value};
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), crate::wire::now_rfc3339().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = JsonVisitor(Map::new());
        event.record(&mut fields);
        for (k, v) in fields.0 {
            line.insert(k, v);
        }
        if let Some(scope) = ctx.event_scope() {
            let mut ids = Vec::new();
            for span in scope {
                if ids.is_empty() {
                    let mut obj = Map::new();
                    obj.insert("name".into(), span.name().into());
                    if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                        && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f)
                    {
                        obj.extend(m);
                    }
                    line.insert("span".into(), Value::Object(obj));
                }
                ids.push(span.id());
            }
            // No span extensions are borrowed any more: the OpenTelemetry layer
            // may need to lock them to build a span's context.
            let found = tracing::dispatcher::get_default(|dispatch| {
                ids.iter().find_map(|id| {
                    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
                    let sc = cx.span().span_context().clone();
                    sc.is_valid()
                        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
                })
            });
            if let Some((t, s)) = found {
                line.insert("trace_id".into(), t.into());
                line.insert("span_id".into(), s.into());
            }
        } else if let Some((t, s)) = crate::trace::TaskTrace::current_ids() {
            line.insert("trace_id".into(), t.into());
            line.insert("span_id".into(), s.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Turns log lines logged within a [`crate::trace::TaskTrace`] (and outside
/// any `tracing` span, whose OpenTelemetry layer takes those) into span
/// events of the task: the message is the event's name, the other fields
/// (with `level` and `target`) its attributes.
struct TaskEvents;

impl<S> tracing_subscriber::Layer<S> for TaskEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if ctx.lookup_current().is_some() {
            return;
        }
        crate::trace::TaskTrace::with_current(|task| {
            if !task.recording() {
                return;
            }
            let meta = event.metadata();
            let mut fields = JsonVisitor(serde_json::Map::new());
            event.record(&mut fields);
            let name = match fields.0.remove("message") {
                Some(serde_json::Value::String(m)) => m,
                Some(other) => other.to_string(),
                None => meta.name().to_string(),
            };
            let mut attributes = vec![
                opentelemetry::KeyValue::new("level", meta.level().as_str()),
                opentelemetry::KeyValue::new("target", meta.target().to_string()),
            ];
            attributes.extend(fields.0.into_iter().map(|(k, v)| {
                let value: opentelemetry::Value = match v {
                    serde_json::Value::Bool(b) => b.into(),
                    serde_json::Value::Number(n) if n.is_i64() => {
                        n.as_i64().unwrap_or_default().into()
                    }
                    serde_json::Value::Number(n) => n.as_f64().unwrap_or_default().into(),
                    serde_json::Value::String(s) => s.into(),
                    other => other.to_string().into(),
                };
                opentelemetry::KeyValue::new(k, value)
            }));
            task.add_event(name, attributes);
        });
    }
}

struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor {
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &tracing::field::Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), v.to_string().into());
    }
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A log destination the test can read.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_within_a_task_trace_end_with_its_trace_id() {
        crate::trace::install_sampler(Box::new(opentelemetry_sdk::trace::Sampler::ParentBased(
            Box::new(opentelemetry_sdk::trace::Sampler::AlwaysOn),
        )));
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(TextLines(tracing_subscriber::fmt::format()))
            .with_writer(move || out.clone())
            .finish();
        let task = crate::trace::TaskTrace::start(
            "orch.task",
            opentelemetry::trace::SpanKind::Server,
            &opentelemetry::Context::new(),
            vec![],
        );
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            let id = rt.block_on(task.run(async {
                tracing::info!(slot = "kimi_k2", "inside");
                crate::trace::current_trace_id()
            }));
            tracing::info!("outside");
            id.expect("a trace id")
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("inside slot=\"kimi_k2\""), "{text}");
        assert!(
            lines[0].ends_with(&format!(" trace_id={trace_id}")),
            "{text}"
        );
        assert!(
            lines[1].contains("outside") && !lines[1].contains("trace_id"),
            "{text}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> OtelEnv {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtelEnv::from(|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let e = env(&[]);
        assert!(!e.disabled && !e.export_traces && !e.export_metrics);
        assert_eq!(e.protocol, "http/protobuf");
        assert!(!e.service_name_set);
    }

    #[test]
    fn endpoints_and_switches_are_read() {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert!(e.export_traces && e.export_metrics);
        let e = env(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON"),
        ]);
        assert!(e.export_traces && !e.export_metrics);
        assert_eq!(e.protocol, "http/json");
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert!(e.export_traces && !e.export_metrics);
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(e.disabled && !e.export_traces && !e.export_metrics);
    }

    #[test]
    fn a_configured_service_name_wins() {
        assert!(env(&[("OTEL_SERVICE_NAME", "mine")]).service_name_set);
        assert!(env(&[("OTEL_RESOURCE_ATTRIBUTES", "team=a, service.name=x")]).service_name_set);
        assert!(!env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=x")]).service_name_set);
    }

    #[test]
    fn the_sdks_start_notices_are_held_back_unless_asked_for() {
        assert_eq!(
            quiet_sdk_notices("info,async_nats=warn"),
            "info,async_nats=warn,opentelemetry=warn,opentelemetry_sdk=warn"
        );
        for kept in ["debug", "info,opentelemetry=info", "trace"] {
            assert_eq!(quiet_sdk_notices(kept), kept);
        }
    }

    #[test]
    fn unknown_protocols_are_explained() {
        assert!(
            span_exporter("carrier-pigeon", None)
                .unwrap_err()
                .contains("http/protobuf")
        );
    }

    fn tls(pairs: &[(&str, &str)], signal: &str) -> Result<Option<OtlpTls>, String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        otlp_tls(&|k| m.get(k).cloned(), signal)
    }

    #[test]
    fn tls_files_are_read_per_signal_with_the_general_variable_as_fallback() {
        let dir = tempfile_dir();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (ca, ca_traces) = (file("ca.pem", "CA"), file("ca-traces.pem", "TRACES-CA"));
        let (cert, key) = (file("c.pem", "CERT"), file("k.pem", "KEY"));
        assert_eq!(tls(&[], "TRACES"), Ok(None));
        let pairs = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_traces.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ];
        let traces = tls(&pairs, "TRACES").unwrap().unwrap();
        assert_eq!(traces.ca.as_deref(), Some(&b"TRACES-CA"[..]));
        assert_eq!(traces.identity.as_deref(), Some(&b"CERT\nKEY"[..]));
        assert_eq!(traces.timeout, Duration::from_millis(2500));
        let metrics = tls(&pairs, "METRICS").unwrap().unwrap();
        assert_eq!(metrics.ca.as_deref(), Some(&b"CA"[..]));
        // Half a client identity, a missing file, a file that is no PEM: refused with the variable's name.
        let half = tls(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str())], "TRACES");
        assert!(half.unwrap_err().contains("go together"));
        let missing = tls(
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")],
            "TRACES",
        );
        assert!(
            missing
                .unwrap_err()
                .contains("OTEL_EXPORTER_OTLP_CERTIFICATE")
        );
        let not_pem = tls(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str())], "TRACES")
            .unwrap()
            .unwrap()
            .client();
        assert!(
            not_pem.unwrap_err().contains("CERTIFICATE"),
            "a CA file without PEM"
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "orch-shared-otlp-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
