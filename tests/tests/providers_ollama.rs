//! The Ollama backend and the vision role against a protocol-faithful fake
//! Ollama: what we send (`/api/chat`, raw base64 images, `format` schema,
//! `stream`, `options`) and how each reply is handled (NDJSON accumulation,
//! usage, 404 model not found, broken streams, retries), then a vision task
//! end to end through a real nats-server, coordinator and worker serve loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use orch_client::SubmitRequest;
use orch_coordinator::CoordinatorConfig;
use orch_providers::chat::{ChatModel, ChatRequest, ChatResponse, ProviderError};
use orch_providers::image::test_png;
use orch_providers::ollama::{OllamaChat, OllamaConfig};
use orch_providers::openai::StructuredOutput;
use orch_providers::retry::RetryPolicy;
use orch_providers::roles::{LlmHandler, RoleOptions, schema};
use orch_shared::wire::{Usage, VisionAnalysis, WorkRequest};
use orch_shared::{Blob, ErrorCode, Role, Slot};
use orch_tests::fake::ollama::{FakeOllama, OllamaReply};
use orch_tests::fleet::Fleet;
use orch_tests::nats::NatsServer;
use orch_tests::wait::{eventually, within};
use orch_worker::serve::{ServeConfig, serve};
use orch_worker::{Handler, JobContext};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

fn ctx(budget: Duration) -> JobContext {
    JobContext {
        deadline: Instant::now() + budget,
        cancel: CancellationToken::new(),
    }
}

fn backend(fake: &FakeOllama, f: impl FnOnce(&mut OllamaConfig)) -> Arc<OllamaChat> {
    let mut cfg = OllamaConfig::new(fake.base_url().parse().unwrap(), "minicpm-v");
    cfg.retry = RetryPolicy {
        base: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    f(&mut cfg);
    Arc::new(OllamaChat::new(cfg).unwrap())
}

fn analysis() -> Value {
    json!({
        "description": "A login form with an error banner.",
        "elements": [{"kind": "input", "label": "Email"}, {"kind": "button", "label": "Log in"}],
        "errors_detected": ["Invalid password"],
        "suggested_actions": ["Re-enter the password"]
    })
}

fn vision_work(png: &bytes::Bytes) -> WorkRequest {
    WorkRequest {
        task_id: "task-v".parse().unwrap(),
        role: Role::Vision,
        slot: Slot::default_slot(),
        task: "Log in to the dashboard".into(),
        context: None,
        available_tools: vec![],
        screenshot: Some(Blob(png.clone())),
        query: None,
        screenshot_ref: None,
        vision: None,
        web: None,
        answer: None,
    }
}

fn vision(model: Arc<OllamaChat>) -> LlmHandler {
    LlmHandler::new(Role::Vision, model, RoleOptions::default()).unwrap()
}

fn text_request() -> ChatRequest {
    ChatRequest {
        system: "Answer in JSON.".into(),
        user: "Describe nothing.".into(),
        images: vec![],
        schema: Some(schema::vision()),
        max_tokens: Some(256),
        temperature: Some(0.0),
    }
}

async fn chat(model: &OllamaChat) -> Result<ChatResponse, ProviderError> {
    within(T, "ollama chat", model.chat(&text_request(), &ctx(T))).await
}

#[tokio::test]
async fn vision_sends_raw_base64_images_and_the_schema_as_format() {
    let fake = FakeOllama::start().await;
    fake.set_models(&["minicpm-v"]);
    fake.push(OllamaReply::Ok {
        content: analysis().to_string(),
        model: Some("minicpm-v:8b".into()),
        prompt_eval_count: 812,
        eval_count: 64,
        chunks: 1,
    });
    let png = test_png(800, 600);
    let out = within(
        T,
        "handle",
        vision(backend(&fake, |_| {})).handle(vision_work(&png), ctx(T)),
    )
    .await
    .unwrap();

    assert_eq!(out.provider, "ollama");
    assert_eq!(out.model, "minicpm-v:8b");
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 812,
            output_tokens: 64
        })
    );
    let a: VisionAnalysis = serde_json::from_value(out.content).unwrap();
    assert_eq!(a.errors_detected, ["Invalid password"]);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/api/chat"));
    assert!(r.header("authorization").is_none());
    let b = &r.body;
    assert_eq!(b["model"], "minicpm-v");
    assert_eq!(
        b["stream"], false,
        "stream must be explicit: Ollama streams by default"
    );
    assert_eq!(b["format"], schema::vision().schema);
    assert_eq!(b["options"]["num_predict"], 4096);
    assert!(b["options"]["temperature"].is_number());
    assert_eq!(b["messages"][0]["role"], "system");
    let user = &b["messages"][1];
    assert_eq!(user["role"], "user");
    assert!(
        user["content"]
            .as_str()
            .unwrap()
            .contains("Log in to the dashboard")
    );
    let img = user["images"][0].as_str().unwrap();
    assert!(
        !img.starts_with("data:"),
        "Ollama wants raw base64, got {img:.40}"
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(img)
            .unwrap(),
        png.to_vec()
    );
}

#[tokio::test]
async fn ndjson_streams_are_accumulated_with_usage() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::Ok {
        content: analysis().to_string(),
        model: None,
        prompt_eval_count: 30,
        eval_count: 40,
        chunks: 9,
    });
    let r = chat(&backend(&fake, |c| c.stream = true)).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.text).unwrap(), analysis());
    assert_eq!(r.model, "minicpm-v");
    assert_eq!(
        r.usage,
        Some(Usage {
            input_tokens: 30,
            output_tokens: 40
        })
    );
    assert_eq!(fake.requests()[0].body["stream"], true);
}

#[tokio::test]
async fn json_mode_sends_format_json_and_the_schema_in_the_prompt() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::json(&analysis()));
    let model = backend(&fake, |c| {
        c.structured_output = StructuredOutput::JsonObject
    });
    assert!(chat(&model).await.is_ok());
    let b = &fake.requests()[0].body;
    assert_eq!(b["format"], "json");
    assert!(
        b["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("JSON Schema")
    );
}

#[tokio::test]
async fn an_unknown_model_is_a_bad_request_with_ollamas_message() {
    let fake = FakeOllama::start().await;
    fake.set_models(&["minicpm-v"]);
    let e = chat(&backend(&fake, |c| c.model = "llava:34b".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest, "{e:?}");
    assert!(
        e.to_string()
            .contains("model \"llava:34b\" not found, try pulling it first"),
        "{e}"
    );
    assert_eq!(fake.requests().len(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn server_errors_are_retried_within_the_deadline() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::server_error(
        "llama runner process has terminated",
    ));
    fake.push(OllamaReply::json(&analysis()));
    assert!(chat(&backend(&fake, |_| {})).await.is_ok());
    assert_eq!(fake.requests().len(), 2);

    fake.set_default(OllamaReply::server_error(
        "llama runner process has terminated",
    ));
    let e = chat(&backend(&fake, |_| {})).await.unwrap_err();
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
    assert!(
        e.to_string()
            .contains("llama runner process has terminated")
    );
}

fn streaming(fake: &FakeOllama) -> Arc<OllamaChat> {
    backend(fake, |c| {
        c.stream = true;
        c.first_token_timeout = Duration::from_millis(1000);
        c.chunk_timeout = Duration::from_millis(1000);
    })
}

#[tokio::test]
async fn a_stalled_stream_times_out() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::StalledStream { lines: 0 });
    let e = chat(&streaming(&fake)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
    assert!(e.to_string().contains("no first token"), "{e}");

    fake.push(OllamaReply::StalledStream { lines: 2 });
    let e = chat(&streaming(&fake)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
    assert!(e.to_string().contains("no chunk"), "{e}");
}

#[tokio::test]
async fn a_stream_cut_before_done_is_an_error() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::CutStream);
    let e = chat(&streaming(&fake)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Upstream, "{e:?}");
    assert!(e.to_string().contains("before the final"), "{e}");
}

#[tokio::test]
async fn malformed_lines_and_error_lines_are_errors() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::MalformedLine);
    let e = chat(&streaming(&fake)).await.unwrap_err();
    assert!(e.to_string().contains("malformed stream line"), "{e}");
    fake.push(OllamaReply::StreamError("out of memory".into()));
    let e = chat(&streaming(&fake)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Upstream);
    assert!(e.to_string().contains("mid-stream: out of memory"), "{e}");
}

#[tokio::test]
async fn the_deadline_cancels_a_slow_reply() {
    let fake = FakeOllama::start().await;
    fake.set_default(OllamaReply::Delay(
        Duration::from_secs(20),
        Box::new(OllamaReply::json(&analysis())),
    ));
    let model = backend(&fake, |_| {});
    let e = within(
        T,
        "slow chat",
        model.chat(&text_request(), &ctx(Duration::from_millis(300))),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TimedOut, "{e:?}");
}

#[tokio::test]
async fn invalid_vision_output_gets_one_repair_attempt() {
    let fake = FakeOllama::start().await;
    fake.push(OllamaReply::ok(r#"{"description": ""}"#));
    fake.push(OllamaReply::json(&analysis()));
    let png = test_png(64, 64);
    let out = within(
        T,
        "handle",
        vision(backend(&fake, |_| {})).handle(vision_work(&png), ctx(T)),
    )
    .await
    .unwrap();
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 42,
            output_tokens: 18
        })
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let repair = reqs[1].body["messages"][1]["content"].as_str().unwrap();
    assert!(
        repair.contains("`description` must not be empty"),
        "{repair}"
    );
    // The image goes with the repair request too: the model must look again.
    assert_eq!(
        reqs[1].body["messages"][1]["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn fleet_runs_a_vision_task_on_the_ollama_backed_worker() {
    let nats = NatsServer::start();
    let fake = FakeOllama::start().await;
    fake.set_default(OllamaReply::json(&analysis()));
    let handler: Arc<dyn Handler> = Arc::new(vision(backend(&fake, |_| {})));
    let client = within(T, "worker connect", async_nats::connect(nats.url()))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let worker = tokio::spawn(async move {
        serve(
            client,
            handler,
            ServeConfig::new(Slot::default_slot()),
            token,
        )
        .await
    });
    let probe = within(T, "probe connect", async_nats::connect(nats.url()))
        .await
        .unwrap();
    eventually(T, "vision worker discoverable", || {
        let probe = probe.clone();
        async move {
            orch_client::discover(&probe, Duration::from_millis(150))
                .await
                .unwrap_or_default()
                .iter()
                .any(|s| s.meta("role") == "vision" && s.meta("provider") == "ollama")
                .then_some(())
        }
    })
    .await;
    let fleet = Fleet::start(&nats.url(), CoordinatorConfig::default(), vec![]).await;

    let png = test_png(1024, 768);
    let req = SubmitRequest {
        task: "Log in to the dashboard".into(),
        tools: Some(vec!["vision".into()]),
        screenshot: Some(Blob(png.clone())),
        task_id: Some("e2e-ollama-vision".into()),
        ..SubmitRequest::default()
    };
    let r = within(T, "task result", fleet.orch.execute(&req))
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"));

    let m = &r.model_results[&Role::Vision];
    assert!(m.success, "{:?}", m.error);
    assert_eq!(m.provider, "ollama");
    assert_eq!(m.model, "minicpm-v");
    assert_eq!(m.content, analysis());
    assert_eq!(
        m.usage,
        Some(Usage {
            input_tokens: 21,
            output_tokens: 9
        })
    );
    // The screenshot crossed NATS as MessagePack bytes and reached Ollama intact.
    let sent = &fake.requests()[0].body["messages"][1]["images"][0];
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(sent.as_str().unwrap())
            .unwrap(),
        png.to_vec()
    );
    shutdown.cancel();
    let _ = within(T, "worker drain", worker).await;
}
