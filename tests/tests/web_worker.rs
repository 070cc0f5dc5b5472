//! The web worker against protocol-faithful fake search APIs and a fake web:
//! what it sends to SearxNG, Brave and Tavily, how it handles each answer,
//! the page fetcher's limits, real headless Chromium, and the worker's serve
//! loop end to end through a real nats-server and coordinator.

use std::time::{Duration, Instant};

use orch_coordinator::CoordinatorConfig;
use orch_shared::config::Problems;
use orch_shared::wire::{SearchHit, SubmitRequest, WebFindings, WorkRequest};
use orch_shared::{ErrorCode, Role};
use orch_tests::fake::search::{
    FakeSearch, HUGE_START_MARKER, Hit, JS_MARKER, PLAIN_MARKER, PageServer, Reply, STATIC_MARKER,
};
use orch_tests::fleet::{Fleet, WorkerSpec};
use orch_tests::nats::NatsServer;
use orch_tests::wait::{eventually, within};
use orch_web::browser::{BrowserPool, BrowserSettings};
use orch_web::fetch::{FetchConfig, FetchError, PageFetcher, PageKind};
use orch_web::search::{SearchClient, SearchError};
use orch_web::{WebArgs, WebConfig, WebWorker};
use orch_worker::{JobContext, ServeConfig, WorkError};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "test-key-6c1d9e";

fn hits() -> Vec<Hit> {
    vec![
        Hit::new(
            "Rust async book",
            "https://rust-lang.github.io/async-book/",
            "Asynchronous programming in Rust",
        ),
        Hit::new(
            "Tokio tutorial",
            "https://tokio.rs/tokio/tutorial",
            "Tokio is an asynchronous runtime",
        ),
        Hit::new(
            "async-std",
            "https://async.rs/",
            "Async version of the Rust standard library",
        ),
    ]
}

fn env_with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

/// Parses flags and checks them as the binary does, with an injected environment.
fn config(flags: &[&str], env: &[(&str, &str)]) -> WebConfig {
    let args = WebArgs::from_flags(flags).unwrap_or_else(|e| panic!("flags {flags:?}: {e}"));
    let mut problems = Problems::default();
    let env = env_with(env);
    args.config(&env, &mut problems)
        .unwrap_or_else(|| panic!("config {flags:?} refused: {:?}", problems.list()))
}

fn search_client(flags: &[&str], env: &[(&str, &str)]) -> SearchClient {
    match config(flags, env) {
        WebConfig::Real(real) => SearchClient::new(real.search).expect("search client"),
        WebConfig::Sim(_) => panic!("expected a real backend"),
    }
}

async fn start_worker(flags: &[&str]) -> WebWorker {
    within(
        T,
        "starting the web worker",
        WebWorker::start(config(flags, &[])),
    )
    .await
    .unwrap_or_else(|e| panic!("web worker {flags:?}: {e}"))
}

fn fetcher(max_bytes: usize, page_timeout: Duration, allow_private: bool) -> PageFetcher {
    PageFetcher::new(FetchConfig {
        page_timeout,
        max_bytes,
        max_redirects: 3,
        user_agent: "orch-web-test".into(),
        allow_private_addresses: allow_private,
    })
    .expect("fetcher")
}

fn in_secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

/// A web work request as the coordinator sends it (decoded the way the worker
/// decodes it, so fields added to the wire type later keep their defaults).
fn request(query: &str) -> WorkRequest {
    serde_json::from_value(serde_json::json!({
        "task_id": "web-test-1",
        "role": "web",
        "slot": "default",
        "task": "research something",
        "query": query,
    }))
    .expect("a valid work request")
}

fn ctx(budget: Duration) -> JobContext {
    JobContext {
        deadline: Instant::now() + budget,
        cancel: CancellationToken::new(),
    }
}

async fn handle(
    worker: &WebWorker,
    query: &str,
    budget: Duration,
) -> Result<WebFindings, WorkError> {
    let out = within(
        T,
        "web handler",
        worker.handler().handle(request(query), ctx(budget)),
    )
    .await?;
    Ok(serde_json::from_value(out.content).expect("content is WebFindings"))
}

async fn search(
    client: &SearchClient,
    query: &str,
    deadline: Instant,
) -> Result<Vec<SearchHit>, SearchError> {
    within(T, "search", client.search(query, deadline)).await
}

fn as_search_hits(hits: &[Hit]) -> Vec<SearchHit> {
    hits.iter()
        .map(|h| SearchHit {
            title: h.title.clone(),
            url: h.url.clone(),
            snippet: h.snippet.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// What we send, and how results are mapped
// ---------------------------------------------------------------------------

#[tokio::test]
async fn searxng_gets_query_and_json_format_and_maps_results() {
    let fake = FakeSearch::start(hits()).await;
    let client = search_client(&["--search-url", &fake.url(), "--max-results", "2"], &[]);

    let got = search(&client, "rust async & tokio", in_secs(10))
        .await
        .expect("search");

    assert_eq!(got, as_search_hits(&hits()[..2]));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/search"));
    assert_eq!(r.param("q"), Some("rust async & tokio"));
    assert_eq!(r.param("format"), Some("json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("orch-web/")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("x-subscription-token"), None);
}

#[tokio::test]
async fn brave_gets_subscription_token_and_count_and_maps_web_results() {
    let fake = FakeSearch::start(hits()).await;
    fake.require_key(KEY);
    let client = search_client(
        &[
            "--provider",
            "brave",
            "--search-url",
            &fake.brave_url(),
            "--max-results",
            "5",
        ],
        &[("BRAVE_API_KEY", KEY)],
    );

    let got = search(&client, "rust async", in_secs(10))
        .await
        .expect("search");

    // The snippet's <strong> highlight is stripped.
    assert_eq!(got, as_search_hits(&hits()));
    let r = &fake.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/res/v1/web/search")
    );
    assert_eq!(r.param("q"), Some("rust async"));
    assert_eq!(r.param("count"), Some("5"));
    assert_eq!(r.header("x-subscription-token"), Some(KEY));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("authorization"), None);
}

#[tokio::test]
async fn brave_count_is_capped_at_the_api_maximum_and_no_web_section_means_no_hits() {
    let fake = FakeSearch::start(vec![]).await;
    let client = search_client(
        &[
            "--provider",
            "brave",
            "--search-url",
            &fake.brave_url(),
            "--max-results",
            "20",
            "--api-key-env",
            "MY_BRAVE",
        ],
        &[("MY_BRAVE", KEY)],
    );
    let got = search(&client, "nothing", in_secs(10))
        .await
        .expect("search");
    assert!(got.is_empty());
    let r = &fake.requests()[0];
    assert_eq!(r.param("count"), Some("20"));
    assert_eq!(r.header("x-subscription-token"), Some(KEY));
}

#[tokio::test]
async fn tavily_gets_bearer_auth_and_json_body_and_maps_results() {
    let fake = FakeSearch::start(hits()).await;
    fake.require_key(KEY);
    let client = search_client(
        &[
            "--provider",
            "tavily",
            "--search-url",
            &fake.url(),
            "--max-results",
            "3",
        ],
        &[("TAVILY_API_KEY", KEY)],
    );

    let got = search(&client, "rust async", in_secs(10))
        .await
        .expect("search");

    assert_eq!(got, as_search_hits(&hits()));
    let r = &fake.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/search"));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.query.is_empty(), "{:?}", r.query);
    let body = r.json();
    assert_eq!(body["query"], "rust async");
    assert_eq!(body["max_results"], 3);
    assert_eq!(body["search_depth"], "basic");
    assert_eq!(body["include_answer"], false);
    assert_eq!(body["include_raw_content"], false);
    // The key travels only in the header.
    assert!(body.get("api_key").is_none(), "{body}");
    assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
}

// ---------------------------------------------------------------------------
// How each answer is handled
// ---------------------------------------------------------------------------

#[tokio::test]
async fn brave_invalid_token_is_unauthorized_and_not_retried() {
    let fake = FakeSearch::start(hits()).await;
    fake.require_key("the-right-key");
    let client = search_client(
        &["--provider", "brave", "--search-url", &fake.brave_url()],
        &[("BRAVE_API_KEY", KEY)],
    );
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
    assert!(
        matches!(err, SearchError::Unauthorized { status: 422, .. }),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn tavily_wrong_key_is_unauthorized() {
    let fake = FakeSearch::start(hits()).await;
    fake.require_key("the-right-key");
    let client = search_client(
        &["--provider", "tavily", "--search-url", &fake.url()],
        &[("TAVILY_API_KEY", KEY)],
    );
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SearchError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("missing or invalid API key"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 1);
    let work: WorkError = err.into();
    assert_eq!(work.code, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn searxng_403_is_unauthorized_with_a_settings_hint() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::status(403)]);
    let client = search_client(&["--search-url", &fake.url()], &[]);
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::Unauthorized);
    assert!(err.to_string().contains("search.formats"), "{err}");
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_servers_retry_after() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::rate_limited("1")]);
    let client = search_client(&["--search-url", &fake.url()], &[]);
    let start = Instant::now();
    let got = search(&client, "q", in_secs(10))
        .await
        .expect("second attempt succeeds");
    assert_eq!(got.len(), 3);
    assert_eq!(fake.requests().len(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn rate_limit_whose_wait_overruns_the_deadline_fails_at_once() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::rate_limited("120")]);
    let client = search_client(
        &["--provider", "tavily", "--search-url", &fake.url()],
        &[("TAVILY_API_KEY", KEY)],
    );
    let start = Instant::now();
    let err = search(&client, "q", in_secs(5))
        .await
        .expect_err("rate limited");
    assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
    assert!(
        matches!(err, SearchError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(120)),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1, "no retry past the deadline");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "failed after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn brave_rate_limit_reset_header_is_honoured_without_retry_after() {
    let fake = FakeSearch::start(hits()).await;
    // Brave's 429 carries X-RateLimit-Reset: "1, 1419704" (soonest window first).
    fake.script([Reply::status(429)]);
    let client = search_client(
        &["--provider", "brave", "--search-url", &fake.brave_url()],
        &[("BRAVE_API_KEY", KEY)],
    );
    let start = Instant::now();
    search(&client, "q", in_secs(10)).await.expect("retried");
    assert_eq!(fake.requests().len(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_upstream_after_bounded_retries() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([
        Reply::status(500),
        Reply::status(502),
        Reply::status(503),
        Reply::status(500),
    ]);
    let client = search_client(&["--search-url", &fake.url(), "--search-retries", "2"], &[]);
    let err = search(&client, "q", in_secs(20))
        .await
        .expect_err("upstream");
    assert!(
        matches!(
            err,
            SearchError::Upstream {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Upstream);
    assert_eq!(fake.requests().len(), 3, "one try and two retries");

    // A blip is ridden out.
    fake.script([Reply::status(502)]);
    let got = search(&client, "q", in_secs(20)).await.expect("retried");
    assert_eq!(got.len(), 3);
}

#[tokio::test]
async fn garbage_and_wrong_shape_bodies_are_upstream_and_not_retried() {
    let fake = FakeSearch::start(hits()).await;
    let client = search_client(&["--search-url", &fake.url()], &[]);
    fake.script([Reply::Garbage]);
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("garbage");
    assert!(
        matches!(
            err,
            SearchError::Upstream {
                status: Some(200),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not JSON"), "{err}");
    fake.script([Reply::WrongShape]);
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("wrong shape");
    assert!(
        err.to_string().contains("`results` is not an array"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn keyed_backends_never_follow_redirects_with_the_key() {
    let pages = PageServer::start().await;
    let fake = FakeSearch::start(hits()).await;
    fake.script([
        Reply::Redirect(pages.url("/static")),
        Reply::Redirect(pages.url("/static")),
    ]);
    for (flags, env) in [
        (
            ["--provider", "brave", "--search-url", &fake.brave_url()],
            ("BRAVE_API_KEY", KEY),
        ),
        (
            ["--provider", "tavily", "--search-url", &fake.url()],
            ("TAVILY_API_KEY", KEY),
        ),
    ] {
        let client = search_client(&flags, &[env]);
        let err = search(&client, "q", in_secs(10))
            .await
            .expect_err("redirected");
        assert!(
            matches!(
                err,
                SearchError::Upstream {
                    status: Some(307),
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert!(
        pages.paths().is_empty(),
        "the key went elsewhere: {:?}",
        pages.paths()
    );

    // A self-hosted SearxNG may redirect (e.g. to its canonical URL).
    let other = FakeSearch::start(hits()).await;
    fake.script([Reply::Redirect(format!(
        "{}/search?q=q&format=json",
        other.url()
    ))]);
    let client = search_client(&["--search-url", &fake.url()], &[]);
    let got = search(&client, "q", in_secs(10)).await.expect("followed");
    assert_eq!(got.len(), 3);
    assert_eq!(other.requests().len(), 1);
}

#[tokio::test]
async fn tavily_plan_and_payg_limits_are_quota_exceeded() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::status(432), Reply::status(433)]);
    let client = search_client(
        &["--provider", "tavily", "--search-url", &fake.url()],
        &[("TAVILY_API_KEY", KEY)],
    );
    for status in [432, 433] {
        let err = search(&client, "q", in_secs(10)).await.expect_err("quota");
        assert!(
            matches!(err, SearchError::QuotaExceeded { status: s, .. } if s == status),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::QuotaExceeded);
    }
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn unreachable_backend_is_unavailable() {
    let port = orch_tests::nats::free_port();
    let client = search_client(
        &[
            "--search-url",
            &format!("http://127.0.0.1:{port}"),
            "--search-retries",
            "1",
        ],
        &[],
    );
    let err = search(&client, "q", in_secs(10))
        .await
        .expect_err("nothing listens");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
}

#[tokio::test]
async fn slow_backend_times_out_at_the_jobs_deadline() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::Delay(
        Duration::from_secs(20),
        Box::new(Reply::Results(hits())),
    )]);
    let client = search_client(&["--search-url", &fake.url()], &[]);
    let start = Instant::now();
    let err = search(&client, "q", Instant::now() + Duration::from_millis(800))
        .await
        .expect_err("too slow");
    assert_eq!(err.code(), ErrorCode::TimedOut, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Configuration and secrets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keys_never_appear_in_debug_output_or_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let cfg = config(
        &[
            "--provider",
            "brave",
            "--api-key-file",
            key_file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let text = format!("{cfg:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("ApiKey(***)"), "{text}");

    let fake = FakeSearch::start(hits()).await;
    fake.require_key(KEY);
    let client = search_client(
        &[
            "--provider",
            "brave",
            "--search-url",
            &fake.brave_url(),
            "--api-key-file",
            key_file.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(!format!("{client:?}").contains(KEY));
    search(&client, "q", in_secs(10))
        .await
        .expect("the file's key is sent");
    assert_eq!(fake.requests()[0].header("x-subscription-token"), Some(KEY));
}

#[test]
fn config_reports_every_problem_at_once() {
    let args = WebArgs::from_flags([
        "--provider",
        "tavily",
        "--search-url",
        "ftp://user:hunter2@x",
        "--max-results",
        "50",
        "--fetch-concurrency",
        "0",
        "--browser",
        "--chromium-path",
        "/nonexistent/chromium",
        "--max-page-text",
        "10",
    ])
    .expect("flags parse");
    let mut problems = Problems::default();
    let env = env_with(&[]);
    assert!(args.config(&env, &mut problems).is_none());
    let list = problems.list().join("\n");
    for expected in [
        "$TAVILY_API_KEY",
        "--search-url must be an absolute http(s) URL",
        "--max-results must be 1..=20",
        "--fetch-concurrency",
        "--chromium-path",
        "--max-page-text",
    ] {
        assert!(list.contains(expected), "missing `{expected}` in:\n{list}");
    }
    assert!(
        !list.contains("hunter2"),
        "a URL's credentials were echoed:\n{list}"
    );

    // searxng takes no key; both key sources at once is ambiguous.
    let args = WebArgs::from_flags(["--api-key-env", "X"]).expect("flags parse");
    let mut problems = Problems::default();
    assert!(args.config(&env, &mut problems).is_none());
    assert!(problems.list()[0].contains("searxng takes no API key"));
    let args = WebArgs::from_flags([
        "--provider",
        "brave",
        "--api-key-env",
        "X",
        "--api-key-file",
        "/k",
    ])
    .expect("flags parse");
    let mut problems = Problems::default();
    assert!(args.config(&env, &mut problems).is_none());
    assert!(
        problems.list()[0].contains("only one of"),
        "{:?}",
        problems.list()
    );

    // Defaults are a working local SearxNG setup.
    let WebConfig::Real(real) = config(&[], &[]) else {
        panic!("default is not searxng")
    };
    assert_eq!(real.search.backend.name(), "searxng");
    assert_eq!(real.search.base_url.as_str(), "http://127.0.0.1:8888/");
    assert!(!real.fetch.allow_private_addresses);
    assert!(real.browser.is_none());
}

// ---------------------------------------------------------------------------
// Page fetching
// ---------------------------------------------------------------------------

#[tokio::test]
async fn page_fetch_reads_html_and_plain_text() {
    let pages = PageServer::start().await;
    let f = fetcher(1 << 20, Duration::from_secs(5), true);
    let page = within(T, "fetch", f.fetch(&pages.url("/static"), in_secs(10)))
        .await
        .expect("static page");
    assert_eq!(page.kind, PageKind::Html);
    assert!(!page.truncated);
    assert_eq!(page.final_url.as_str(), pages.url("/static"));
    let text = orch_web::extract::html(&page.body, Some(page.final_url.as_str()), 10_000);
    assert_eq!(text.title, "Static Test Page");
    assert!(text.text.contains(STATIC_MARKER), "{}", text.text);
    assert!(!text.text.contains("ANALYTICS-SCRIPT"), "{}", text.text);

    let plain = within(T, "fetch", f.fetch(&pages.url("/plain"), in_secs(10)))
        .await
        .expect("plain page");
    assert_eq!(plain.kind, PageKind::Plain);
    assert!(plain.body.contains(PLAIN_MARKER));

    let latin1 = within(T, "fetch", f.fetch(&pages.url("/latin1"), in_secs(10)))
        .await
        .expect("latin-1 page");
    assert!(
        latin1.body.contains("Un café, s'il vous plaît."),
        "{}",
        latin1.body
    );
}

#[tokio::test]
async fn page_fetch_stops_reading_at_the_size_cap() {
    let pages = PageServer::start().await;
    let cap = 256 * 1024;
    let f = fetcher(cap, Duration::from_secs(10), true);
    // `/huge` never ends: only stopping at the cap lets this return.
    let page = within(
        T,
        "fetch of an endless page",
        f.fetch(&pages.url("/huge"), in_secs(20)),
    )
    .await
    .expect("capped page");
    assert!(page.truncated);
    assert!(page.body.len() <= cap, "{} bytes", page.body.len());
    assert!(page.body.len() > cap / 2, "{} bytes", page.body.len());
    assert!(page.body.contains(HUGE_START_MARKER));
    // The server was stopped too: it handed out a bounded amount, not the endless rest.
    let sent_then = pages.huge_bytes_sent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pages.huge_bytes_sent() - sent_then < 16 << 20,
        "the body kept streaming"
    );
}

#[tokio::test]
async fn page_fetch_refuses_content_types_other_than_text() {
    let pages = PageServer::start().await;
    let f = fetcher(1 << 20, Duration::from_secs(5), true);
    for (path, ct) in [
        ("/binary", "application/octet-stream"),
        ("/image.png", "image/png"),
        ("/no-type", ""),
    ] {
        let err = within(T, "fetch", f.fetch(&pages.url(path), in_secs(10)))
            .await
            .expect_err("not text");
        assert!(
            matches!(&err, FetchError::UnsupportedContentType { content_type, .. } if content_type == ct),
            "{path}: {err:?}"
        );
    }
    let err = within(T, "fetch", f.fetch(&pages.url("/status/404"), in_secs(10)))
        .await
        .expect_err("404");
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
    let err = within(T, "fetch", f.fetch("file:///etc/passwd", in_secs(10)))
        .await
        .expect_err("not http");
    assert!(matches!(err, FetchError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn page_fetch_follows_redirects_up_to_the_limit() {
    let pages = PageServer::start().await;
    let f = fetcher(1 << 20, Duration::from_secs(5), true); // limit 3
    let page = within(T, "fetch", f.fetch(&pages.url("/redirect/2"), in_secs(10)))
        .await
        .expect("3 redirects are fine");
    assert_eq!(page.final_url.as_str(), pages.url("/static"));

    let err = within(T, "fetch", f.fetch(&pages.url("/redirect/3"), in_secs(10)))
        .await
        .expect_err("4 redirects are too many");
    assert!(
        matches!(err, FetchError::TooManyRedirects { max: 3, .. }),
        "{err:?}"
    );

    let before = pages.paths().len();
    let err = within(T, "fetch", f.fetch(&pages.url("/loop"), in_secs(10)))
        .await
        .expect_err("a loop");
    assert!(
        matches!(err, FetchError::TooManyRedirects { .. }),
        "{err:?}"
    );
    assert_eq!(pages.paths().len() - before, 4, "{:?}", pages.paths());
}

#[tokio::test]
async fn page_fetch_gives_up_at_the_page_timeout_or_the_deadline() {
    let pages = PageServer::start().await;
    let f = fetcher(1 << 20, Duration::from_millis(500), true);
    let start = Instant::now();
    let err = within(T, "fetch", f.fetch(&pages.url("/slow"), in_secs(10)))
        .await
        .expect_err("slow");
    assert!(matches!(err, FetchError::TimedOut { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    let f = fetcher(1 << 20, Duration::from_secs(30), true);
    let start = Instant::now();
    let deadline = Instant::now() + Duration::from_millis(400);
    let err = within(T, "fetch", f.fetch(&pages.url("/slow"), deadline))
        .await
        .expect_err("slow");
    assert!(matches!(err, FetchError::TimedOut { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the deadline wins: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn page_fetch_refuses_private_addresses_unless_allowed() {
    let pages = PageServer::start().await;
    let f = fetcher(1 << 20, Duration::from_secs(5), false);
    let err = within(T, "fetch", f.fetch(&pages.url("/static"), in_secs(10)))
        .await
        .expect_err("loopback");
    assert!(matches!(err, FetchError::Blocked { .. }), "{err:?}");
    let local = pages.url("/static").replace("127.0.0.1", "localhost");
    let err = within(T, "fetch", f.fetch(&local, in_secs(10)))
        .await
        .expect_err("localhost");
    assert!(matches!(err, FetchError::Blocked { .. }), "{err:?}");
    assert!(
        pages.paths().is_empty(),
        "a request got through: {:?}",
        pages.paths()
    );
}

// ---------------------------------------------------------------------------
// The handler: search, then the top pages, within the deadline
// ---------------------------------------------------------------------------

#[tokio::test]
async fn handler_returns_findings_and_skips_pages_it_cannot_read() {
    let pages = PageServer::start().await;
    let fake = FakeSearch::start(vec![
        Hit::new("Static", &pages.url("/static"), "a static page"),
        Hit::new("Binary", &pages.url("/binary"), "not text"),
        Hit::new("Plain", &pages.url("/plain"), "plain text"),
        Hit::new("Loop", &pages.url("/loop"), "redirect loop"),
        Hit::new("Not fetched", &pages.url("/latin1"), "beyond top-k"),
    ])
    .await;
    let worker = start_worker(&[
        "--search-url",
        &fake.url(),
        "--allow-private-addresses",
        "--fetch-pages",
        "4",
        "--max-redirects",
        "2",
        "--max-page-text",
        "100",
    ])
    .await;
    let info = worker.handler().info();
    assert_eq!(
        (info.provider.as_str(), info.model.as_str()),
        ("searxng", "searxng")
    );

    let findings = handle(&worker, "  test pages  ", Duration::from_secs(20))
        .await
        .expect("findings");

    assert_eq!(findings.query, "test pages");
    assert_eq!(findings.results.len(), 5);
    let urls: Vec<&str> = findings.pages.iter().map(|p| p.url.as_str()).collect();
    assert_eq!(
        urls,
        [pages.url("/static"), pages.url("/plain")],
        "in result order"
    );
    assert_eq!(findings.pages[0].title, "Static Test Page");
    assert!(findings.pages.iter().all(|p| p.text.len() <= 100));
    assert!(findings.pages[1].text.contains(PLAIN_MARKER));
    assert!(
        !pages.paths().contains(&"/latin1".to_string()),
        "fetched beyond top-k"
    );
}

#[tokio::test]
async fn handler_fails_when_the_search_fails() {
    let fake = FakeSearch::start(hits()).await;
    fake.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
    let worker = start_worker(&[
        "--search-url",
        &fake.url(),
        "--search-retries",
        "2",
        "--fetch-pages",
        "0",
    ])
    .await;
    let err = handle(&worker, "q", Duration::from_secs(20))
        .await
        .expect_err("search failed");
    assert_eq!(err.code, ErrorCode::Upstream, "{err}");
    assert!(err.message.contains("searxng"), "{err}");

    // A blank query falls back to the task; nothing to search for is invalid input.
    let findings = handle(&worker, "   ", Duration::from_secs(20))
        .await
        .expect("task as query");
    assert_eq!(findings.query, "research something");
    assert_eq!(
        fake.requests()
            .last()
            .and_then(|r| r.param("q").map(String::from))
            .as_deref(),
        Some("research something")
    );
    let mut blank = request(" ");
    blank.task = "\n".into();
    let err = within(
        T,
        "handler",
        worker.handler().handle(blank, ctx(Duration::from_secs(5))),
    )
    .await
    .expect_err("nothing to search");
    assert_eq!(err.code, ErrorCode::InvalidInput);
    let err = handle(&worker, &"x".repeat(3000), Duration::from_secs(20))
        .await
        .expect_err("long query");
    assert_eq!(err.code, ErrorCode::InvalidInput);
}

#[tokio::test]
async fn handler_answers_before_the_deadline_without_slow_pages() {
    let pages = PageServer::start().await;
    let fake = FakeSearch::start(vec![
        Hit::new("Slow", &pages.url("/slow"), "never answers"),
        Hit::new("Static", &pages.url("/static"), "fast"),
    ])
    .await;
    let worker = start_worker(&[
        "--search-url",
        &fake.url(),
        "--allow-private-addresses",
        "--page-timeout",
        "30s",
    ])
    .await;
    let start = Instant::now();
    let budget = Duration::from_secs(3);
    let findings = handle(&worker, "q", budget)
        .await
        .expect("findings despite a hung page");
    assert!(
        start.elapsed() < budget,
        "answered after {:?}",
        start.elapsed()
    );
    assert_eq!(findings.results.len(), 2);
    assert_eq!(findings.pages.len(), 1);
    assert!(findings.pages[0].text.contains(STATIC_MARKER));
}

// ---------------------------------------------------------------------------
// Real headless Chromium
// ---------------------------------------------------------------------------

fn chromium() -> &'static str {
    let path = orch_web::browser::DEFAULT_CHROMIUM;
    assert!(
        std::path::Path::new(path).is_file(),
        "{path} is missing: the browser test needs Debian's chromium (apt-get install -y chromium)"
    );
    path
}

#[tokio::test]
async fn browser_mode_sees_text_that_only_javascript_writes() {
    let chromium = chromium();
    let pages = PageServer::start().await;
    let fake = FakeSearch::start(vec![Hit::new(
        "JS",
        &pages.url("/js"),
        "a script writes this page",
    )])
    .await;
    let url = fake.url();
    let common = [
        "--search-url",
        url.as_str(),
        "--allow-private-addresses",
        "--fetch-pages",
        "1",
    ];

    // Plain fetching sees the page without its script's text.
    let plain = start_worker(&common).await;
    let findings = handle(&plain, "js", Duration::from_secs(20))
        .await
        .expect("plain findings");
    let text = findings
        .pages
        .first()
        .map(|p| p.text.as_str())
        .unwrap_or("");
    assert!(
        !text.contains(JS_MARKER),
        "plain fetch ran the script?\n{text}"
    );

    // The browser runs it.
    let mut flags = common.to_vec();
    flags.extend(["--browser", "--chromium-path", chromium]);
    let rendering = start_worker(&flags).await;
    let findings = handle(&rendering, "js", Duration::from_secs(30))
        .await
        .expect("browser findings");
    assert_eq!(findings.pages.len(), 1, "{findings:?}");
    let page = &findings.pages[0];
    assert!(
        page.text.contains(JS_MARKER),
        "rendered text lacks the marker:\n{}",
        page.text
    );
    assert_eq!(page.title, "JS Test Page");
    let pid = rendering
        .browser()
        .and_then(|b| b.pid())
        .expect("browser pid");
    rendering.shutdown().await;
    eventually(
        Duration::from_secs(10),
        "chromium exits on shutdown",
        || async move {
            let gone =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err();
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn browser_renders_with_a_screenshot_and_bounds_tabs_and_time() {
    let chromium = chromium();
    let pages = PageServer::start().await;
    let pool = within(
        T,
        "launching chromium",
        BrowserPool::launch(BrowserSettings {
            executable: chromium.into(),
            tabs: 1,
            settle: Duration::from_millis(100),
            launch_timeout: Duration::from_secs(20),
            max_html_bytes: 1 << 20,
        }),
    )
    .await
    .expect("chromium starts");

    let shot = within(
        T,
        "render",
        pool.render(&pages.url("/js"), in_secs(20), true),
    )
    .await
    .expect("rendered");
    assert!(shot.html.contains(JS_MARKER));
    assert_eq!(shot.title, "JS Test Page");
    let png = shot.screenshot.expect("screenshot");
    assert!(png.starts_with(&[0x89, b'P', b'N', b'G']), "not a PNG");

    // A page that never loads times out at the deadline, and its tab is released:
    // with one tab, the next render would wait forever otherwise.
    let start = Instant::now();
    let err = within(
        T,
        "render",
        pool.render(
            &pages.url("/slow"),
            Instant::now() + Duration::from_secs(1),
            false,
        ),
    )
    .await
    .expect_err("slow page");
    assert!(
        matches!(err, orch_web::browser::BrowserError::TimedOut { .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    within(
        T,
        "render after a timeout",
        pool.render(&pages.url("/static"), in_secs(20), false),
    )
    .await
    .expect("the tab was released");

    pool.shutdown().await;
    let err = within(
        T,
        "render after shutdown",
        pool.render(&pages.url("/static"), in_secs(5), false),
    )
    .await
    .expect_err("closed");
    assert_eq!(err, orch_web::browser::BrowserError::Closed);
}

#[tokio::test]
async fn a_missing_chromium_is_a_clear_startup_error() {
    let err = within(
        T,
        "launching a missing chromium",
        BrowserPool::launch(BrowserSettings {
            executable: "/nonexistent/chromium".into(),
            tabs: 1,
            settle: Duration::ZERO,
            launch_timeout: Duration::from_secs(5),
            max_html_bytes: 1024,
        }),
    )
    .await
    .expect_err("no such binary");
    assert!(
        err.to_string()
            .contains("cannot start Chromium at /nonexistent/chromium"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// End to end through NATS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn web_worker_serves_findings_through_nats_and_the_coordinator() {
    let nats = NatsServer::start();
    let pages = PageServer::start().await;
    let served = vec![
        Hit::new("Static page", &pages.url("/static"), "the static test page"),
        Hit::new("Plain page", &pages.url("/plain"), "the plain test page"),
        Hit::new("Binary", &pages.url("/binary"), "skipped: not text"),
    ];
    let fake = FakeSearch::start(served.clone()).await;
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;

    // The web worker's real serve loop, as the binary runs it.
    let web = start_worker(&["--search-url", &fake.url(), "--allow-private-addresses"]).await;
    let client = nats.connect().await;
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(orch_worker::serve(
        client,
        web.handler(),
        ServeConfig::new("default".parse().expect("slot")),
        shutdown.clone(),
    ));
    let probe = nats.connect().await;
    eventually(T, "web worker visible in $SRV.INFO", || {
        let probe = probe.clone();
        async move {
            let found = orch_client::discover(&probe, Duration::from_millis(150))
                .await
                .ok()?;
            found
                .iter()
                .any(|s| s.meta("role") == "web" && s.meta("provider") == "searxng")
                .then_some(())
        }
    })
    .await;

    let request = SubmitRequest {
        tools: Some(vec!["web_search".into(), "kimi_k2".into()]),
        web_search_query: Some("orchestrated web search".into()),
        ..SubmitRequest::new("Find out about the test pages")
    };
    let result = within(T, "task result", fleet.orch.execute(&request))
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"));

    let web_result = &result.model_results[&Role::Web];
    assert!(web_result.success, "web failed: {:?}", web_result.error);
    assert_eq!(web_result.provider, "searxng");
    assert_eq!(web_result.model, "searxng");
    let findings: WebFindings =
        serde_json::from_value(web_result.content.clone()).expect("WebFindings");
    assert_eq!(findings.query, "orchestrated web search");
    assert_eq!(findings.results, as_search_hits(&served));
    assert_eq!(findings.pages.len(), 2, "{:?}", findings.pages);
    assert_eq!(findings.pages[0].title, "Static Test Page");
    assert!(
        findings.pages[0].text.contains(STATIC_MARKER),
        "{}",
        findings.pages[0].text
    );
    assert!(findings.pages[1].text.contains(PLAIN_MARKER));
    assert!(result.succeeded(), "no plan: {:?}", result.fallback_chain);
    assert!(
        result.models_used.contains(&"searxng".to_string()),
        "{:?}",
        result.models_used
    );

    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].param("q"), Some("orchestrated web search"));
    assert_eq!(sent[0].param("format"), Some("json"));

    shutdown.cancel();
    let report = within(T, "web worker drain", serve)
        .await
        .expect("serve task")
        .expect("serve");
    assert_eq!(report.completed, 1);
    web.shutdown().await;
}
