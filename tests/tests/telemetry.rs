//! OpenTelemetry end to end: coordinator and every worker as separate
//! processes exporting OTLP/HTTP to a receiver inside the test, real model
//! wire protocols behind them (fake OpenAI-compatible servers, a fake Ollama,
//! a fake SearxNG). A client submits with its own `traceparent`; the whole
//! orchestration must land in that one trace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt as _;
use nix::sys::signal::Signal;
use orch_shared::wire::{Event, OrchestratedResult, SubmitRequest};
use orch_shared::{Blob, Role};
use orch_tests::fake::ollama::{FakeOllama, OllamaReply};
use orch_tests::fake::openai::tls_config;
use orch_tests::fake::openai::{FakeOpenAi, Reply};
use orch_tests::fake::search::{FakeSearch, Hit};
use orch_tests::fleet::wait_for_services;
use orch_tests::nats::NatsServer;
use orch_tests::otlp::{OtlpReceiver, SpanRecord};
use orch_tests::pki::Pki;
use orch_tests::process::{Proc, describe_all};
use orch_tests::wait::{eventually, within};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const MOONSHOT_KEY: &str = "sk-moonshot-NEVER-EXPORT-7f3a9c";
const OPENAI_KEY: &str = "sk-openai-NEVER-EXPORT-b41d2e";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn plan() -> Value {
    json!({
        "steps": [
            {"tool": "playwright_navigate", "args": [{"name": "url", "value": "https://example.com/login"}], "why": "open the page"},
            {"tool": "playwright_click", "args": [], "why": "log in"}
        ],
        "answer": "Open the login page and log in.",
        "confidence": 0.8
    })
}

fn verdict() -> Value {
    json!({"verdict": "approved", "issues": [], "confidence": 0.9})
}

fn analysis() -> Value {
    json!({
        "description": "A login form.",
        "elements": [{"kind": "button", "label": "Log in"}],
        "errors_detected": [],
        "suggested_actions": ["Click Log in"]
    })
}

struct World {
    nats: NatsServer,
    otlp: OtlpReceiver,
    _kimi: FakeOpenAi,
    _openai: FakeOpenAi,
    _verifier_api: FakeOpenAi,
    _ollama: FakeOllama,
    _search: FakeSearch,
    procs: Vec<Proc>,
}

async fn world() -> World {
    let nats = NatsServer::start();
    let otlp = OtlpReceiver::start().await;
    // The primary reasoner's key was revoked: a 401, so the coordinator falls back.
    let kimi = FakeOpenAi::start().await;
    kimi.require_key("sk-the-right-key");
    let openai = FakeOpenAi::start().await;
    openai.require_key(OPENAI_KEY);
    openai.set_default(
        Reply::json(&plan())
            .model("gpt-4o-mini-2024-07-18")
            .usage(120, 40),
    );
    let verifier_api = FakeOpenAi::start().await;
    verifier_api.require_key(OPENAI_KEY);
    verifier_api.set_default(
        Reply::json(&verdict())
            .model("gpt-4o-mini-2024-07-18")
            .usage(200, 20),
    );
    let ollama = FakeOllama::start().await;
    ollama.set_default(OllamaReply::json(&analysis()));
    let search = FakeSearch::start(vec![Hit::new(
        "Login help",
        "https://example.com/help",
        "How to log in",
    )])
    .await;

    let url = nats.url();
    let endpoint = otlp.endpoint();
    let env: Vec<(&str, &str)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("MOONSHOT_API_KEY", MOONSHOT_KEY),
        ("OPENAI_API_KEY", OPENAI_KEY),
    ];
    let kimi_url = kimi.base_url();
    let openai_url = openai.base_url();
    let verifier_url = verifier_api.base_url();
    let ollama_url = ollama.base_url();
    let search_url = search.url();
    let n = ["--nats-url", url.as_str()];
    let with =
        |extra: &[&str]| -> Vec<String> { n.iter().chain(extra).map(|s| s.to_string()).collect() };
    let start = |bin: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start(bin, &a, &env)
    };
    let procs = vec![
        start(
            "orch-coordinator",
            with(&["--verify", "--log-format", "json"]),
        ),
        start(
            "orch-vision",
            with(&["--provider", "ollama", "--ollama-url", &ollama_url]),
        ),
        start(
            "orch-web",
            with(&[
                "--provider",
                "searxng",
                "--search-url",
                &search_url,
                "--fetch-pages",
                "0",
            ]),
        ),
        start(
            "orch-reasoner",
            with(&[
                "--slot",
                "kimi_k2",
                "--provider",
                "openai",
                "--base-url",
                &kimi_url,
                "--model",
                "kimi-k2.6",
                "--api-key-env",
                "MOONSHOT_API_KEY",
            ]),
        ),
        start(
            "orch-reasoner",
            with(&[
                "--slot",
                "chatgpt",
                "--provider",
                "openai",
                "--base-url",
                &openai_url,
                "--model",
                "gpt-4o-mini",
                "--api-key-env",
                "OPENAI_API_KEY",
            ]),
        ),
        start(
            "orch-verifier",
            with(&[
                "--slot",
                "chatgpt",
                "--provider",
                "openai",
                "--base-url",
                &verifier_url,
                "--model",
                "gpt-4o-mini",
                "--api-key-env",
                "OPENAI_API_KEY",
            ]),
        ),
    ];
    World {
        nats,
        otlp,
        _kimi: kimi,
        _openai: openai,
        _verifier_api: verifier_api,
        _ollama: ollama,
        _search: search,
        procs,
    }
}

fn by_id(spans: &[SpanRecord]) -> BTreeMap<&str, &SpanRecord> {
    spans.iter().map(|s| (s.span_id.as_str(), s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_client_coordinator_workers_and_model_calls() {
    orch_tests::init_logs();
    let mut w = world().await;
    let client = w.nats.connect().await;
    // Two reasoner slots: the failing kimi_k2 and the answering chatgpt.
    let wanted = [
        ("orch-coordinator", 1),
        ("orch-vision", 1),
        ("orch-web", 1),
        ("orch-reasoner", 2),
        ("orch-verifier", 1),
    ];
    let orch = orch_client::Orchestrator::from_client(client.clone());
    wait_for_services(&orch, &wanted, T, &w.procs).await;

    let task_id = "traced-task-1";
    let mut events = client
        .subscribe(format!("orch.v1.events.{task_id}.>"))
        .await
        .unwrap();
    let request = SubmitRequest {
        task_id: Some(task_id.into()),
        screenshot: Some(Blob(orch_providers::image::test_png(64, 48))),
        web_search_query: Some("how to log in".into()),
        available_tools: vec!["playwright_navigate".into(), "playwright_click".into()],
        verify: Some(true),
        ..SubmitRequest::new("Log in to the dashboard")
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").as_str(),
    );
    headers.insert("baggage", "tenant=acme");
    let reply = within(
        T,
        "submit",
        client.send_request(
            "orch.v1.submit",
            async_nats::Request::new()
                .headers(headers)
                .payload(serde_json::to_vec(&request).unwrap().into())
                .timeout(Some(T)),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("submit: {e}\n{}", describe_all(&w.procs)));
    let result: OrchestratedResult = serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.payload)));

    // The result carries the caller's trace id and the fallback it went through.
    assert_eq!(result.trace_id.as_deref(), Some(TRACE_ID), "{result:#?}");
    assert!(result.plan().is_some(), "{result:#?}");
    assert!(
        result
            .fallback_chain
            .iter()
            .any(|f| f.starts_with("reasoner/kimi_k2")),
        "{:?}",
        result.fallback_chain
    );
    for role in Role::ALL {
        assert!(result.model_results[&role].success, "{role}: {result:#?}");
    }

    // Every event of the task carries the trace id.
    let mut seen = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        let e: Event = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(e.trace_id.as_deref(), Some(TRACE_ID), "{e:?}");
        let tp = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string());
        assert!(
            tp.is_some_and(|t| t.contains(TRACE_ID)),
            "event without traceparent: {e:?}"
        );
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} events");

    // Stop everything gracefully: the exporters flush on shutdown.
    for p in &w.procs {
        p.signal(Signal::SIGTERM);
    }
    for p in &mut w.procs {
        assert!(p.exited(T).await.is_some(), "{} did not exit", p.describe());
    }
    let logs = w.procs[0].stderr();

    let spans: Vec<SpanRecord> = w
        .otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    assert!(w.otlp.errors().is_empty(), "{:?}", w.otlp.errors());
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for s in [
        "orch-coordinator",
        "orch-vision",
        "orch-web",
        "orch-reasoner",
        "orch-verifier",
    ] {
        assert!(
            services.contains(s),
            "no {s} span in the trace; services: {services:?}\n{}",
            describe_all(&w.procs)
        );
    }

    // Parent/child links are intact: the task span is the client's child and
    // every other span's parent is in the trace.
    let ids = by_id(&spans);
    let task = spans
        .iter()
        .find(|s| s.name == "orch.task")
        .expect("task span");
    assert_eq!(task.parent_span_id, CLIENT_SPAN);
    assert_eq!(task.kind, 2, "task span is SERVER");
    assert_eq!(task.attr("messaging.system"), Some("nats"));
    assert_eq!(task.attr("orch.task_id"), Some(task_id));
    assert!(task.attr("orch.confidence").is_some());
    assert_eq!(task.attr("orch.fallback_count"), Some("1"));
    assert!(
        task.attr("orch.models_used")
            .is_some_and(|m| m.contains("gpt-4o-mini"))
    );
    for s in &spans {
        if s.span_id == task.span_id {
            continue;
        }
        assert!(
            ids.contains_key(s.parent_span_id.as_str()),
            "span {} ({}) has parent {} outside the trace",
            s.name,
            s.service,
            s.parent_span_id
        );
    }
    // Phases are children of the task.
    let phases: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name.starts_with("phase "))
        .collect();
    assert_eq!(phases.len(), 3, "{phases:?}");
    assert!(phases.iter().all(|p| p.parent_span_id == task.span_id));

    // The fallback shows both reasoner attempts, the first failed.
    let attempts: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.attr("orch.role") == Some("reasoner") && s.name.starts_with("send "))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    let kimi = attempts
        .iter()
        .find(|a| a.attr("orch.slot") == Some("kimi_k2"))
        .unwrap();
    let gpt = attempts
        .iter()
        .find(|a| a.attr("orch.slot") == Some("chatgpt"))
        .unwrap();
    assert_eq!(kimi.status, 2, "failed attempt has ERROR status: {kimi:?}");
    assert!(kimi.attr("error.type").is_some());
    assert_eq!(gpt.attr("orch.outcome"), Some("ok"));
    for a in [kimi, gpt] {
        assert_eq!(
            ids[a.parent_span_id.as_str()].name,
            "phase reasoning",
            "a reasoner attempt is a child of its phase"
        );
        let phase = ids[a.parent_span_id.as_str()];
        assert!(
            phase.start_ns <= a.start_ns && a.start_ns < a.end_ns && a.end_ns <= phase.end_ns,
            "an attempt lies within its phase: {a:?} in {phase:?}"
        );
        assert_eq!(a.scope, task.scope, "one instrumentation scope");
        assert_eq!(a.attr("orch.hedge"), Some("false"));
        assert!(a.attr("orch.budget_ms").is_some());
        assert_eq!(a.kind, 3, "attempt is CLIENT");
        assert_eq!(a.attr("messaging.system"), Some("nats"));
        assert_eq!(a.attr("messaging.operation.type"), Some("send"));
        assert_eq!(
            a.attr("messaging.destination.name").map(str::to_string),
            Some(format!(
                "orch.v1.work.reasoner.{}",
                a.attr("orch.slot").unwrap()
            ))
        );
    }
    // The fallback's log line is an event of the task span, with its fields.
    let fallback = task
        .events
        .iter()
        .find(|(n, _)| n == "fallback")
        .unwrap_or_else(|| panic!("no fallback event on the task span: {task:?}"));
    assert_eq!(fallback.1.get("slot").map(String::as_str), Some("kimi_k2"));
    assert_eq!(fallback.1.get("level").map(String::as_str), Some("INFO"));
    // Each worker span is the child of an attempt, on the worker's side.
    let jobs: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name.starts_with("process orch.v1.work."))
        .collect();
    assert!(jobs.len() >= 5, "{jobs:#?}");
    for j in &jobs {
        let parent = ids[j.parent_span_id.as_str()];
        assert!(
            parent.name.starts_with("send "),
            "{} under {}",
            j.name,
            parent.name
        );
        assert_eq!(j.kind, 2, "job span is SERVER");
        assert_ne!(j.service, "orch-coordinator");
        assert!(j.attr("messaging.consumer.group.name").is_some());
    }

    // Provider calls follow the GenAI conventions.
    let chats: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    let kimi_chat = chats
        .iter()
        .find(|c| c.name == "chat kimi-k2.6")
        .expect("kimi chat span");
    assert_eq!(kimi_chat.kind, 3);
    assert_eq!(kimi_chat.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(kimi_chat.attr("gen_ai.request.model"), Some("kimi-k2.6"));
    assert!(kimi_chat.attr("gen_ai.provider.name").is_some());
    assert_eq!(
        kimi_chat.attr("error.type"),
        Some("unauthorized"),
        "{kimi_chat:?}"
    );
    let gpt_chat = chats
        .iter()
        .find(|c| c.service == "orch-reasoner" && c.name == "chat gpt-4o-mini")
        .expect("gpt chat span");
    assert_eq!(gpt_chat.attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(
        gpt_chat.attr("gen_ai.response.model"),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(gpt_chat.attr("gen_ai.usage.input_tokens"), Some("120"));
    assert_eq!(gpt_chat.attr("gen_ai.usage.output_tokens"), Some("40"));
    assert!(chats.iter().any(|c| c.service == "orch-vision" && c.attr("gen_ai.provider.name") == Some("ollama")));
    assert!(chats.iter().any(|c| c.service == "orch-verifier"));
    // Content is opt-in: not recorded by default.
    assert!(
        chats
            .iter()
            .all(|c| c.attr("gen_ai.input.messages").is_none())
    );

    // No secret in anything exported, nor in the coordinator's logs.
    for key in [MOONSHOT_KEY, OPENAI_KEY] {
        assert!(!w.otlp.raw_contains(key.as_bytes()), "{key} was exported");
    }
    // The model servers got the trace context too.
    let sent = w._openai.requests();
    assert!(
        sent.iter().any(|r| r
            .header("traceparent")
            .is_some_and(|t| t.contains(TRACE_ID))),
        "no traceparent sent to the model server"
    );

    // JSON log lines carry the trace id.
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{TRACE_ID}\""))),
        "no JSON log line with the trace id:\n{logs}"
    );

    // Metrics arrived over OTLP.
    let metrics: BTreeSet<String> = w.otlp.metric_names().into_iter().collect();
    for m in [
        "orch.task.duration",
        "orch.attempt.duration",
        "orch.fallbacks",
        "orch.tasks",
        "orch.worker.in_flight",
        "orch.worker.job.duration",
    ] {
        assert!(metrics.contains(m), "metric {m} missing: {metrics:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_but_results_still_carry_a_trace_id() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let (procs, orch) = coordinator_and_reasoner(&nats, &[], &[]).await;
    let request = plan_request();
    let r = within(T, "execute", orch.execute(&request)).await.unwrap();
    let id = r.trace_id.expect("a trace id even without export");
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0".repeat(32));
    // A second task is a second trace.
    let r2 = within(T, "execute", orch.execute(&request)).await.unwrap();
    assert_ne!(r2.trace_id.as_deref(), Some(id.as_str()));
    for p in &procs {
        assert!(!p.stderr().contains("OTLP"), "{}", p.describe());
    }
}

/// An OTLP collector over HTTPS with a private CA that demands client
/// certificates (the standard `OTEL_EXPORTER_OTLP_CERTIFICATE`,
/// `..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`): a process configured with them
/// exports its spans; one whose client certificate comes from another CA is
/// refused at the handshake and exports nothing, and neither stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_with_a_private_ca_and_client_certificates() {
    orch_tests::init_logs();
    let pki = Pki::generate();
    let tls = tls_config(
        &pki.read("server-cert.pem"),
        &pki.read("server-key.pem"),
        Some(&pki.read("ca.pem")),
    );
    let otlp = OtlpReceiver::start_tls(tls).await;
    assert!(otlp.endpoint().starts_with("https://"));
    let nats = NatsServer::start();
    let endpoint = otlp.endpoint();
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client-cert.pem"),
        pki.arg("client-key.pem"),
    );
    let (rogue_cert, rogue_key) = (
        pki.arg("rogue-client-cert.pem"),
        pki.arg("rogue-client-key.pem"),
    );
    let (procs, orch) = coordinator_and_reasoner(
        &nats,
        &https_otlp_env(&endpoint, &ca, &cert, &key),
        &https_otlp_env(&endpoint, &ca, &rogue_cert, &rogue_key),
    )
    .await;
    let request = plan_request();
    let r = within(T, "execute", orch.execute(&request))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    let trace_id = r.trace_id.clone().expect("trace id");
    assert!(r.succeeded(), "{r:?}");

    // The coordinator's task span arrives over mutual TLS.
    let spans = eventually(T, "the coordinator's spans over HTTPS", || async {
        let spans = otlp.spans();
        spans
            .iter()
            .any(|s| {
                s.service == "orch-coordinator" && s.trace_id == trace_id && s.name == "orch.task"
            })
            .then_some(spans)
    })
    .await;
    // The reasoner ran the job inside the same trace, but its exporter's
    // certificate is from someone else's CA: by the time a second task's
    // coordinator spans are in (both export every 100 ms), none of its came.
    let r2 = within(T, "execute", orch.execute(&request)).await.unwrap();
    let second = r2.trace_id.clone().expect("trace id");
    eventually(T, "the second task's spans", || async {
        otlp.spans()
            .iter()
            .any(|s| s.service == "orch-coordinator" && s.trace_id == second)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from_reasoner: Vec<_> = otlp
        .spans()
        .into_iter()
        .chain(spans)
        .filter(|s| s.service == "orch-reasoner")
        .map(|s| s.name)
        .collect();
    assert!(
        from_reasoner.is_empty(),
        "a client certificate from another CA was accepted: {from_reasoner:?}"
    );
    assert!(otlp.errors().is_empty(), "{:?}", otlp.errors());
    // Refused exports cost the reasoner nothing but its spans.
    assert!(r2.succeeded(), "{r2:?}\n{}", describe_all(&procs));
}

/// What a process needs to export to an HTTPS collector with mutual TLS.
fn https_otlp_env<'a>(
    endpoint: &'a str,
    ca: &'a str,
    cert: &'a str,
    key: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ]
}

/// A coordinator and a simulated `kimi_k2` reasoner as processes with the
/// given environments, both visible in discovery, and a client.
async fn coordinator_and_reasoner(
    nats: &NatsServer,
    coordinator_env: &[(&str, &str)],
    reasoner_env: &[(&str, &str)],
) -> ([Proc; 2], orch_client::Orchestrator) {
    let url = nats.url();
    let procs = [
        Proc::start("orch-coordinator", &["--nats-url", &url], coordinator_env),
        Proc::start(
            "orch-reasoner",
            &["--nats-url", &url, "--slot", "kimi_k2", "--provider", "sim"],
            reasoner_env,
        ),
    ];
    let orch = orch_client::Orchestrator::from_client(nats.connect().await);
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 1)],
        T,
        &procs,
    )
    .await;
    (procs, orch)
}

/// A reasoner-only task.
fn plan_request() -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        ..SubmitRequest::new("plan something")
    }
}

/// A durable task published with the producer's `traceparent` (as any client
/// of JetStream would) continues that trace: the coordinator's task span is a
/// CONSUMER child of the producer's span, the phase and attempt spans hang
/// under it, the worker's job under the attempt, and the stored result and
/// the final event carry the producer's trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_task_continues_the_producers_trace() {
    orch_tests::init_logs();
    let otlp = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let endpoint = otlp.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ];
    let (procs, orch) = coordinator_and_reasoner(&nats, &env, &env).await;
    let id: orch_shared::TaskId = "traced-durable-1".parse().unwrap();
    let mut finals = orch
        .nats()
        .subscribe(format!("orch.v1.events.{id}.action_complete"))
        .await
        .unwrap();
    let request = SubmitRequest {
        task_id: Some(id.to_string()),
        ..plan_request()
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id.as_str());
    h.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").as_str(),
    );
    orch.jetstream()
        .publish_with_headers(
            format!("orch.v1.tasks.{id}"),
            h,
            serde_json::to_vec(&request).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let result = within(T, "the durable result", orch.wait_result(&id, T))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    assert!(result.succeeded(), "{result:?}");
    assert_eq!(result.trace_id.as_deref(), Some(TRACE_ID));
    let event = within(T, "the final event", finals.next())
        .await
        .expect("final event");
    let traceparent = event
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(traceparent.contains(TRACE_ID), "{traceparent:?}");

    let spans = eventually(T, "the task's spans from both processes", || async {
        let spans: Vec<SpanRecord> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .collect();
        (spans.iter().any(|s| s.name == "orch.task")
            && spans.iter().any(|s| s.service == "orch-reasoner"))
        .then_some(spans)
    })
    .await;
    let ids = by_id(&spans);
    let task = spans.iter().find(|s| s.name == "orch.task").unwrap();
    assert_eq!(task.parent_span_id, CLIENT_SPAN);
    assert_eq!(task.kind, 5, "a durable task span is CONSUMER: {task:?}");
    assert_eq!(task.attr("orch.task_id"), Some(id.as_str()));
    assert_eq!(
        task.attr("messaging.destination.name"),
        Some(format!("orch.v1.tasks.{id}").as_str())
    );
    let attempt = spans
        .iter()
        .find(|s| s.name.starts_with("send orch.v1.work.reasoner."))
        .unwrap_or_else(|| panic!("no attempt span: {spans:#?}"));
    let phase = ids[attempt.parent_span_id.as_str()];
    assert_eq!(phase.name, "phase reasoning");
    assert_eq!(phase.parent_span_id, task.span_id);
    let job = spans
        .iter()
        .find(|s| s.service == "orch-reasoner" && s.name.starts_with("process "))
        .unwrap_or_else(|| panic!("no job span: {spans:#?}"));
    assert_eq!(job.parent_span_id, attempt.span_id);
    assert!(otlp.errors().is_empty(), "{:?}", otlp.errors());
}
