//! SearxNG's JSON API: `GET {base}/search?q=..&format=json`.
//!
//! The instance must list `json` in `search.formats` (settings.yml); without
//! it SearxNG answers 403, which we report as unauthorized with that hint.
//! Response: `{"query", "results": [{"url", "title", "content", "engine", ...}], ...}`.

use reqwest::header::ACCEPT;
use reqwest::{Client, RequestBuilder, Url};
use serde_json::Value;

use super::{RawHit, endpoint, title_url_hits};

/// A SearxNG on this machine, as its container image listens by default.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8888";

pub(super) fn request(http: &Client, base: &Url, query: &str) -> RequestBuilder {
    http.get(endpoint(
        base,
        &["search"],
        &[("q", query), ("format", "json")],
    ))
    .header(ACCEPT, "application/json")
}

/// SearxNG lists hits as `results: [{title, url, content}]`.
pub(super) fn hits(json: &Value) -> Result<Vec<RawHit<'_>>, String> {
    title_url_hits(json, &["results"], "content")
}
