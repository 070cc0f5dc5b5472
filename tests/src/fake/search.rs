//! Fake search APIs and a fake web, for the web worker's tests.
//!
//! [`FakeSearch`] speaks three protocols on one port, each as the real
//! service does:
//! - SearxNG: `GET /search?q=..&format=json` → `{"query", "results": [{"url",
//!   "title", "content", "engine", ...}], "answers", "suggestions", ...}`; without
//!   `format=json` it serves the HTML results page, as SearxNG does.
//! - Brave: `GET /res/v1/web/search?q=..&count=N` with `X-Subscription-Token`
//!   → `{"type": "search", "query": {...}, "web": {"type": "search", "results":
//!   [{"title", "url", "description", ...}]}}`; a missing or wrong token gets
//!   Brave's 422 `SUBSCRIPTION_TOKEN_INVALID` error body.
//! - Tavily: `POST /search` with `Authorization: Bearer` and a JSON body →
//!   `{"query", "answer", "images", "results": [{"title", "url", "content",
//!   "score", "raw_content"}], "response_time"}`; a bad key gets 401
//!   `{"detail": {"error": ...}}`.
//!
//! Every request is recorded (method, path, query, headers, body) and the
//! replies are scriptable: a queue of [`Reply`]s is served first (errors,
//! 429 with `Retry-After`, garbage, delays), then the default results.
//!
//! [`PageServer`] serves the pages a search points at: static HTML, a page
//! whose text only JavaScript inserts, an endless page (size caps), binary
//! content, plain text, a Latin-1 page, redirect chains and loops, and a page
//! that never answers (timeouts).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One search hit to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Title.
    pub title: String,
    /// URL.
    pub url: String,
    /// Snippet (SearxNG `content`, Brave `description`, Tavily `content`).
    pub snippet: String,
}

impl Hit {
    /// A hit.
    pub fn new(title: &str, url: &str, snippet: &str) -> Hit {
        Hit {
            title: title.into(),
            url: url.into(),
            snippet: snippet.into(),
        }
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The protocol's success body with these hits.
    Results(Vec<Hit>),
    /// An error status with the protocol's error body and optional headers.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` value.
        retry_after: Option<String>,
    },
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 JSON of the wrong shape (`results` is a string).
    WrongShape,
    /// `307 Temporary Redirect` to this location.
    Redirect(String),
    /// Waits, then sends the inner reply.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    /// An error status.
    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After: <value>`.
    pub fn rate_limited(retry_after: &str) -> Reply {
        Reply::Status {
            status: 429,
            retry_after: Some(retry_after.into()),
        }
    }
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// Query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers (names lower-case), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Recorded {
    /// The first query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct SearchState {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    hits: Vec<Hit>,
    key: Option<String>,
}

type Shared = Arc<Mutex<SearchState>>;

/// The fake search server (all three protocols). Stops when dropped.
pub struct FakeSearch {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl FakeSearch {
    /// Starts on an ephemeral loopback port, answering with `hits` by default.
    pub async fn start(hits: Vec<Hit>) -> FakeSearch {
        let state: Shared = Arc::new(Mutex::new(SearchState {
            hits,
            ..SearchState::default()
        }));
        let app = Router::new()
            .route("/search", get(searxng).post(tavily))
            .route("/res/v1/web/search", get(brave))
            .with_state(state.clone());
        let (addr, task) = serve(app).await;
        FakeSearch { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (SearxNG's and Tavily's base URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Brave's base URL (`http://127.0.0.1:PORT/res/v1`).
    pub fn brave_url(&self) -> String {
        format!("http://{}/res/v1", self.addr)
    }

    /// Requires this API key (Brave token / Tavily bearer) from now on.
    pub fn require_key(&self, key: &str) {
        self.lock().key = Some(key.into());
    }

    /// Queues replies served (in order) before the default results.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// Replaces the default results.
    pub fn set_hits(&self, hits: Vec<Hit>) {
        self.lock().hits = hits;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SearchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeSearch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding a fake server: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("fake server address: {e}"));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake server on {addr} stopped: {e}");
        }
    });
    (addr, task)
}

fn record(
    state: &Shared,
    method: &Method,
    uri: &Uri,
    query: Vec<(String, String)>,
    headers: &HeaderMap,
    body: Bytes,
) -> (Reply, Option<String>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query,
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    });
    let reply = s
        .script
        .pop_front()
        .unwrap_or_else(|| Reply::Results(s.hits.clone()));
    (reply, s.key.clone())
}

/// Resolves delays, returning the reply to send (or the redirect response).
async fn settle(mut reply: Reply) -> Result<Reply, Response> {
    while let Reply::Delay(d, inner) = reply {
        tokio::time::sleep(d).await;
        reply = *inner;
    }
    match reply {
        Reply::Redirect(location) => Err((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
            "",
        )
            .into_response()),
        other => Ok(other),
    }
}

fn json_response(status: u16, body: Value, retry_after: Option<&str>) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn garbage() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "<html>this is not json{{{",
    )
        .into_response()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> &'a str {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

async fn searxng(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, _) = record(&state, &method, &uri, query.clone(), &headers, body);
    let q = param(&query, "q").to_string();
    let reply = match settle(reply).await {
        Ok(r) => r,
        Err(redirect) => return redirect,
    };
    match reply {
        Reply::Results(hits) if param(&query, "format") != "json" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!DOCTYPE html><html><head><title>{q} - SearXNG</title></head><body>{} results</body></html>",
                hits.len()
            ),
        )
            .into_response(),
        Reply::Results(hits) => {
            let results: Vec<Value> = hits
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    json!({
                        "url": h.url,
                        "title": h.title,
                        "content": h.snippet,
                        "engine": "duckduckgo",
                        "parsed_url": ["https", "example", "/", "", "", ""],
                        "template": "default.html",
                        "engines": ["duckduckgo", "brave"],
                        "positions": [i + 1],
                        "score": 2.0 / (i as f64 + 1.0),
                        "category": "general",
                        "publishedDate": null,
                        "thumbnail": "",
                    })
                })
                .collect();
            json_response(
                200,
                json!({
                    "query": q,
                    "number_of_results": 0,
                    "results": results,
                    "answers": [],
                    "corrections": [],
                    "infoboxes": [],
                    "suggestions": [],
                    "unresponsive_engines": [],
                }),
                None,
            )
        }
        // SearxNG's own errors are plain HTML/text pages.
        Reply::Status {
            status,
            retry_after,
        } => {
            let mut resp = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                match status {
                    403 => "Forbidden".to_string(),
                    429 => "Too Many Requests".to_string(),
                    _ => format!("<html><body>Error {status}</body></html>"),
                },
            )
                .into_response();
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Reply::Garbage => garbage(),
        Reply::WrongShape => json_response(200, json!({"query": q, "results": "nope"}), None),
        Reply::Delay(..) | Reply::Redirect(_) => unreachable!("settled"),
    }
}

fn brave_error(status: u16, code: &str, detail: &str) -> Value {
    json!({
        "type": "ErrorResponse",
        "error": {
            "id": "5a0c6c5e-8d7b-4a4e-9f0e-1f2d3c4b5a69",
            "status": status,
            "code": code,
            "detail": detail,
            "meta": {},
        },
        "time": 1_754_364_294u64,
    })
}

async fn brave(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, key) = record(&state, &method, &uri, query.clone(), &headers, body);
    let token = headers
        .get("x-subscription-token")
        .and_then(|v| v.to_str().ok());
    if let Some(key) = key
        && token != Some(key.as_str())
    {
        return json_response(
            422,
            brave_error(
                422,
                "SUBSCRIPTION_TOKEN_INVALID",
                "The provided subscription token is invalid.",
            ),
            None,
        );
    }
    let q = param(&query, "q").to_string();
    let reply = match settle(reply).await {
        Ok(r) => r,
        Err(redirect) => return redirect,
    };
    match reply {
        Reply::Results(hits) => {
            let count: usize = param(&query, "count").parse().unwrap_or(20);
            let results: Vec<Value> = hits
                .iter()
                .take(count)
                .map(|h| {
                    json!({
                        "title": h.title,
                        "url": h.url,
                        "is_source_local": false,
                        "is_source_both": false,
                        // Brave highlights matches with <strong>.
                        "description": format!("<strong>{}</strong>", h.snippet),
                        "profile": {"name": "Example", "url": h.url, "long_name": "example.com"},
                        "language": "en",
                        "family_friendly": true,
                        "type": "search_result",
                        "subtype": "generic",
                        "meta_url": {"scheme": "https", "netloc": "example.com", "path": "› page"},
                    })
                })
                .collect();
            let mut body = json!({
                "type": "search",
                "query": {"original": q, "show_strict_warning": false, "is_navigational": false},
                "mixed": {"type": "mixed", "main": [], "top": [], "side": []},
            });
            if !results.is_empty() {
                body["web"] =
                    json!({"type": "search", "results": results, "family_friendly": true});
            }
            json_response(200, body, None)
        }
        Reply::Status {
            status,
            retry_after,
        } => {
            let (code, detail) = match status {
                429 => ("RATE_LIMITED", "Request rate limit exceeded for plan."),
                _ => ("INTERNAL_ERROR", "Something went wrong."),
            };
            let mut resp = json_response(
                status,
                brave_error(status, code, detail),
                retry_after.as_deref(),
            );
            if status == 429 {
                let h = resp.headers_mut();
                h.insert("x-ratelimit-limit", HeaderValue::from_static("1, 2000"));
                h.insert("x-ratelimit-remaining", HeaderValue::from_static("0, 1500"));
                h.insert("x-ratelimit-reset", HeaderValue::from_static("1, 1419704"));
            }
            resp
        }
        Reply::Garbage => garbage(),
        Reply::WrongShape => json_response(
            200,
            json!({"type": "search", "web": {"results": "nope"}}),
            None,
        ),
        Reply::Delay(..) | Reply::Redirect(_) => unreachable!("settled"),
    }
}

async fn tavily(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (reply, key) = record(&state, &method, &uri, query, &headers, body);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(key) = key
        && bearer != Some(key.as_str())
    {
        return json_response(
            401,
            json!({"detail": {"error": "Unauthorized: missing or invalid API key."}}),
            None,
        );
    }
    let Some(q) = request.get("query").and_then(Value::as_str) else {
        return json_response(
            400,
            json!({"detail": {"error": "Invalid request: `query` is required."}}),
            None,
        );
    };
    let reply = match settle(reply).await {
        Ok(r) => r,
        Err(redirect) => return redirect,
    };
    match reply {
        Reply::Results(hits) => {
            let max = request
                .get("max_results")
                .and_then(Value::as_u64)
                .unwrap_or(5) as usize;
            let results: Vec<Value> = hits
                .iter()
                .take(max)
                .enumerate()
                .map(|(i, h)| {
                    json!({
                        "title": h.title,
                        "url": h.url,
                        "content": h.snippet,
                        "score": 0.9 - 0.1 * i as f64,
                        "raw_content": null,
                    })
                })
                .collect();
            json_response(
                200,
                json!({
                    "query": q,
                    "follow_up_questions": null,
                    "answer": null,
                    "images": [],
                    "results": results,
                    "response_time": 0.42,
                    "request_id": "0b5d7c1e-2f4a-4e8b-9c6d-3a1b2c4d5e6f",
                }),
                None,
            )
        }
        Reply::Status {
            status,
            retry_after,
        } => {
            let error = match status {
                429 => {
                    "Your request has been blocked due to excessive requests. Please reduce rate of requests."
                }
                432 => {
                    "This request exceeds your plan's set usage limit. Please upgrade your plan or contact support@tavily.com"
                }
                433 => {
                    "This request exceeds the pay-as-you-go limit. You can increase your limit on the Tavily dashboard."
                }
                _ => "Internal Server Error",
            };
            json_response(
                status,
                json!({"detail": {"error": error}}),
                retry_after.as_deref(),
            )
        }
        Reply::Garbage => garbage(),
        Reply::WrongShape => json_response(200, json!({"query": q, "results": "nope"}), None),
        Reply::Delay(..) | Reply::Redirect(_) => unreachable!("settled"),
    }
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

/// Text only the static page holds.
pub const STATIC_MARKER: &str = "STATIC-PAGE-MARKER";
/// Text the JS page's script builds at run time (never present in its HTML).
pub const JS_MARKER: &str = "RENDERED-BY-JAVASCRIPT";
/// Text at the start of the endless page.
pub const HUGE_START_MARKER: &str = "HUGE-PAGE-START";
/// Text only the plain-text page holds.
pub const PLAIN_MARKER: &str = "PLAIN-TEXT-MARKER";

#[derive(Default)]
struct PageState {
    paths: Mutex<Vec<String>>,
    huge_bytes_sent: AtomicU64,
}

/// A small web of test pages. Stops when dropped.
///
/// - `/static`: an article with [`STATIC_MARKER`], title "Static Test Page".
/// - `/js`: title "JS Test Page"; its text ([`JS_MARKER`]) is only inserted by a script.
/// - `/huge`: `text/html` that never ends (64 KiB chunks), starting with [`HUGE_START_MARKER`].
/// - `/binary`: `application/octet-stream`; `/image.png`: `image/png`.
/// - `/plain`: `text/plain` with [`PLAIN_MARKER`].
/// - `/latin1`: `text/html; charset=iso-8859-1` saying "café".
/// - `/loop`: redirects to itself, forever.
/// - `/redirect/{n}`: `n` redirects, then `/static`.
/// - `/slow`: answers after 60 s.
/// - `/status/{code}`: that status.
/// - `/no-type`: HTML without a `Content-Type`.
pub struct PageServer {
    addr: SocketAddr,
    state: Arc<PageState>,
    task: JoinHandle<()>,
}

impl PageServer {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> PageServer {
        let state = Arc::new(PageState::default());
        let app = Router::new()
            .route("/static", get(static_page))
            .route("/js", get(js_page))
            .route("/huge", get(huge_page))
            .route("/binary", get(binary))
            .route("/image.png", get(image))
            .route("/plain", get(plain))
            .route("/latin1", get(latin1))
            .route("/loop", get(redirect_loop))
            .route("/redirect/{n}", get(redirect_chain))
            .route("/slow", get(slow))
            .route("/status/{code}", get(status))
            .route("/no-type", get(no_type))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                log_path,
            ))
            .with_state(state.clone());
        let (addr, task) = serve(app).await;
        PageServer { addr, state, task }
    }

    /// The URL of `path` (`/static`, ...).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.state
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes of `/huge` handed to the server so far (what the client did not stop).
    pub fn huge_bytes_sent(&self) -> u64 {
        self.state.huge_bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn log_path(
    State(state): State<Arc<PageState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    state
        .paths
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(req.uri().path().to_string());
    next.run(req).await
}

fn html(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn static_page() -> Response {
    html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Static Test Page</title>
<style>body {{ font-family: sans-serif; }}</style>
<script>window.analytics = "ANALYTICS-SCRIPT";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>
<main><article>
<h1>Static Test Page</h1>
<p>This page is served as plain HTML. Its paragraphs are long enough, with enough commas, clauses, and words, that a readability scorer treats them as the article body.</p>
<p>The marker {STATIC_MARKER} sits in this second paragraph, which, like the first, is ordinary prose about nothing in particular, written to be read.</p>
<p>A third paragraph closes the article, adding a little more text, a few more commas, and the sense that this is real content rather than navigation.</p>
</article></main>
<footer>© Test Footer</footer>
</body></html>"#
    ))
}

async fn js_page() -> Response {
    // The marker is assembled at run time so it never appears in the HTML:
    // a fetcher that does not run scripts cannot see it, not even in <script>.
    let parts: Vec<String> = JS_MARKER.split('-').map(|p| format!("'{p}'")).collect();
    html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>JS Test Page</title></head>
<body>
<div id="app">Loading…</div>
<script>
  document.addEventListener('DOMContentLoaded', function () {{
    var marker = [{}].join('-');
    var app = document.getElementById('app');
    app.innerHTML = '';
    for (var i = 0; i < 3; i++) {{
      var p = document.createElement('p');
      p.textContent = 'Paragraph ' + (i + 1) + ' was written by a script, which is why only a browser sees it: ' + marker + '. It goes on for a while, with commas, clauses, and words.';
      app.appendChild(p);
    }}
  }});
</script>
</body></html>"#,
        parts.join(", ")
    ))
}

async fn huge_page(State(state): State<Arc<PageState>>) -> Response {
    let head = format!(
        "<!DOCTYPE html><html><head><title>Huge Test Page</title></head><body><p>{HUGE_START_MARKER} begins here.</p>"
    );
    let filler = Bytes::from(
        "<p>filler filler filler filler filler filler filler filler.</p>\n".repeat(1024),
    );
    let first = futures::stream::once(async move { Ok::<Bytes, Infallible>(Bytes::from(head)) });
    let rest = futures::stream::unfold((state, filler), |(state, filler)| async move {
        state
            .huge_bytes_sent
            .fetch_add(filler.len() as u64, Ordering::Relaxed);
        Some((Ok::<Bytes, Infallible>(filler.clone()), (state, filler)))
    });
    let stream = futures::StreamExt::chain(first, rest);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn binary() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        vec![0u8, 159, 146, 150, 255, 0, 1, 2],
    )
        .into_response()
}

async fn image() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "image/png")],
        vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a],
    )
        .into_response()
}

async fn plain() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("Plain text document.\n\n{PLAIN_MARKER} on its own line.\n"),
    )
        .into_response()
}

async fn latin1() -> Response {
    let mut body = b"<html><head><title>Caf\xe9</title></head><body><p>Un caf\xe9, s'il vous pla\xeet.</p></body></html>".to_vec();
    body.shrink_to_fit();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=iso-8859-1")],
        body,
    )
        .into_response()
}

async fn redirect_loop() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/loop")], "").into_response()
}

async fn redirect_chain(Path(n): Path<u32>) -> Response {
    let next = if n == 0 {
        "/static".to_string()
    } else {
        format!("/redirect/{}", n - 1)
    };
    (StatusCode::FOUND, [(header::LOCATION, next)], "").into_response()
}

async fn slow() -> Response {
    tokio::time::sleep(Duration::from_secs(60)).await;
    html("<html><body>finally</body></html>".into())
}

async fn status(Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "text/html")],
        format!("status {code}"),
    )
        .into_response()
}

async fn no_type() -> Response {
    let mut resp = Response::new(Body::from("<html><body><p>untyped</p></body></html>"));
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp
}
