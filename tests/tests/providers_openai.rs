//! The OpenAI-compatible backend and the role handlers against a
//! protocol-faithful fake server: what we send (path, headers, body) and how
//! each kind of reply is handled (typed errors, retries within the deadline,
//! broken streams, repair), then end to end through a real nats-server,
//! coordinator and worker serve loop.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use orch_client::{OrchestratedResult, SubmitRequest};
use orch_coordinator::CoordinatorConfig;
use orch_providers::chat::{ChatModel, ChatRequest, ProviderError};
use orch_providers::cli::{CallArgs, OpenAiArgs};
use orch_providers::image::test_png;
use orch_providers::openai::{OpenAiChat, OpenAiConfig, StructuredOutput};
use orch_providers::retry::RetryPolicy;
use orch_providers::roles::schema::check_strict;
use orch_providers::roles::{LlmHandler, RoleOptions};
use orch_shared::config::Problems;
use orch_shared::secret::ApiKey;
use orch_shared::wire::{Plan, Usage, VisionAnalysis, WorkRequest};
use orch_shared::{Blob, ErrorCode, Role, Slot};
use orch_tests::fake::openai::{FakeOpenAi, Reply};
use orch_tests::fleet::Fleet;
use orch_tests::nats::NatsServer;
use orch_tests::wait::{eventually, within};
use orch_worker::serve::{ServeConfig, ServeReport, serve};
use orch_worker::{Handler, JobContext};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "sk-test-0123456789abcdefSECRET";

fn ctx(budget: Duration) -> JobContext {
    JobContext {
        deadline: Instant::now() + budget,
        cancel: CancellationToken::new(),
    }
}

fn backend(fake: &FakeOpenAi, f: impl FnOnce(&mut OpenAiConfig)) -> Arc<OpenAiChat> {
    let mut cfg = OpenAiConfig::new(fake.base_url().parse().unwrap(), "kimi-k2.6");
    cfg.api_key = Some(ApiKey::new(KEY).unwrap());
    // Short steps keep retry tests quick; the rules are the same.
    cfg.retry = RetryPolicy {
        base: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    f(&mut cfg);
    Arc::new(OpenAiChat::new(cfg).unwrap())
}

fn work(role: Role) -> WorkRequest {
    WorkRequest {
        task_id: "task-1".parse().unwrap(),
        role,
        slot: Slot::default_slot(),
        task: "Find Python developers on LinkedIn".into(),
        context: Some("Building talent pipeline".into()),
        available_tools: vec![
            "playwright_navigate".into(),
            "playwright_extract_entities".into(),
        ],
        screenshot: None,
        query: None,
        screenshot_ref: None,
        vision: None,
        web: None,
        answer: None,
    }
}

fn plan_json() -> Value {
    json!({
        "steps": [
            {"tool": "playwright_navigate", "args": [{"name": "url", "value": "https://www.linkedin.com/search"}], "why": "open the search"},
            {"tool": "playwright_extract_entities", "args": [], "why": "collect profiles"}
        ],
        "answer": "Search LinkedIn for Python developers and extract the profiles.",
        "confidence": 0.82
    })
}

fn handler(role: Role, model: Arc<OpenAiChat>) -> LlmHandler {
    LlmHandler::new(role, model, RoleOptions::default()).unwrap()
}

/// The reasoner's real first request for [`work`] (the backend here is never called).
fn simple_request() -> ChatRequest {
    handler(
        Role::Reasoner,
        Arc::new(
            OpenAiChat::new(OpenAiConfig::new(
                "http://127.0.0.1:9/v1".parse().unwrap(),
                "m",
            ))
            .unwrap(),
        ),
    )
    .request(&work(Role::Reasoner))
    .unwrap()
}

async fn chat(
    model: &OpenAiChat,
    budget: Duration,
) -> Result<orch_providers::chat::ChatResponse, ProviderError> {
    within(T, "chat call", model.chat(&simple_request(), &ctx(budget))).await
}

// ---------------------------------------------------------------------------
// What we send, and the happy paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sends_key_model_and_strict_schema_and_maps_usage_and_model() {
    let fake = FakeOpenAi::start().await;
    fake.require_key(KEY);
    fake.push(
        Reply::json(&plan_json())
            .model("kimi-k2.6-20260101")
            .usage(123, 45),
    );
    let h = handler(Role::Reasoner, backend(&fake, |_| {}));
    let out = within(T, "handle", h.handle(work(Role::Reasoner), ctx(T)))
        .await
        .unwrap();

    assert_eq!(out.provider, "openai");
    assert_eq!(out.model, "kimi-k2.6-20260101");
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 123,
            output_tokens: 45
        })
    );
    let plan: Plan = serde_json::from_value(out.content).unwrap();
    assert_eq!(plan.steps[0].args["url"], "https://www.linkedin.com/search");
    assert_eq!(plan.confidence, 0.82);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(r.header("user-agent").unwrap().starts_with("orch/"));
    let b = &r.body;
    assert_eq!(b["model"], "kimi-k2.6");
    assert_eq!(b["stream"], false);
    assert_eq!(b["response_format"]["type"], "json_schema");
    let js = &b["response_format"]["json_schema"];
    assert_eq!(js["name"], "plan");
    assert_eq!(js["strict"], true);
    check_strict(&js["schema"]).unwrap();
    assert_eq!(
        js["schema"]["properties"]["steps"]["items"]["properties"]["tool"]["enum"],
        json!(["playwright_extract_entities", "playwright_navigate"])
    );
    assert_eq!(b["messages"][0]["role"], "system");
    assert!(
        b["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("may only use the tools listed")
    );
    let user = b["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Find Python developers on LinkedIn"),
        "{user}"
    );
    assert!(
        user.contains("playwright_navigate, playwright_extract_entities"),
        "{user}"
    );
    assert_eq!(b["max_tokens"], 4096);
    // Moonshot's quirk only applies to its host; this fake gets a temperature.
    assert!(b.get("temperature").is_some());
}

#[tokio::test]
async fn vision_sends_the_screenshot_as_a_data_url_image_part() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::json(&json!({
        "description": "A LinkedIn search page with a sign-in wall.",
        "elements": [{"kind": "button", "label": "Sign in"}],
        "errors_detected": ["Sign-in required"],
        "suggested_actions": ["Sign in"]
    })));
    let h = handler(
        Role::Vision,
        backend(&fake, |c| c.model = "gpt-4o-mini".into()),
    );
    let png = test_png(1280, 800);
    let mut w = work(Role::Vision);
    w.screenshot = Some(Blob(png.clone()));
    let out = within(T, "handle", h.handle(w, ctx(T))).await.unwrap();
    let v: VisionAnalysis = serde_json::from_value(out.content).unwrap();
    assert_eq!(v.errors_detected, ["Sign-in required"]);

    let b = &fake.requests()[0].body;
    assert_eq!(
        b["response_format"]["json_schema"]["name"],
        "vision_analysis"
    );
    let parts = b["messages"][1]["content"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "text");
    assert_eq!(parts[1]["type"], "image_url");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    let data = url.strip_prefix("data:image/png;base64,").expect(url);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
        png.to_vec()
    );
}

#[tokio::test]
async fn garbage_screenshots_never_reach_the_api() {
    let fake = FakeOpenAi::start().await;
    let h = handler(Role::Vision, backend(&fake, |_| {}));
    let mut w = work(Role::Vision);
    w.screenshot = Some(Blob::from(b"<html>not an image</html>".to_vec()));
    let e = within(T, "handle", h.handle(w, ctx(T))).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidInput);
    assert!(e.message.contains("not a PNG or JPEG"), "{e}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn streamed_replies_are_accumulated_with_usage() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        Reply::json(&plan_json())
            .chunks(7)
            .usage(50, 60)
            .model("kimi-k2.6-stream"),
    );
    let model = backend(&fake, |c| c.stream = true);
    let r = chat(&model, T).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.text).unwrap(), plan_json());
    assert_eq!(r.model, "kimi-k2.6-stream");
    assert_eq!(
        r.usage,
        Some(Usage {
            input_tokens: 50,
            output_tokens: 60
        })
    );
    let req = &fake.requests()[0];
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(req.header("accept"), Some("text/event-stream"));
}

// ---------------------------------------------------------------------------
// Retries and the deadline
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_429_is_retried_after_retry_after_ms_within_the_deadline() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::rate_limited_ms(300));
    fake.push(Reply::json(&plan_json()));
    let r = chat(&backend(&fake, |_| {}), Duration::from_secs(10)).await;
    assert!(r.is_ok(), "{r:?}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(300), "retried after {gap:?}");
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_seconds() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::rate_limited_secs(1));
    fake.push(Reply::json(&plan_json()));
    let r = chat(&backend(&fake, |_| {}), Duration::from_secs(10)).await;
    assert!(r.is_ok(), "{r:?}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at - reqs[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn fails_fast_when_the_servers_wait_would_overrun_the_deadline() {
    let fake = FakeOpenAi::start().await;
    fake.set_default(Reply::rate_limited_ms(30_000));
    let started = Instant::now();
    let e = chat(&backend(&fake, |_| {}), Duration::from_secs(3))
        .await
        .unwrap_err();
    let ProviderError::RateLimited {
        retry_after,
        message,
    } = &e
    else {
        panic!("expected rate_limited, got {e:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(30)));
    assert!(message.contains("Rate limit reached"), "{message}");
    assert_eq!(fake.requests().len(), 1, "no retry may be attempted");
    // Failing now, not at the deadline, leaves the coordinator time to fall back.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_upstream() {
    let fake = FakeOpenAi::start().await;
    fake.set_default(Reply::server_error());
    let e = chat(&backend(&fake, |_| {}), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Upstream);
    assert!(
        matches!(
            e,
            ProviderError::Upstream {
                status: Some(500),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("The server had an error"), "{e}");
    assert_eq!(fake.requests().len(), 3, "first attempt + 2 retries");

    fake.push(Reply::server_error());
    fake.set_default(Reply::json(&plan_json()));
    assert!(chat(&backend(&fake, |_| {}), T).await.is_ok());
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    // A port nobody listens on: bind, note it, close.
    let port = orch_tests::nats::free_port();
    let mut cfg = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1").parse().unwrap(), "m");
    cfg.retry = RetryPolicy {
        base: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let model = OpenAiChat::new(cfg).unwrap();
    let e = chat(&model, T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e:?}");
}

#[tokio::test]
async fn the_http_call_is_dropped_at_the_deadline_and_on_cancel() {
    let fake = FakeOpenAi::start().await;
    fake.set_default(Reply::Delay(
        Duration::from_secs(20),
        Box::new(Reply::json(&plan_json())),
    ));
    let model = backend(&fake, |_| {});
    let started = Instant::now();
    let e = chat(&model, Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let c = ctx(T);
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let e = within(T, "cancelled chat", model.chat(&simple_request(), &c))
        .await
        .unwrap_err();
    assert_eq!(e, ProviderError::Cancelled);
}

// ---------------------------------------------------------------------------
// Errors that are not retried
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unauthorized_is_final_and_never_echoes_the_key() {
    let fake = FakeOpenAi::start().await;
    fake.require_key("sk-the-right-one");
    let e = chat(&backend(&fake, |_| {}), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    let text = format!("{e} {e:?}");
    assert!(text.contains("Incorrect API key provided: ***"), "{text}");
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(fake.requests().len(), 1);

    // A plain 401 (the key is not echoed) is just as final.
    let fake2 = FakeOpenAi::start().await;
    fake2.push(Reply::unauthorized());
    let e = chat(&backend(&fake2, |_| {}), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    assert_eq!(fake2.requests().len(), 1);
}

#[tokio::test]
async fn insufficient_quota_is_final() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::insufficient_quota());
    let e = chat(&backend(&fake, |_| {}), T).await.unwrap_err();
    assert!(matches!(e, ProviderError::QuotaExceeded(_)), "{e:?}");
    assert!(e.to_string().contains("exceeded your current quota"));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn other_4xx_are_bad_requests_with_the_servers_message() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::model_not_found("kimi-k2-0905-preview"));
    let e = chat(&backend(&fake, |_| {}), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(
        e.to_string()
            .contains("The model `kimi-k2-0905-preview` does not exist"),
        "{e}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_malformed_json_body_is_an_upstream_error() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::MalformedBody);
    let e = chat(&backend(&fake, |_| {}), T).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProviderError::Upstream {
                status: Some(200),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("not valid JSON"), "{e}");
}

// ---------------------------------------------------------------------------
// Broken streams are errors, never shorter successes
// ---------------------------------------------------------------------------

fn streaming(fake: &FakeOpenAi) -> Arc<OpenAiChat> {
    backend(fake, |c| {
        c.stream = true;
        c.first_token_timeout = Duration::from_millis(1000);
        c.chunk_timeout = Duration::from_millis(1000);
    })
}

#[tokio::test]
async fn a_stream_with_no_first_token_times_out() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::StalledStream { chunks: 0 });
    let e = chat(&streaming(&fake), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
    assert!(e.to_string().contains("no first token"), "{e}");
}

#[tokio::test]
async fn a_stream_that_stalls_mid_answer_times_out() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::StalledStream { chunks: 3 });
    let e = chat(&streaming(&fake), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
    assert!(e.to_string().contains("no chunk for 1000 ms"), "{e}");
}

#[tokio::test]
async fn a_stream_cut_before_done_is_an_error() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::CutStream);
    let e = chat(&streaming(&fake), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Upstream, "{e:?}");
    assert!(e.to_string().contains("ended before [DONE]"), "{e}");
}

#[tokio::test]
async fn a_malformed_or_error_chunk_is_an_error() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::MalformedChunk);
    let e = chat(&streaming(&fake), T).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Upstream, "{e:?}");
    assert!(e.to_string().contains("malformed stream chunk"), "{e}");

    fake.push(Reply::StreamError("overloaded".into()));
    let e = chat(&streaming(&fake), T).await.unwrap_err();
    assert!(e.to_string().contains("mid-stream: overloaded"), "{e}");
}

#[tokio::test]
async fn a_broken_stream_makes_the_role_fail_not_succeed_short() {
    let fake = FakeOpenAi::start().await;
    fake.set_default(Reply::CutStream);
    let h = handler(Role::Reasoner, streaming(&fake));
    let e = within(T, "handle", h.handle(work(Role::Reasoner), ctx(T)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Upstream);
    // No repair request for transport failures: one call only.
    assert_eq!(fake.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Structured output fallback and repair
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_json_schema_refusal_switches_to_json_object_once() {
    let fake = FakeOpenAi::start().await;
    fake.reject_json_schema();
    fake.set_default(Reply::json(&plan_json()));
    let model = backend(&fake, |_| {});
    assert!(chat(&model, T).await.is_ok());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body["response_format"]["type"], "json_schema");
    assert_eq!(
        reqs[1].body["response_format"],
        json!({"type": "json_object"})
    );
    let system = reqs[1].body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("JSON Schema") && system.contains("\"confidence\""),
        "{system}"
    );
    assert_eq!(model.structured_output(), StructuredOutput::JsonObject);

    // Later calls go straight to json_object.
    assert!(chat(&model, T).await.is_ok());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[2].body["response_format"],
        json!({"type": "json_object"})
    );
}

#[tokio::test]
async fn invalid_json_gets_one_repair_attempt_then_invalid_output() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::ok("I think the plan is: search LinkedIn.").usage(10, 3));
    fake.push(Reply::ok(r#"{"steps": [], "answer": "x", "confidence": 4}"#).usage(20, 5));
    fake.push(Reply::json(&plan_json()));
    let h = handler(Role::Reasoner, backend(&fake, |_| {}));
    let e = within(T, "handle", h.handle(work(Role::Reasoner), ctx(T)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOutput);
    assert!(e.message.contains("after one repair attempt"), "{e}");
    assert!(e.message.contains("within 0..=1"), "{e}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "exactly one repair request");
    let repair = reqs[1].body["messages"][1]["content"].as_str().unwrap();
    assert!(
        repair.contains("could not be used: the reply contains no complete JSON object"),
        "{repair}"
    );
    assert!(
        repair.contains("I think the plan is: search LinkedIn."),
        "{repair}"
    );
}

#[tokio::test]
async fn a_successful_repair_sums_usage_and_tolerates_fences() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::ok("{\"steps\": [").usage(10, 3));
    fake.push(
        Reply::ok(format!("Here you go:\n```json\n{}\n```", plan_json()))
            .usage(20, 5)
            .model("kimi-k2.6-repaired"),
    );
    let h = handler(Role::Reasoner, backend(&fake, |_| {}));
    let out = within(T, "handle", h.handle(work(Role::Reasoner), ctx(T)))
        .await
        .unwrap();
    assert_eq!(out.model, "kimi-k2.6-repaired");
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 30,
            output_tokens: 8
        })
    );
    assert_eq!(out.content["answer"], plan_json()["answer"]);
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A `MakeWriter` collecting everything a subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn the_api_key_appears_in_no_log_span_or_error() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeOpenAi::start().await;
    // Built the way the binaries build it: flags + a key from the environment.
    let args = OpenAiArgs {
        base_url: fake.base_url(),
        api_key_env: Some("ORCH_TEST_KEY".into()),
        ..OpenAiArgs::default()
    };
    let call = CallArgs {
        max_retries: 1,
        ..CallArgs::default()
    };
    let mut problems = Problems::default();
    let env = |k: &str| (k == "ORCH_TEST_KEY").then(|| KEY.to_string());
    let model: Arc<dyn ChatModel> = args
        .build_with_env(&call, &env, &mut problems)
        .unwrap_or_else(|| panic!("{:?}", problems.list()));
    let h = LlmHandler::new(Role::Reasoner, model.clone(), RoleOptions::default()).unwrap();

    let mut errors = Vec::new();
    fake.push(Reply::json(&plan_json()));
    assert!(h.handle(work(Role::Reasoner), ctx(T)).await.is_ok());
    fake.require_key("sk-another-key");
    errors.push(
        h.handle(work(Role::Reasoner), ctx(T))
            .await
            .unwrap_err()
            .to_string(),
    );
    fake.require_key(KEY);
    fake.push(Reply::rate_limited_ms(10));
    fake.push(Reply::server_error());
    errors.push(
        h.handle(work(Role::Reasoner), ctx(T))
            .await
            .unwrap_err()
            .to_string(),
    );
    fake.push(Reply::StreamError(format!("echo {KEY}")));
    let streaming = OpenAiArgs {
        base_url: fake.base_url(),
        api_key_env: Some("ORCH_TEST_KEY".into()),
        ..OpenAiArgs::default()
    };
    let call_stream = CallArgs {
        stream: true,
        ..CallArgs::default()
    };
    let m2 = streaming
        .build_with_env(&call_stream, &env, &mut problems)
        .unwrap();
    errors.push(
        m2.chat(&simple_request(), &ctx(T))
            .await
            .unwrap_err()
            .to_string(),
    );
    errors.push(format!("{args:?} {model:?}", model = model.info()));

    // The key was really sent...
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {KEY}").as_str()))
    );
    // ...and is nowhere else.
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("gen_ai.provider.name"),
        "spans were captured:\n{logs}"
    );
    assert!(logs.contains("retrying"), "retries were logged:\n{logs}");
    assert!(!logs.contains(KEY), "the key leaked into logs:\n{logs}");
    for e in &errors {
        assert!(!e.contains(KEY), "the key leaked into an error: {e}");
    }
    assert!(
        errors[0].starts_with("unauthorized: Incorrect API key provided: ***"),
        "{}",
        errors[0]
    );
    // Prompts stay out of logs too.
    assert!(
        !logs.contains("Find Python developers"),
        "a prompt leaked into logs"
    );
}

// ---------------------------------------------------------------------------
// End to end: nats-server, coordinator, worker serve loop, fake API
// ---------------------------------------------------------------------------

/// A worker running the real serve loop with `handler`, stopped on drop.
struct LlmWorker {
    shutdown: CancellationToken,
    join: Option<JoinHandle<ServeReport>>,
}

impl Drop for LlmWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

async fn start_worker(url: &str, slot: &str, handler: Arc<dyn Handler>) -> LlmWorker {
    let client = within(T, "worker connect", async_nats::connect(url))
        .await
        .unwrap();
    let role = handler.role();
    let cfg = ServeConfig::new(slot.parse().unwrap());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let join = tokio::spawn(async move {
        serve(client, handler, cfg, token)
            .await
            .unwrap_or_else(|e| panic!("worker serve: {e}"))
    });
    let probe = within(T, "probe connect", async_nats::connect(url))
        .await
        .unwrap();
    eventually(T, &format!("{role}/{slot} discoverable"), || {
        let probe = probe.clone();
        async move {
            let found = orch_client::discover(&probe, Duration::from_millis(150))
                .await
                .unwrap_or_default();
            found
                .iter()
                .any(|s| {
                    s.meta("role") == role.as_str()
                        && s.meta("slot") == slot
                        && s.meta("provider") == "openai"
                })
                .then_some(())
        }
    })
    .await;
    LlmWorker {
        shutdown,
        join: Some(join),
    }
}

fn reasoning_task(id: &str) -> SubmitRequest {
    SubmitRequest {
        task: "Find Python developers on LinkedIn".into(),
        tools: Some(vec!["kimi_k2".into()]),
        available_tools: vec![
            "playwright_navigate".into(),
            "playwright_extract_entities".into(),
        ],
        context: Some("Building talent pipeline".into()),
        task_id: Some(id.into()),
        ..SubmitRequest::default()
    }
}

async fn execute(fleet: &Fleet, req: &SubmitRequest) -> OrchestratedResult {
    within(T, "task result", fleet.orch.execute(req))
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"))
}

#[tokio::test]
async fn fleet_answers_with_the_openai_backed_reasoner() {
    let nats = NatsServer::start();
    let fake = FakeOpenAi::start().await;
    fake.require_key(KEY);
    fake.set_default(
        Reply::json(&plan_json())
            .model("kimi-k2.6-0711")
            .usage(321, 54),
    );
    let worker = start_worker(
        &nats.url(),
        "kimi_k2",
        Arc::new(handler(Role::Reasoner, backend(&fake, |_| {}))),
    )
    .await;
    let fleet = Fleet::start(&nats.url(), CoordinatorConfig::default(), vec![]).await;

    let r = execute(&fleet, &reasoning_task("e2e-openai-1")).await;

    assert!(r.fallback_chain.is_empty(), "{:?}", r.fallback_chain);
    let plan = r
        .plan()
        .expect("the fake model's plan is the primary answer");
    assert_eq!(plan.answer, plan_json()["answer"]);
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].tool, "playwright_navigate");
    let m = &r.model_results[&Role::Reasoner];
    assert!(m.success);
    assert_eq!(m.slot.as_str(), "kimi_k2");
    assert_eq!(m.provider, "openai");
    assert_eq!(m.model, "kimi-k2.6-0711");
    assert_eq!(
        m.usage,
        Some(Usage {
            input_tokens: 321,
            output_tokens: 54
        })
    );
    assert_eq!(r.models_used, ["kimi-k2.6-0711"]);
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
    let sent = &fake.requests()[0].body;
    assert!(
        sent["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("Building talent pipeline")
    );
    drop(worker);
}

#[tokio::test]
async fn a_401_on_the_primary_slot_falls_back_to_the_next() {
    let nats = NatsServer::start();
    let fake = FakeOpenAi::start().await;
    fake.require_key(KEY);
    fake.set_default(Reply::json(&plan_json()).model("gpt-4o-mini-2024-07-18"));
    let wrong_key = backend(&fake, |c| {
        c.api_key = Some(ApiKey::new("sk-revoked-key-XYZ").unwrap());
    });
    let right_key = backend(&fake, |c| c.model = "gpt-4o-mini".into());
    let _primary = start_worker(
        &nats.url(),
        "kimi_k2",
        Arc::new(handler(Role::Reasoner, wrong_key)),
    )
    .await;
    let _secondary = start_worker(
        &nats.url(),
        "chatgpt",
        Arc::new(handler(Role::Reasoner, right_key)),
    )
    .await;
    let fleet = Fleet::start(&nats.url(), CoordinatorConfig::default(), vec![]).await;

    let r = execute(&fleet, &reasoning_task("e2e-openai-401")).await;

    assert_eq!(r.fallback_chain.len(), 1, "{:?}", r.fallback_chain);
    let entry = &r.fallback_chain[0];
    assert!(
        entry.starts_with("reasoner/kimi_k2: unauthorized: Incorrect API key provided: ***"),
        "{entry}"
    );
    assert!(!entry.contains("sk-revoked-key-XYZ"), "{entry}");
    let m = &r.model_results[&Role::Reasoner];
    assert!(m.success);
    assert_eq!(m.slot.as_str(), "chatgpt");
    assert_eq!(m.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(r.plan().unwrap().answer, plan_json()["answer"]);
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["unauthorized", "ok"]);
}
