//! A fake OpenAI-compatible Chat Completions server (`POST /v1/chat/completions`)
//! on `127.0.0.1:0`, faithful to the wire protocol: the JSON and SSE reply
//! shapes, `usage`, error bodies (`{"error": {"message", "type", "code"}}`),
//! `retry-after-ms` / `Retry-After` on 429s, `Authorization: Bearer` checks,
//! `response_format` validation (a `json_schema` must be named and strict-valid;
//! `json_object` needs the word "json" in the messages).
//!
//! Every request is recorded (method, path, headers, JSON body, arrival time)
//! so tests assert what our code *sends*. Replies are scripted per request
//! ([`FakeOpenAi::push`]), falling back to a default reply; a reply is
//! streamed as SSE when the request asks for `stream: true`, and a few
//! replies break streams on purpose (stalled, cut, malformed).
//!
//! [`Recorded`] and [`Server`] are shared with the Ollama fake.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The raw body.
    pub raw: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub(crate) fn new(method: &Method, uri: &Uri, headers: &HeaderMap, raw: Bytes) -> Recorded {
        Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
            raw,
            at: Instant::now(),
        }
    }
}

/// A local HTTP server task, aborted on drop.
pub struct Server {
    addr: SocketAddr,
    join: JoinHandle<()>,
    scheme: &'static str,
}

impl Server {
    /// Serves `router` on an ephemeral loopback port.
    pub async fn start(router: Router) -> Server {
        Server::serve(loopback().await, router, "http")
    }

    /// Serves `router` over TLS with `config` on an ephemeral loopback port.
    pub async fn start_tls(router: Router, config: Arc<rustls::ServerConfig>) -> Server {
        let listener = TlsListener {
            tcp: loopback().await,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        };
        Server::serve(listener, router, "https")
    }

    fn serve<L>(listener: L, router: Router, scheme: &'static str) -> Server
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake server address: {e}"));
        let join = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "fake server stopped");
            }
        });
        Server { addr, join, scheme }
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding a fake server: {e}"))
}

/// TCP accept, then the TLS handshake; a failed or stalled handshake is
/// logged and the next connection taken.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "fake server accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A TLS server configuration from PEM: the server's chain and key and, for
/// mutual TLS, the CA whose client certificates it demands.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("server certificate PEM: {e}"));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .unwrap_or_else(|e| panic!("server key PEM: {e}"));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("TLS versions: {e}"));
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.unwrap_or_else(|e| panic!("client CA PEM: {e}"));
                roots.add(cert).unwrap_or_else(|e| panic!("client CA: {e}"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap_or_else(|e| panic!("client verifier: {e}"));
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| panic!("server certificate: {e}"));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// A successful completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The assistant message content.
    pub content: String,
    /// The `model` field of the reply; `None` echoes the requested model.
    pub model: Option<String>,
    /// `(prompt_tokens, completion_tokens)`; `None` omits `usage`.
    pub usage: Option<(u64, u64)>,
    /// Content deltas a streamed reply is split into.
    pub chunks: usize,
}

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A completion; streamed as SSE if the request says `stream: true`.
    Ok(Completion),
    /// An HTTP error with a JSON body and extra headers.
    Error {
        /// Status code.
        status: u16,
        /// JSON body.
        body: Value,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// 200 with a body that is not JSON.
    MalformedBody,
    /// SSE headers and the first `chunks` events, then silence (the connection stays open).
    StalledStream {
        /// Events sent before the stall (0: headers only).
        chunks: usize,
    },
    /// Part of the answer, then the stream ends without `data: [DONE]`.
    CutStream,
    /// A stream with a chunk that is not JSON in the middle.
    MalformedChunk,
    /// An error event in the middle of a stream.
    StreamError(String),
    /// Waits, then sends the inner reply.
    Delay(Duration, Box<Reply>),
}

fn error_body(message: &str, kind: &str, code: Option<&str>, param: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

impl Reply {
    /// A completion with `content`, usage 11/7, in 3 stream chunks.
    pub fn ok(content: impl Into<String>) -> Reply {
        Reply::Ok(Completion {
            content: content.into(),
            model: None,
            usage: Some((11, 7)),
            chunks: 3,
        })
    }

    /// A completion whose content is `value` as JSON text.
    pub fn json(value: &Value) -> Reply {
        Reply::ok(value.to_string())
    }

    /// Changes the reported model (builder style; only for [`Reply::Ok`]).
    pub fn model(self, model: &str) -> Reply {
        match self {
            Reply::Ok(mut c) => {
                c.model = Some(model.to_string());
                Reply::Ok(c)
            }
            other => other,
        }
    }

    /// Changes the reported usage (builder style; only for [`Reply::Ok`]).
    pub fn usage(self, prompt: u64, completion: u64) -> Reply {
        match self {
            Reply::Ok(mut c) => {
                c.usage = Some((prompt, completion));
                Reply::Ok(c)
            }
            other => other,
        }
    }

    /// Changes the number of stream chunks (builder style; only for [`Reply::Ok`]).
    pub fn chunks(self, n: usize) -> Reply {
        match self {
            Reply::Ok(mut c) => {
                c.chunks = n.max(1);
                Reply::Ok(c)
            }
            other => other,
        }
    }

    /// Any HTTP error with an OpenAI error body.
    pub fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Reply {
        Reply::Error {
            status,
            body: error_body(message, kind, code, None),
            headers: vec![],
        }
    }

    /// 429 with `retry-after-ms` (as OpenAI sends it).
    pub fn rate_limited_ms(ms: u64) -> Reply {
        Reply::Error {
            status: 429,
            body: error_body(
                "Rate limit reached for requests per min. Please try again later.",
                "requests",
                Some("rate_limit_exceeded"),
                None,
            ),
            headers: vec![("retry-after-ms".into(), ms.to_string())],
        }
    }

    /// 429 with `Retry-After` in seconds.
    pub fn rate_limited_secs(secs: u64) -> Reply {
        Reply::Error {
            status: 429,
            body: error_body(
                "Rate limit reached. Please try again later.",
                "requests",
                Some("rate_limit_exceeded"),
                None,
            ),
            headers: vec![("retry-after".into(), secs.to_string())],
        }
    }

    /// 429 `insufficient_quota`: the account has no credit.
    pub fn insufficient_quota() -> Reply {
        Reply::error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        )
    }

    /// 500 as OpenAI words it.
    pub fn server_error() -> Reply {
        Reply::error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        )
    }

    /// 401 with OpenAI's error body.
    pub fn unauthorized() -> Reply {
        Reply::error(
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )
    }

    /// 404 for an unknown model.
    pub fn model_not_found(model: &str) -> Reply {
        Reply::error(
            404,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
        )
    }
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    requests: Mutex<Vec<Recorded>>,
    key: Mutex<Option<String>>,
    reject_json_schema: AtomicBool,
    ids: AtomicU64,
}

/// The fake server. Dropping it stops it.
pub struct FakeOpenAi {
    server: Server,
    shared: Arc<Shared>,
}

impl FakeOpenAi {
    /// Starts a fake that answers `Reply::ok("{}")` unless scripted otherwise.
    pub async fn start() -> FakeOpenAi {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::ok("{}")),
            requests: Mutex::new(Vec::new()),
            key: Mutex::new(None),
            reject_json_schema: AtomicBool::new(false),
            ids: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/v1/chat/completions", axum::routing::any(handle))
            .fallback(not_found)
            .with_state(shared.clone());
        FakeOpenAi {
            server: Server::start(router).await,
            shared,
        }
    }

    /// The API root to configure (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.url())
    }

    /// Queues a reply for the next unanswered request.
    pub fn push(&self, reply: Reply) {
        if let Ok(mut s) = self.shared.script.lock() {
            s.push_back(reply);
        }
    }

    /// The reply used when the script is empty.
    pub fn set_default(&self, reply: Reply) {
        if let Ok(mut d) = self.shared.default.lock() {
            *d = reply;
        }
    }

    /// Answers 401 (echoing the presented key, as OpenAI does) to requests
    /// without `Authorization: Bearer <key>`.
    pub fn require_key(&self, key: &str) {
        if let Ok(mut k) = self.shared.key.lock() {
            *k = Some(key.to_string());
        }
    }

    /// Behaves like a server without `json_schema` support (400 on it).
    pub fn reject_json_schema(&self) {
        self.shared.reject_json_schema.store(true, Ordering::SeqCst);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &error_body(
            &format!("Invalid URL ({method} {})", uri.path()),
            "invalid_request_error",
            None,
            None,
        ),
        &[],
    )
}

fn json_response(status: StatusCode, body: &Value, headers: &[(String, String)]) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("building a fake response: {e}"))
}

fn invalid(message: &str, param: Option<&str>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &error_body(message, "invalid_request_error", None, param),
        &[],
    )
}

/// OpenAI's checks of a strict schema: every object closed and fully required.
fn strict_problem(schema: &Value, path: &str) -> Option<String> {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Some(format!(
                    "In context={path}, 'additionalProperties' is required to be supplied and to be false."
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object)?;
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (k, v) in props {
                if !required.contains(&k.as_str()) {
                    return Some(format!(
                        "In context={path}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{k}'."
                    ));
                }
                if let Some(p) = strict_problem(v, &format!("{path}.{k}")) {
                    return Some(p);
                }
            }
            None
        }
        Some("array") => schema
            .get("items")
            .and_then(|i| strict_problem(i, &format!("{path}[]"))),
        _ => None,
    }
}

/// Validates a request the way the real API does; `Err` is the 400 to send.
fn validate(shared: &Shared, body: &Value) -> Result<(), Box<Response>> {
    if !body.get("model").is_some_and(Value::is_string) {
        return Err(Box::new(invalid(
            "you must provide a model parameter",
            Some("model"),
        )));
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(Box::new(invalid(
            "Missing required parameter: 'messages'.",
            Some("messages"),
        )));
    };
    if messages.is_empty() {
        return Err(Box::new(invalid(
            "'messages' must contain at least one message.",
            Some("messages"),
        )));
    }
    for m in messages {
        if let Some(parts) = m.get("content").and_then(Value::as_array) {
            for p in parts {
                if p["type"] == "image_url" {
                    let url = p["image_url"]["url"].as_str().unwrap_or("");
                    if !(url.starts_with("data:image/") || url.starts_with("https://")) {
                        return Err(Box::new(invalid(
                            "Invalid image URL: expected a data URL or an https URL.",
                            Some("messages"),
                        )));
                    }
                }
            }
        }
    }
    match body
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        Some("json_schema") => {
            if shared.reject_json_schema.load(Ordering::SeqCst) {
                return Err(Box::new(invalid(
                    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                    Some("response_format"),
                )));
            }
            let js = &body["response_format"]["json_schema"];
            let name = js["name"].as_str().unwrap_or("");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Box::new(invalid(
                    "Invalid 'response_format.json_schema.name': must match ^[a-zA-Z0-9_-]{1,64}$.",
                    Some("response_format"),
                )));
            }
            if !js["schema"].is_object() {
                return Err(Box::new(invalid(
                    "Missing required parameter: 'response_format.json_schema.schema'.",
                    Some("response_format"),
                )));
            }
            if js["strict"] == true
                && let Some(p) = strict_problem(&js["schema"], "()")
            {
                return Err(Box::new(invalid(
                    &format!("Invalid schema for response_format '{name}': {p}"),
                    Some("response_format"),
                )));
            }
        }
        Some("json_object") => {
            let mentions_json = messages.iter().any(|m| {
                m["content"]
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("json")
            });
            if !mentions_json {
                return Err(Box::new(invalid(
                    "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                    Some("messages"),
                )));
            }
        }
        Some("text") | None => {}
        Some(other) => {
            return Err(Box::new(invalid(
                &format!(
                    "Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."
                ),
                Some("response_format.type"),
            )));
        }
    }
    Ok(())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let rec = Recorded::new(&method, &uri, &headers, raw);
    let body = rec.body.clone();
    let auth = rec.header("authorization").map(str::to_string);
    if let Ok(mut r) = shared.requests.lock() {
        r.push(rec);
    }
    if method != Method::POST {
        return invalid("Only POST is supported on this endpoint.", None);
    }
    if body.is_null() {
        return invalid("We could not parse the JSON body of your request.", None);
    }
    let expected = shared.key.lock().ok().and_then(|k| k.clone());
    if let Some(key) = expected {
        let presented = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if presented != key {
            // OpenAI quotes the key it refused (partly masked); we quote it
            // whole, the worst case for our scrubbing.
            return json_response(
                StatusCode::UNAUTHORIZED,
                &error_body(
                    &format!(
                        "Incorrect API key provided: {presented}. You can find your API key at https://platform.openai.com/account/api-keys."
                    ),
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    None,
                ),
                &[],
            );
        }
    }
    if let Err(r) = validate(&shared, &body) {
        return *r;
    }
    let reply = shared
        .script
        .lock()
        .ok()
        .and_then(|mut s| s.pop_front())
        .or_else(|| shared.default.lock().ok().map(|d| d.clone()))
        .unwrap_or_else(|| Reply::ok("{}"));
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    respond(reply, &body, id).await
}

fn chunk(id: u64, model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let v = json!({
        "id": format!("chatcmpl-fake-{id}"),
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {v}\n\n"))
}

fn usage_chunk(id: u64, model: &str, usage: Option<(u64, u64)>) -> Bytes {
    let (p, c) = usage.unwrap_or((0, 0));
    let v = json!({
        "id": format!("chatcmpl-fake-{id}"),
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    });
    Bytes::from(format!("data: {v}\n\n"))
}

/// The content split into `n` pieces on char boundaries.
fn pieces(content: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = content.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Every SSE event of a complete streamed completion (ending with `[DONE]`).
fn stream_events(c: &Completion, model: &str, id: u64, include_usage: bool) -> Vec<Bytes> {
    let mut ev = vec![chunk(
        id,
        model,
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    for p in pieces(&c.content, c.chunks) {
        ev.push(chunk(id, model, json!({"content": p}), None));
    }
    ev.push(chunk(id, model, json!({}), Some("stop")));
    if include_usage {
        ev.push(usage_chunk(id, model, c.usage));
    }
    ev.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ev
}

fn sse(events: Vec<Bytes>, then_hang: bool) -> Response {
    let s = futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    let body = if then_hang {
        Body::from_stream(s.chain(futures::stream::pending()))
    } else {
        Body::from_stream(s)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|e| panic!("building a fake response: {e}"))
}

fn sample() -> Completion {
    Completion {
        content: r#"{"answer": "partial"}"#.into(),
        model: None,
        usage: Some((1, 1)),
        chunks: 4,
    }
}

async fn respond(reply: Reply, req: &Value, id: u64) -> Response {
    let requested = req["model"].as_str().unwrap_or("unknown").to_string();
    let stream = req["stream"] == true;
    let include_usage = req.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    match reply {
        Reply::Delay(d, inner) => {
            tokio::time::sleep(d).await;
            Box::pin(respond(*inner, req, id)).await
        }
        Reply::Ok(c) => {
            let model = c.model.clone().unwrap_or(requested);
            if stream {
                return sse(stream_events(&c, &model, id, include_usage), false);
            }
            let mut body = json!({
                "id": format!("chatcmpl-fake-{id}"),
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": c.content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
            });
            if let Some((p, k)) = c.usage {
                body["usage"] =
                    json!({"prompt_tokens": p, "completion_tokens": k, "total_tokens": p + k});
            }
            json_response(StatusCode::OK, &body, &[])
        }
        Reply::Error {
            status,
            body,
            headers,
        } => json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
            &headers,
        ),
        Reply::MalformedBody => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"id": "chatcmpl-fake", "choices": [{"message": "#,
            ))
            .unwrap_or_else(|e| panic!("building a fake response: {e}")),
        Reply::StalledStream { chunks } => {
            let all = stream_events(&sample(), &requested, id, include_usage);
            sse(all.into_iter().take(chunks).collect(), true)
        }
        Reply::CutStream => {
            let all = stream_events(&sample(), &requested, id, include_usage);
            // Role chunk and two content deltas, then the connection closes.
            sse(all.into_iter().take(3).collect(), false)
        }
        Reply::MalformedChunk => {
            let mut all = stream_events(&sample(), &requested, id, include_usage);
            all.insert(
                2,
                Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n"),
            );
            sse(all, false)
        }
        Reply::StreamError(message) => {
            let mut all = stream_events(&sample(), &requested, id, include_usage);
            let err = json!({"error": {"message": message, "type": "server_error", "code": null}});
            all.insert(2, Bytes::from(format!("data: {err}\n\n")));
            sse(all, false)
        }
    }
}
