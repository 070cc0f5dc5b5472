//! Fuzz targets for what the web worker reads from servers it does not
//! control (see `orch-fuzz`): search API answers (SearxNG, Brave, Tavily —
//! status, `Retry-After` / `X-RateLimit-Reset`, JSON body) down to clean hits
//! or a typed error and the retry decision; and fetched pages (charset
//! detection, then readable text from HTML or plain text).

use std::time::Duration;

use orch_fuzz::proptest::prelude::*;
use orch_fuzz::{Corpus, mutated_bytes, target};
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

use crate::extract;
use crate::fetch::{PageKind, decode};
use crate::search::{
    Backend, MAX_SNIPPET_BYTES, MAX_TITLE_BYTES, MAX_URL_BYTES, RetryWait, decode_response,
    retry_wait,
};
use orch_shared::secret::ApiKey;

fn backends() -> Vec<Backend> {
    let key = ApiKey::new("fuzz-key").map_or(Backend::Searxng, Backend::Brave);
    let tavily = ApiKey::new("fuzz-key").map_or(Backend::Searxng, Backend::Tavily);
    vec![Backend::Searxng, key, tavily]
}

fn search_corpus() -> Corpus {
    let searxng = json!({
        "query": "rust", "number_of_results": 2,
        "results": [
            {"url": "https://www.rust-lang.org/", "title": "Rust", "content": "A language <b>empowering</b> everyone", "engine": "ddg"},
            {"url": "https://www.rust-lang.org/", "title": "dup", "content": ""},
            {"url": "ftp://example.com/", "title": "ftp"}
        ]
    });
    let brave = json!({
        "type": "search", "query": {"original": "rust"},
        "web": {"results": [{"title": "The <strong>Rust</strong> Book", "url": "https://doc.rust-lang.org/book/", "description": "&amp; more &#39;quoted&#39;"}]}
    });
    let tavily = json!({
        "query": "rust", "answer": null, "response_time": 0.5,
        "results": [{"title": "Rust", "url": "http://example.com/a?b=c#d", "content": "text", "score": 0.9, "raw_content": null}]
    });
    let brave_error = json!({"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID", "status": 422}});
    Corpus::new()
        .json(searxng)
        .json(brave)
        .json(tavily)
        .json(brave_error)
        .json(json!({"web": null}))
        .words(&[
            "results",
            "web",
            "url",
            "title",
            "content",
            "description",
            "error",
            "code",
            "SUBSCRIPTION_TOKEN_INVALID",
            "https://example.com/",
            "http://[::1]:80/",
            "javascript:alert(1)",
        ])
}

const WAIT_VALUES: &[&str] = &[
    "0",
    "2",
    "0.25",
    "18446744073709551615",
    "18446744073709551616",
    "1e30",
    "-3",
    "1, 2592000",
    "18446744073709551615, 1",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
];

fn wait_headers() -> impl Strategy<Value = HeaderMap> {
    let value = orch_fuzz::text(WAIT_VALUES);
    (prop::option::of(value.clone()), prop::option::of(value)).prop_map(|(after, reset)| {
        let mut h = HeaderMap::new();
        for (name, v) in [("retry-after", after), ("x-ratelimit-reset", reset)] {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(name, v);
            }
        }
        h
    })
}

#[test]
fn search_response() {
    let status = prop_oneof![
        4 => Just(200u16),
        1 => Just(401u16),
        1 => Just(403),
        1 => Just(422),
        2 => Just(429),
        1 => Just(432),
        1 => Just(503),
        2 => 100u16..1000,
    ];
    let backend = 0..3usize;
    let left = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_millis)
    ];
    let strategy = (
        backend,
        status,
        wait_headers(),
        search_corpus().json_inputs(),
        any::<bool>(),
        (0usize..25, 0u32..12, 0u32..11, left),
    );
    let backends = backends();
    target("web.search_response").run(
        strategy,
        |(backend, status, headers, body, truncated, (max, attempt, retries, left))| {
            let Ok(status) = StatusCode::from_u16(status) else {
                return Ok(());
            };
            let backend = &backends[backend];
            match decode_response(backend, status, &headers, body.bytes(), truncated, max) {
                Ok(hits) => {
                    prop_assert!(status.is_success() && !truncated);
                    prop_assert!(hits.len() <= max);
                    for (i, h) in hits.iter().enumerate() {
                        prop_assert!(h.url.len() <= MAX_URL_BYTES);
                        let url =
                            Url::parse(&h.url).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(matches!(url.scheme(), "http" | "https"));
                        prop_assert!(h.title.len() <= MAX_TITLE_BYTES);
                        prop_assert!(h.snippet.len() <= MAX_SNIPPET_BYTES);
                        prop_assert!(hits[..i].iter().all(|o| o.url != h.url));
                    }
                }
                Err(e) => {
                    let _ = e.code();
                    prop_assert!(e.to_string().len() < 4096, "{e}");
                    // The retry decision never panics and never overruns the deadline.
                    match retry_wait(&e, attempt, retries, left) {
                        RetryWait::Retry(wait) => prop_assert!(wait < left),
                        RetryWait::Final | RetryWait::PastDeadline(_) => {}
                    }
                }
            }
            Ok(())
        },
    );
}

fn page_seeds() -> Vec<Vec<u8>> {
    let article = r#"<!doctype html><html><head><meta charset="windows-1252"><title>  The Title  </title>
<style>.x{color:red}</style><script>var s = "<p>not text</p>";</script></head>
<body><nav><a href="/">Home</a></nav><article><h1>Heading</h1>
<p>First paragraph of the article, long enough to count as content for the scorer, with commas, and more words.</p>
<p>Second paragraph, which also talks at length about the subject at hand, caf&eacute; &amp; co.</p>
<ul><li>one</li><li>two</li></ul><table><tr><td>cell</td></tr></table>
</article><footer>Copyright</footer></body></html>"#;
    let mut latin1 = b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"></head><body><p>caf".to_vec();
    latin1.extend_from_slice(b"\xe9</p></body></html>");
    vec![
        article.as_bytes().to_vec(),
        latin1,
        b"\xef\xbb\xbfplain text\r\n\r\n\r\nwith   spaces\n".to_vec(),
        b"<html><body><div><div><span>x</span></div></div><img src=x onerror=1><iframe src=y></iframe></body>".to_vec(),
        b"\xff\xfeU\x00T\x00F\x00-\x001\x006\x00".to_vec(),
    ]
}

const CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/html; charset=utf-8",
    "text/html; charset=\"shift_jis\"",
    "text/plain; charset=ISO-8859-1",
    "application/xhtml+xml; charset=utf-16le",
    "text/html; charset=x-no-such-charset",
    "text/html; charset=",
];

#[test]
fn page_text() {
    let max_text = prop_oneof![Just(0usize), 1usize..64, Just(8_000usize)];
    let strategy = (
        mutated_bytes(page_seeds()),
        orch_fuzz::text(CONTENT_TYPES),
        any::<bool>(),
        max_text,
    );
    target("web.page_text").run(strategy, |(body, content_type, html, max_text)| {
        let kind = if html {
            PageKind::Html
        } else {
            PageKind::Plain
        };
        let text = decode(body.bytes(), &content_type, kind);
        let out = match kind {
            PageKind::Html => extract::html(&text, Some("https://example.com/a/b"), max_text),
            PageKind::Plain => extract::plain(&text, max_text),
        };
        prop_assert!(out.text.len() <= max_text);
        prop_assert!(out.title.len() <= extract::MAX_TITLE_BYTES);
        prop_assert!(!out.title.contains('\n'));
        Ok(())
    });
}
