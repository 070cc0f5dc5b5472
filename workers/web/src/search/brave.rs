//! The Brave Search API: `GET {base}/web/search?q=..&count=N` with the key in
//! `X-Subscription-Token`.
//!
//! Response: `{"type": "search", "query": {...}, "web": {"results": [{"title",
//! "url", "description", ...}]}}`; `web` is absent when nothing was found.
//! Descriptions carry `<strong>` highlights, stripped by the caller.
//! A missing or wrong key is answered with 422 and the error code
//! `SUBSCRIPTION_TOKEN_INVALID` (not 401). On 429 Brave sends `X-RateLimit-Reset: <s until the per-second window
//! resets>, <s until the monthly one does>`.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{Client, RequestBuilder, Url};
use serde_json::Value;

use super::{RawHit, endpoint, title_url_hits};
use orch_shared::secret::ApiKey;

/// The public API (the path is appended per endpoint).
pub const DEFAULT_BASE_URL: &str = "https://api.search.brave.com/res/v1";
/// Brave's upper bound for `count`.
pub const MAX_COUNT: usize = 20;
/// Header carrying the key.
pub const TOKEN_HEADER: &str = "X-Subscription-Token";

pub(super) fn request(
    http: &Client,
    base: &Url,
    key: &ApiKey,
    query: &str,
    count: usize,
) -> RequestBuilder {
    let count = count.min(MAX_COUNT).to_string();
    http.get(endpoint(
        base,
        &["web", "search"],
        &[("q", query), ("count", &count)],
    ))
    .header(ACCEPT, "application/json")
    .header(TOKEN_HEADER, key.header_value(""))
}

pub(super) fn hits(json: &Value) -> Result<Vec<RawHit<'_>>, String> {
    title_url_hits(json, &["web", "results"], "description")
}

/// Whether an error body is Brave's "subscription token invalid"
/// (`{"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID", ...}}`).
pub(super) fn token_invalid(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v.pointer("/error/code").and_then(Value::as_str) == Some("SUBSCRIPTION_TOKEN_INVALID")
    })
}

/// The first window of `X-RateLimit-Reset` (the soonest reset), as a wait.
pub(super) fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("x-ratelimit-reset")?.to_str().ok()?;
    let secs: u64 = v.split(',').next()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}
