//! A fake Ollama server (`POST /api/chat`) on `127.0.0.1:0`, faithful to the
//! native API: `stream` defaults to true when omitted, streamed replies are
//! NDJSON (`application/x-ndjson`) ending with a `"done": true` line carrying
//! `prompt_eval_count`/`eval_count`, errors are `{"error": "..."}`, an unknown
//! model is a 404 (`model "x" not found, try pulling it first`), images must
//! be raw base64 (a `data:` URL fails to decode, as it does in Ollama), and
//! `format` must be `"json"` or a JSON Schema object.
//!
//! Every request is recorded for assertions; replies are scripted per request
//! ([`FakeOllama::push`]) with a default; some replies break the stream on
//! purpose (stalled, cut, malformed line, mid-stream error).

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::openai::{Recorded, Server};

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum OllamaReply {
    /// A reply with `content`; NDJSON lines if the request streams.
    Ok {
        /// The assistant message content.
        content: String,
        /// `model` of the reply; `None` echoes the request's.
        model: Option<String>,
        /// `prompt_eval_count`.
        prompt_eval_count: u64,
        /// `eval_count`.
        eval_count: u64,
        /// Content lines a streamed reply is split into.
        chunks: usize,
    },
    /// An HTTP error with Ollama's `{"error": message}` body.
    Error {
        /// Status code.
        status: u16,
        /// The message.
        message: String,
    },
    /// NDJSON headers and the first `lines` lines, then silence.
    StalledStream {
        /// Lines sent before the stall.
        lines: usize,
    },
    /// Some lines, then the stream ends before the `done` line.
    CutStream,
    /// A line that is not JSON in the middle of the stream.
    MalformedLine,
    /// An `{"error": ...}` line in the middle of the stream.
    StreamError(String),
    /// Waits, then sends the inner reply.
    Delay(Duration, Box<OllamaReply>),
}

impl OllamaReply {
    /// A reply with `content`, counts 21/9, in 3 stream lines.
    pub fn ok(content: impl Into<String>) -> OllamaReply {
        OllamaReply::Ok {
            content: content.into(),
            model: None,
            prompt_eval_count: 21,
            eval_count: 9,
            chunks: 3,
        }
    }

    /// A reply whose content is `value` as JSON text.
    pub fn json(value: &Value) -> OllamaReply {
        OllamaReply::ok(value.to_string())
    }

    /// A 500 with Ollama's error body.
    pub fn server_error(message: &str) -> OllamaReply {
        OllamaReply::Error {
            status: 500,
            message: message.into(),
        }
    }
}

struct Shared {
    script: Mutex<VecDeque<OllamaReply>>,
    default: Mutex<OllamaReply>,
    requests: Mutex<Vec<Recorded>>,
    models: Mutex<Option<BTreeSet<String>>>,
}

/// The fake server. Dropping it stops it.
pub struct FakeOllama {
    server: Server,
    shared: Arc<Shared>,
}

impl FakeOllama {
    /// Starts a fake that knows every model and answers `ok("{}")` unless scripted.
    pub async fn start() -> FakeOllama {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(OllamaReply::ok("{}")),
            requests: Mutex::new(Vec::new()),
            models: Mutex::new(None),
        });
        let router = Router::new()
            .route("/api/chat", axum::routing::any(handle))
            .fallback(not_found)
            .with_state(shared.clone());
        FakeOllama {
            server: Server::start(router).await,
            shared,
        }
    }

    /// The server root to configure (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        self.server.url()
    }

    /// Queues a reply for the next unanswered request.
    pub fn push(&self, reply: OllamaReply) {
        if let Ok(mut s) = self.shared.script.lock() {
            s.push_back(reply);
        }
    }

    /// The reply used when the script is empty.
    pub fn set_default(&self, reply: OllamaReply) {
        if let Ok(mut d) = self.shared.default.lock() {
            *d = reply;
        }
    }

    /// Only these models are "pulled"; others get Ollama's 404.
    pub fn set_models(&self, models: &[&str]) {
        if let Ok(mut m) = self.shared.models.lock() {
            *m = Some(models.iter().map(|s| (*s).to_string()).collect());
        }
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

fn error(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(json!({ "error": message }).to_string()))
        .unwrap_or_else(|e| panic!("building a fake response: {e}"))
}

async fn not_found() -> Response {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "text/plain")
        .body(Body::from("404 page not found"))
        .unwrap_or_else(|e| panic!("building a fake response: {e}"))
}

fn validate(shared: &Shared, body: &Value) -> Result<(), Box<Response>> {
    let Some(model) = body["model"].as_str().filter(|m| !m.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "model is required",
        )));
    };
    if let Some(known) = shared.models.lock().ok().and_then(|m| m.clone())
        && !known.contains(model)
    {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        )));
    }
    let Some(messages) = body["messages"].as_array() else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "messages is required",
        )));
    };
    for m in messages {
        if let Some(images) = m.get("images").and_then(Value::as_array) {
            for img in images {
                let text = img.as_str().unwrap_or("");
                if base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .is_err()
                {
                    return Err(Box::new(error(
                        StatusCode::BAD_REQUEST,
                        "illegal base64 data at input byte 4",
                    )));
                }
            }
        }
    }
    match body.get("format") {
        None | Some(Value::Object(_)) => {}
        Some(Value::String(s)) if s == "json" || s.is_empty() => {}
        Some(other) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!("invalid format: {other}; expected \"json\" or a JSON schema"),
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
    if let Ok(mut r) = shared.requests.lock() {
        r.push(rec);
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if body.is_null() {
        return error(StatusCode::BAD_REQUEST, "invalid character in request body");
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
        .unwrap_or_else(|| OllamaReply::ok("{}"));
    respond(reply, &body).await
}

const CREATED_AT: &str = "2025-01-01T00:00:00.000000Z";

fn line(model: &str, content: &str) -> Bytes {
    let v = json!({
        "model": model,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": content},
        "done": false,
    });
    Bytes::from(format!("{v}\n"))
}

fn final_object(model: &str, content: &str, prompt: u64, eval: u64) -> Value {
    json!({
        "model": model,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": content},
        "done_reason": "stop",
        "done": true,
        "total_duration": 1_500_000_000u64,
        "load_duration": 10_000_000u64,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 200_000_000u64,
        "eval_count": eval,
        "eval_duration": 1_000_000_000u64,
    })
}

fn stream_lines(content: &str, model: &str, chunks: usize, prompt: u64, eval: u64) -> Vec<Bytes> {
    let chars: Vec<char> = content.chars().collect();
    let size = chars.len().div_ceil(chunks.max(1)).max(1);
    let mut out: Vec<Bytes> = chars
        .chunks(size)
        .map(|c| line(model, &c.iter().collect::<String>()))
        .collect();
    out.push(Bytes::from(format!(
        "{}\n",
        final_object(model, "", prompt, eval)
    )));
    out
}

fn ndjson(lines: Vec<Bytes>, then_hang: bool) -> Response {
    let s = futures::stream::iter(lines.into_iter().map(Ok::<_, Infallible>));
    let body = if then_hang {
        Body::from_stream(s.chain(futures::stream::pending()))
    } else {
        Body::from_stream(s)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|e| panic!("building a fake response: {e}"))
}

async fn respond(reply: OllamaReply, req: &Value) -> Response {
    let requested = req["model"].as_str().unwrap_or("unknown").to_string();
    // Ollama streams unless told not to.
    let stream = req.get("stream") != Some(&Value::Bool(false));
    let sample = || stream_lines(r#"{"description": "partial"}"#, &requested, 4, 1, 1);
    match reply {
        OllamaReply::Delay(d, inner) => {
            tokio::time::sleep(d).await;
            Box::pin(respond(*inner, req)).await
        }
        OllamaReply::Ok {
            content,
            model,
            prompt_eval_count,
            eval_count,
            chunks,
        } => {
            let model = model.unwrap_or(requested);
            if stream {
                return ndjson(
                    stream_lines(&content, &model, chunks, prompt_eval_count, eval_count),
                    false,
                );
            }
            let body = final_object(&model, &content, prompt_eval_count, eval_count);
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json; charset=utf-8")
                .body(Body::from(body.to_string()))
                .unwrap_or_else(|e| panic!("building a fake response: {e}"))
        }
        OllamaReply::Error { status, message } => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &message,
        ),
        OllamaReply::StalledStream { lines } => {
            ndjson(sample().into_iter().take(lines).collect(), true)
        }
        OllamaReply::CutStream => {
            let mut all = sample();
            all.pop();
            ndjson(all, false)
        }
        OllamaReply::MalformedLine => {
            let mut all = sample();
            all.insert(1, Bytes::from_static(b"{\"model\": \"x\", \"message\": \n"));
            ndjson(all, false)
        }
        OllamaReply::StreamError(message) => {
            let mut all = sample();
            all.insert(1, Bytes::from(format!("{}\n", json!({ "error": message }))));
            ndjson(all, false)
        }
    }
}
