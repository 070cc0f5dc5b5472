//! An OTLP/HTTP receiver (`POST /v1/traces`, `/v1/metrics`) on an ephemeral
//! loopback port, decoding the protobuf bodies with `opentelemetry-proto`, so
//! tests can point real processes at it (`OTEL_EXPORTER_OTLP_ENDPOINT`) and
//! assert on exactly what they exported. Raw bodies are kept too, to search
//! them for things that must never be exported (secrets).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

use crate::fake::openai::Server;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// `service.name` of the resource that exported it.
    pub service: String,
    /// Span name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Event names with their attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// Start and end, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Name of the instrumentation scope that made it.
    pub scope: String,
}

impl SpanRecord {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<SpanRecord>,
    metrics: Vec<String>,
    raw: Vec<u8>,
    errors: Vec<String>,
}

/// The receiver; stops on drop.
pub struct OtlpReceiver {
    server: Server,
    state: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    /// Starts listening (plain HTTP).
    pub async fn start() -> OtlpReceiver {
        let state = Arc::new(Mutex::new(Received::default()));
        let server = Server::start(routes(&state)).await;
        OtlpReceiver { server, state }
    }

    /// Starts listening over HTTPS with `tls` (see
    /// [`tls_config`](crate::fake::openai::tls_config)).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> OtlpReceiver {
        let state = Arc::new(Mutex::new(Received::default()));
        let server = Server::start_tls(routes(&state), tls).await;
        OtlpReceiver { server, state }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.server.url()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.lock().spans.clone()
    }

    /// Names of every metric received so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.lock().metrics.clone()
    }

    /// Whether any exported body contains `needle`.
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        let g = self.lock();
        !needle.is_empty() && g.raw.windows(needle.len()).any(|w| w == needle)
    }

    /// Bodies that failed to decode.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn routes(state: &Arc<Mutex<Received>>) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(state.clone())
}

async fn traces(State(state): State<Arc<Mutex<Received>>>, body: Bytes) -> StatusCode {
    let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
    g.raw.extend_from_slice(&body);
    let req = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            g.errors.push(format!("traces: {e}"));
            return StatusCode::BAD_REQUEST;
        }
    };
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| attrs(&r.attributes).remove("service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in ss.spans {
                g.spans.push(SpanRecord {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    scope: scope.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

async fn metrics(State(state): State<Arc<Mutex<Received>>>, body: Bytes) -> StatusCode {
    let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
    g.raw.extend_from_slice(&body);
    match ExportMetricsServiceRequest::decode(body) {
        Ok(req) => {
            for rm in req.resource_metrics {
                for sm in rm.scope_metrics {
                    for m in sm.metrics {
                        g.metrics.push(m.name);
                    }
                }
            }
            StatusCode::OK
        }
        Err(e) => {
            g.errors.push(format!("metrics: {e}"));
            StatusCode::BAD_REQUEST
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn render(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
