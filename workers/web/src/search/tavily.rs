//! Tavily: `POST {base}/search` with a JSON body and the key as
//! `Authorization: Bearer` (Tavily's current authentication; the older
//! `api_key` body field is not sent, so the key never sits in a body that a
//! proxy or a debug dump might record).
//!
//! Response: `{"query", "answer", "results": [{"title", "url", "content",
//! "score", "raw_content"}], "response_time"}`. Tavily answers 432 when the
//! plan's limit and 433 when the pay-as-you-go limit is used up.

use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Client, RequestBuilder, Url};
use serde_json::{Value, json};

use super::{RawHit, endpoint, title_url_hits};
use orch_shared::secret::ApiKey;

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.tavily.com";
/// Tavily's upper bound for `max_results`.
pub const MAX_RESULTS: usize = 20;

pub(super) fn request(
    http: &Client,
    base: &Url,
    key: &ApiKey,
    query: &str,
    max_results: usize,
) -> RequestBuilder {
    http.post(endpoint(base, &["search"], &[]))
        .header(ACCEPT, "application/json")
        .header(AUTHORIZATION, key.header_value("Bearer "))
        .json(&json!({
            "query": query,
            "max_results": max_results.min(MAX_RESULTS),
            // One credit per query; we fetch the pages ourselves, so no raw content or answer.
            "search_depth": "basic",
            "include_answer": false,
            "include_raw_content": false,
            "include_images": false,
        }))
}

/// Tavily lists hits the way SearxNG does: `results: [{title, url, content}]`.
pub(super) fn hits(json: &Value) -> Result<Vec<RawHit<'_>>, String> {
    title_url_hits(json, &["results"], "content")
}
