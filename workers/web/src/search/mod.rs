//! Web search backends: SearxNG's JSON API, the Brave Search API and Tavily.
//!
//! Each backend module knows only its protocol: how to build the request and
//! how to map the response into [`SearchHit`]s. This module owns what they
//! share: one HTTP client with bounded redirects and response size, the
//! deadline, the typed [`SearchError`] and the retry policy — 429, 5xx and
//! connect errors are retried with backoff (honouring `Retry-After`), but
//! never past the job's deadline: a wait that would overrun it fails now, so
//! the coordinator can fall back while there is still time.

mod brave;
mod searxng;
mod tavily;

use std::time::{Duration, Instant};

use orch_shared::ErrorCode;
use orch_shared::wire::SearchHit;
use orch_worker::WorkError;
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::http::{self, error_chain, excerpt, read_capped, truncate_utf8};
use orch_shared::secret::ApiKey;

pub use brave::MAX_COUNT as BRAVE_MAX_COUNT;
pub use tavily::MAX_RESULTS as TAVILY_MAX_RESULTS;

/// Largest search API response we read. A page of results is a few tens of
/// KiB; anything near this is not a search response.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest title kept per hit, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest snippet kept per hit, in bytes.
pub const MAX_SNIPPET_BYTES: usize = 2048;
/// Longest URL kept; longer ones are dropped (browsers cap around 2 MB, but
/// real result URLs are short and we put them in NATS messages).
pub const MAX_URL_BYTES: usize = 4096;
/// First retry delay without a `Retry-After`; doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest backoff without a `Retry-After`.
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Time left for the retried request itself: a retry that would start with
/// less than this before the deadline is not worth making.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(200);

/// Which search API, with its credentials.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SearxNG instance's JSON API (`json` must be in `search.formats`).
    Searxng,
    /// The Brave Search API (`X-Subscription-Token`).
    Brave(ApiKey),
    /// Tavily (`Authorization: Bearer`).
    Tavily(ApiKey),
}

impl Backend {
    /// Its name, used as provider and model in results and discovery.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Searxng => "searxng",
            Backend::Brave(_) => "brave",
            Backend::Tavily(_) => "tavily",
        }
    }

    /// The public endpoint base used when `--search-url` is not given.
    pub fn default_base_url(&self) -> &'static str {
        match self {
            Backend::Searxng => searxng::DEFAULT_BASE_URL,
            Backend::Brave(_) => brave::DEFAULT_BASE_URL,
            Backend::Tavily(_) => tavily::DEFAULT_BASE_URL,
        }
    }

    /// Most results the API returns per request.
    pub fn max_results_limit(&self) -> usize {
        match self {
            Backend::Searxng => 100,
            Backend::Brave(_) => brave::MAX_COUNT,
            Backend::Tavily(_) => tavily::MAX_RESULTS,
        }
    }
}

/// A validated search configuration.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// The API and its key.
    pub backend: Backend,
    /// Base URL; the backend appends its path (`/search`, `/web/search`).
    pub base_url: Url,
    /// Hits returned per query.
    pub max_results: usize,
    /// Limit of one HTTP request (the job deadline may cut it shorter).
    pub timeout: Duration,
    /// Retries after a 429, 5xx or connect error (each within the deadline).
    pub retries: u32,
    /// `User-Agent` sent.
    pub user_agent: String,
}

/// Why a search failed. Every variant names the backend; none holds a key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// HTTP 401/403: the key (or the instance's settings) refused us.
    #[error("{backend}: unauthorized (HTTP {status}): {detail}")]
    Unauthorized {
        /// Backend name.
        backend: &'static str,
        /// HTTP status.
        status: u16,
        /// What the server said, or a hint.
        detail: String,
    },
    /// HTTP 429 that could not be waited out within the deadline.
    #[error("{backend}: rate limited{}: {detail}", .retry_after.map(|d| format!(" (retry after {} ms)", d.as_millis())).unwrap_or_default())]
    RateLimited {
        /// Backend name.
        backend: &'static str,
        /// The server's requested wait, if any.
        retry_after: Option<Duration>,
        /// What the server said.
        detail: String,
    },
    /// The account's plan or spending limit is used up (Tavily 432/433).
    #[error("{backend}: quota exceeded (HTTP {status}): {detail}")]
    QuotaExceeded {
        /// Backend name.
        backend: &'static str,
        /// HTTP status.
        status: u16,
        /// What the server said.
        detail: String,
    },
    /// Another 4xx: the request itself was refused.
    #[error("{backend}: bad request (HTTP {status}): {detail}")]
    BadRequest {
        /// Backend name.
        backend: &'static str,
        /// HTTP status.
        status: u16,
        /// What the server said.
        detail: String,
    },
    /// 5xx, an unexpected redirect, or a body that is not the API's JSON.
    #[error("{backend}: upstream error{}: {detail}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Upstream {
        /// Backend name.
        backend: &'static str,
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// Details.
        detail: String,
    },
    /// The API could not be reached (connect, DNS, TLS).
    #[error("{backend}: unavailable: {detail}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Details.
        detail: String,
    },
    /// The deadline passed before the API answered.
    #[error("{backend}: timed out: {detail}")]
    TimedOut {
        /// Backend name.
        backend: &'static str,
        /// Details.
        detail: String,
    },
}

impl SearchError {
    /// The wire error code the coordinator branches on.
    pub fn code(&self) -> ErrorCode {
        match self {
            SearchError::Unauthorized { .. } => ErrorCode::Unauthorized,
            SearchError::RateLimited { .. } => ErrorCode::RateLimited,
            SearchError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            SearchError::BadRequest { .. } => ErrorCode::BadRequest,
            SearchError::Upstream { .. } => ErrorCode::Upstream,
            SearchError::Unavailable { .. } => ErrorCode::Unavailable,
            SearchError::TimedOut { .. } => ErrorCode::TimedOut,
        }
    }

    /// Whether another attempt may succeed, and after how long at least.
    fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        let backoff = BACKOFF_BASE
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(BACKOFF_MAX);
        match self {
            SearchError::RateLimited { retry_after, .. } => Some(retry_after.unwrap_or(backoff)),
            SearchError::Upstream {
                status: Some(s), ..
            } if *s >= 500 => Some(backoff),
            SearchError::Unavailable { .. } => Some(backoff),
            _ => None,
        }
    }
}

impl From<SearchError> for WorkError {
    fn from(e: SearchError) -> WorkError {
        WorkError::new(e.code(), e.to_string())
    }
}

/// Why a [`SearchClient`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the search HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// A search API client.
#[derive(Debug, Clone)]
pub struct SearchClient {
    cfg: SearchConfig,
    http: reqwest::Client,
}

impl SearchClient {
    /// Builds the client.
    ///
    /// # Errors
    /// When the TLS stack cannot be initialised.
    pub fn new(cfg: SearchConfig) -> Result<SearchClient, BuildError> {
        http::install_crypto_provider();
        let redirects = match cfg.backend {
            // A self-hosted instance behind a proxy may redirect (http → https, a trailing slash).
            Backend::Searxng => reqwest::redirect::Policy::limited(3),
            // Never follow with a key: HTTP clients strip `Authorization` on a cross-host
            // redirect, but not `X-Subscription-Token`. The 3xx is reported instead.
            Backend::Brave(_) | Backend::Tavily(_) => reqwest::redirect::Policy::none(),
        };
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .redirect(redirects)
            .connect_timeout(cfg.timeout)
            .build()?;
        Ok(SearchClient { cfg, http })
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        self.cfg.backend.name()
    }

    /// The configuration in use.
    pub fn config(&self) -> &SearchConfig {
        &self.cfg
    }

    /// Runs `query` and returns at most `max_results` hits, best first.
    ///
    /// # Errors
    /// A typed [`SearchError`] once retries are exhausted or would overrun `deadline`.
    pub async fn search(
        &self,
        query: &str,
        deadline: Instant,
    ) -> Result<Vec<SearchHit>, SearchError> {
        let backend = self.name();
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(SearchError::TimedOut {
                    backend,
                    detail: "no time left in the job's budget".into(),
                });
            }
            let limit = remaining.min(self.cfg.timeout);
            let outcome = match tokio::time::timeout(limit, self.attempt(query)).await {
                Ok(r) => r,
                Err(_) => Err(SearchError::TimedOut {
                    backend,
                    detail: format!("no complete answer within {} ms", limit.as_millis()),
                }),
            };
            let err = match outcome {
                Ok(hits) => return Ok(hits),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = match retry_wait(&err, attempt, self.cfg.retries, left) {
                RetryWait::Retry(wait) => wait,
                RetryWait::Final => return Err(err),
                RetryWait::PastDeadline(wait) => {
                    tracing::info!(backend, error = %err, wait_ms = wait.as_millis() as u64,
                        "not retrying: the wait would overrun the job's deadline");
                    return Err(err);
                }
            };
            tracing::info!(backend, error = %err, wait_ms = wait.as_millis() as u64, attempt, "retrying search");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, query: &str) -> Result<Vec<SearchHit>, SearchError> {
        let backend = self.name();
        let max = self.cfg.max_results;
        let base = &self.cfg.base_url;
        let request = match &self.cfg.backend {
            Backend::Searxng => searxng::request(&self.http, base, query),
            Backend::Brave(key) => brave::request(&self.http, base, key, query, max),
            Backend::Tavily(key) => tavily::request(&self.http, base, key, query, max),
        };
        let resp = request
            .send()
            .await
            .map_err(|e| transport_error(backend, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_capped(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| transport_error(backend, e))?;
        decode_response(
            &self.cfg.backend,
            status,
            &headers,
            &body.bytes,
            body.truncated,
            max,
        )
    }
}

/// Turns a backend's answer (status, headers, body read up to
/// [`MAX_RESPONSE_BYTES`], `truncated` when it was longer) into at most `max`
/// clean hits or a typed error.
pub(crate) fn decode_response(
    backend: &Backend,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    truncated: bool,
    max: usize,
) -> Result<Vec<SearchHit>, SearchError> {
    let name = backend.name();
    if !status.is_success() {
        let retry_after = http::retry_after(headers).or_else(|| match backend {
            Backend::Brave(_) => brave::rate_limit_reset(headers),
            _ => None,
        });
        return Err(status_error(backend, status, retry_after, body));
    }
    if truncated {
        return Err(SearchError::Upstream {
            backend: name,
            status: Some(status.as_u16()),
            detail: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
        });
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| SearchError::Upstream {
        backend: name,
        status: Some(status.as_u16()),
        detail: format!("response is not JSON ({e}): {}", excerpt(body, 120)),
    })?;
    let raw = match backend {
        Backend::Searxng => searxng::hits(&json),
        Backend::Brave(_) => brave::hits(&json),
        Backend::Tavily(_) => tavily::hits(&json),
    }
    .map_err(|detail| SearchError::Upstream {
        backend: name,
        status: Some(status.as_u16()),
        detail,
    })?;
    Ok(clean_hits(raw, max))
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryWait {
    /// Wait this long, then try again.
    Retry(Duration),
    /// The error is final, or the retries are used up.
    Final,
    /// A retry would wait this long and overrun the deadline.
    PastDeadline(Duration),
}

/// The retry decision after attempt number `attempt` (0-based) failed with
/// `err`, with `retries` allowed and `left` before the deadline.
pub(crate) fn retry_wait(
    err: &SearchError,
    attempt: u32,
    retries: u32,
    left: Duration,
) -> RetryWait {
    let Some(wait) = err.retry_delay(attempt).filter(|_| attempt < retries) else {
        return RetryWait::Final;
    };
    // Saturating: a server may ask for any wait (`Retry-After: 18446744073709551615`).
    if wait.saturating_add(MIN_ATTEMPT_TIME) > left {
        return RetryWait::PastDeadline(wait);
    }
    RetryWait::Retry(wait)
}

/// `base` + `/path/segments` + `?query`, keeping any path prefix of `base`
/// (`https://host/searx` → `https://host/searx/search`). Values are form-encoded.
fn endpoint(base: &Url, path: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(path);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// One hit as a backend found it, before cleaning.
#[derive(Debug, Default)]
pub(crate) struct RawHit<'a> {
    title: Option<&'a str>,
    url: Option<&'a str>,
    snippet: Option<&'a str>,
}

/// The JSON array at `path` (e.g. `["web", "results"]`); a missing member is
/// an empty list (APIs omit empty sections), anything else but an array is an error.
fn array_at<'a>(json: &'a Value, path: &[&str]) -> Result<&'a [Value], String> {
    let mut v = json;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None if v.is_object() => return Ok(&[]),
            None => return Err(format!("expected an object holding `{}`", path.join("."))),
        }
    }
    match v {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(&[]),
        _ => Err(format!("`{}` is not an array", path.join("."))),
    }
}

/// Hits listed as an array of `{title, url, <snippet>}` objects at `path`
/// (SearxNG and Tavily: `results[].content`; Brave: `web.results[].description`).
fn title_url_hits<'a>(
    json: &'a Value,
    path: &[&str],
    snippet: &str,
) -> Result<Vec<RawHit<'a>>, String> {
    Ok(array_at(json, path)?
        .iter()
        .map(|r| RawHit {
            title: r.get("title").and_then(Value::as_str),
            url: r.get("url").and_then(Value::as_str),
            snippet: r.get(snippet).and_then(Value::as_str),
        })
        .collect())
}

/// Keeps http(s) hits with a URL, drops duplicates, bounds every field, strips markup.
fn clean_hits(raw: Vec<RawHit<'_>>, max: usize) -> Vec<SearchHit> {
    let mut out: Vec<SearchHit> = Vec::with_capacity(max.min(raw.len()));
    for hit in raw {
        if out.len() >= max {
            break;
        }
        let Some(url) = hit.url.map(str::trim) else {
            continue;
        };
        let ok = url.len() <= MAX_URL_BYTES
            && Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok || out.iter().any(|h| h.url == url) {
            continue;
        }
        let mut title = plain_text(hit.title.unwrap_or(""));
        truncate_utf8(&mut title, MAX_TITLE_BYTES);
        let mut snippet = plain_text(hit.snippet.unwrap_or(""));
        truncate_utf8(&mut snippet, MAX_SNIPPET_BYTES);
        out.push(SearchHit {
            title,
            url: url.to_string(),
            snippet,
        });
    }
    out
}

/// Strips tags (Brave wraps matches in `<strong>`), decodes the common
/// entities and collapses whitespace.
pub(crate) fn plain_text(s: &str) -> String {
    let mut no_tags = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => no_tags.push(c),
            _ => {}
        }
    }
    let decoded = no_tags
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn transport_error(backend: &'static str, e: reqwest::Error) -> SearchError {
    // The URL may carry credentials (`https://user:pass@searx.example`): leave it out.
    let e = e.without_url();
    let detail = error_chain(&e);
    if e.is_timeout() {
        SearchError::TimedOut { backend, detail }
    } else if e.is_connect() || (e.is_request() && !e.is_redirect()) {
        SearchError::Unavailable { backend, detail }
    } else {
        SearchError::Upstream {
            backend,
            status: e.status().map(|s| s.as_u16()),
            detail,
        }
    }
}

fn status_error(
    backend: &Backend,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> SearchError {
    let name = backend.name();
    let code = status.as_u16();
    let detail = match excerpt(body, 200) {
        d if d.is_empty() => status
            .canonical_reason()
            .unwrap_or("no details")
            .to_string(),
        d => d,
    };
    // Brave refuses a bad key with 422 and a code in the body, not with 401.
    let brave_bad_token = matches!(backend, Backend::Brave(_)) && brave::token_invalid(body);
    match code {
        401 | 403 => SearchError::Unauthorized {
            backend: name,
            status: code,
            detail: match backend {
                Backend::Searxng if code == 403 => format!(
                    "{detail} (is `json` listed in `search.formats` of the instance's settings.yml?)"
                ),
                _ => detail,
            },
        },
        422 if brave_bad_token => SearchError::Unauthorized {
            backend: name,
            status: code,
            detail,
        },
        429 => SearchError::RateLimited {
            backend: name,
            retry_after,
            detail,
        },
        432 | 433 if matches!(backend, Backend::Tavily(_)) => SearchError::QuotaExceeded {
            backend: name,
            status: code,
            detail,
        },
        400..=499 => SearchError::BadRequest {
            backend: name,
            status: code,
            detail,
        },
        _ => SearchError::Upstream {
            backend: name,
            status: Some(code),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_stripped_from_snippets() {
        assert_eq!(
            plain_text("The <strong>Rust</strong> &amp; <em>Go</em>\n  book"),
            "The Rust & Go book"
        );
    }

    #[test]
    fn hits_are_cleaned_bounded_and_deduplicated() {
        let long = "x".repeat(MAX_TITLE_BYTES + 10);
        let raw = vec![
            RawHit {
                title: Some(&long),
                url: Some("https://a.example/1"),
                snippet: None,
            },
            RawHit {
                title: Some("dup"),
                url: Some("https://a.example/1"),
                snippet: None,
            },
            RawHit {
                title: Some("ftp"),
                url: Some("ftp://a.example/"),
                snippet: None,
            },
            RawHit {
                title: Some("no url"),
                url: None,
                snippet: None,
            },
            RawHit {
                title: Some("b"),
                url: Some("http://b.example/"),
                snippet: Some("s"),
            },
            RawHit {
                title: Some("c"),
                url: Some("http://c.example/"),
                snippet: None,
            },
        ];
        let hits = clean_hits(raw, 2);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].title.len(), MAX_TITLE_BYTES);
        assert_eq!(hits[1].url, "http://b.example/");
        assert_eq!(hits[1].snippet, "s");
    }

    #[test]
    fn retry_policy() {
        let rl = SearchError::RateLimited {
            backend: "x",
            retry_after: Some(Duration::from_secs(3)),
            detail: String::new(),
        };
        assert_eq!(rl.retry_delay(0), Some(Duration::from_secs(3)));
        let five = SearchError::Upstream {
            backend: "x",
            status: Some(503),
            detail: String::new(),
        };
        assert_eq!(five.retry_delay(1), Some(BACKOFF_BASE * 2));
        let garbage = SearchError::Upstream {
            backend: "x",
            status: Some(200),
            detail: String::new(),
        };
        assert_eq!(garbage.retry_delay(0), None);
        let auth = SearchError::Unauthorized {
            backend: "x",
            status: 401,
            detail: String::new(),
        };
        assert_eq!(auth.retry_delay(0), None);
    }
}
