//! The `local` provider with the real model (the default model, as
//! `deploy/fetch-model.sh` installs it): structured output that validates,
//! deadlines and cancels that answer at once without losing the model, and a
//! model process killed mid-job. Then the fleet end to end as processes
//! (nats-server, `orch-coordinator`, `orch-reasoner`, `orch-verifier`) on that
//! model, without API keys: a verified plan, and the default flags answering.
//!
//! The model is found through `ORCH_LOCAL_MODEL`, else the fetch script's
//! default path. In-process, the model runs in `orch-llama-child` (the cargo
//! test harness owns this binary's `main`, so it cannot re-execute itself as
//! workers do). `cargo test --workspace` builds it and the fleet binaries;
//! `cargo build --workspace --bins` does before `cargo test -p orch-tests`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use orch_llama::{LocalConfig, LocalModel};
use orch_providers::chat::{ChatModel, ChatRequest, OutputSchema, ProviderError};
use orch_tests::fleet::wait_for_services;
use orch_tests::process::{binary, signal};
use orch_tests::wait::{eventually, within};
use orch_worker::JobContext;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Longest a job in these tests may take: generous for two slow cores shared
/// with other tests, and never reached by a working provider.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// How late a timeout or cancel may be reported and still count as prompt.
const PROMPT: Duration = Duration::from_secs(2);

fn model_path() -> PathBuf {
    let path = std::env::var_os("ORCH_LOCAL_MODEL")
        .map(PathBuf::from)
        .or_else(|| orch_llama::args::default_model_path(&|key| std::env::var_os(key)))
        .unwrap_or_else(|| {
            panic!("no ORCH_LOCAL_MODEL, ORCH_MODEL_DIR or HOME to locate the local model")
        });
    assert!(
        path.is_file(),
        "local model {} is missing: run deploy/fetch-model.sh (CI does) or set ORCH_LOCAL_MODEL to a GGUF file",
        path.display()
    );
    path
}

/// A provider on the real model, greedy so answers are reproducible.
fn local_model() -> LocalModel {
    orch_tests::init_logs();
    let mut config = LocalConfig::new(model_path());
    config.temperature = 0.0;
    LocalModel::new(config)
        .unwrap_or_else(|e| panic!("LocalModel::new: {e}"))
        .with_child_command(binary("orch-llama-child"))
}

fn ctx(budget: Duration) -> JobContext {
    JobContext {
        deadline: Instant::now() + budget,
        cancel: CancellationToken::new(),
    }
}

fn plain(user: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        system: "You are a helpful assistant.".into(),
        user: user.into(),
        images: vec![],
        schema: None,
        max_tokens: Some(max_tokens),
        temperature: None,
    }
}

/// A long answer: hundreds of tokens, several seconds on two cores.
fn long_request() -> ChatRequest {
    plain(
        "Write a long, detailed story about a lighthouse keeper, with many chapters.",
        384,
    )
}

fn plan_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "tool": {"type": "string", "enum": ["web_search", "open_page", "summarize"]},
                        "args": {
                            "type": "object",
                            "properties": {"query": {"type": "string"}},
                            "required": ["query"],
                            "additionalProperties": false
                        },
                        "why": {"type": "string"}
                    },
                    "required": ["tool", "args", "why"],
                    "additionalProperties": false
                }
            },
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["steps", "answer", "confidence"],
        "additionalProperties": false
    })
}

/// Validates `value` against the subset of JSON Schema used here (type,
/// properties, required, additionalProperties: false, items, enum,
/// minimum/maximum), collecting every violation.
fn violations(schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return out.push(format!("{at}: expected an object, got {value}"));
            };
            let props = schema.get("properties").and_then(Value::as_object);
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let key = key.as_str().unwrap_or_default();
                if !obj.contains_key(key) {
                    out.push(format!("{at}: missing required `{key}`"));
                }
            }
            for (key, v) in obj {
                match props.and_then(|p| p.get(key)) {
                    Some(sub) => violations(sub, v, &format!("{at}.{key}"), out),
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        out.push(format!("{at}: unexpected property `{key}`"));
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return out.push(format!("{at}: expected an array, got {value}"));
            };
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    violations(item_schema, item, &format!("{at}[{i}]"), out);
                }
            }
        }
        Some("string") if !value.is_string() => {
            out.push(format!("{at}: expected a string, got {value}"))
        }
        Some("number") => match value.as_f64() {
            None => out.push(format!("{at}: expected a number, got {value}")),
            Some(n) => {
                let min = schema
                    .get("minimum")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::MIN);
                let max = schema
                    .get("maximum")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::MAX);
                if !(min..=max).contains(&n) {
                    out.push(format!("{at}: {n} outside {min}..={max}"));
                }
            }
        },
        _ => {}
    }
}

#[test]
fn the_test_validator_catches_what_it_should() {
    let mut v = Vec::new();
    let bad = json!({"steps": [{"tool": "rm", "args": {}, "why": 1, "x": 0}], "confidence": 3});
    violations(&plan_schema(), &bad, "$", &mut v);
    let all = v.join("\n");
    for needle in [
        "missing required `answer`",
        "\"rm\" not in",
        "missing required `query`",
        "expected a string",
        "unexpected property `x`",
        "outside 0..=1",
    ] {
        assert!(all.contains(needle), "{needle:?} not in:\n{all}");
    }
}

#[tokio::test]
async fn a_plan_request_returns_json_that_validates_against_the_schema() {
    let model = local_model();
    let schema = plan_schema();
    let request = ChatRequest {
        system: "You plan how to answer a question with tools. Tools: web_search (args: query), \
                 open_page (args: query = the URL), summarize (args: query = what to summarize)."
            .into(),
        user: "What is the weather in Paris today?".into(),
        images: vec![],
        schema: Some(OutputSchema {
            name: "plan".into(),
            schema: schema.clone(),
        }),
        max_tokens: None,
        temperature: None,
    };
    let reply = within(
        JOB_LIMIT,
        "plan from the local model",
        model.chat(&request, &ctx(JOB_LIMIT)),
    )
    .await
    .unwrap_or_else(|e| panic!("local model failed: {e:?}"));
    let plan: Value = serde_json::from_str(&reply.text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text));
    let mut problems = Vec::new();
    violations(&schema, &plan, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "plan does not follow the schema: {problems:#?}\n{}",
        reply.text
    );
    assert_eq!(reply.model, local_model_id());
    let usage = reply.usage.unwrap_or_else(|| panic!("no usage reported"));
    assert!(
        usage.input_tokens > 50,
        "the prompt carries the schema: {usage:?}"
    );
    assert!(usage.output_tokens > 0, "{usage:?}");
}

#[tokio::test]
async fn a_deadline_shorter_than_generation_times_out_promptly_and_the_model_stays_usable() {
    let model = local_model();
    within(JOB_LIMIT, "model load", model.warm_up(JOB_LIMIT))
        .await
        .unwrap_or_else(|e| panic!("warm up: {e:?}"));
    let pid = model.child_pid();

    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let result = within(
        JOB_LIMIT,
        "a job past its deadline",
        model.chat(&long_request(), &ctx(budget)),
    )
    .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ProviderError::TimedOut(_))),
        "{result:?}"
    );
    assert!(
        took < budget + PROMPT,
        "TimedOut came {took:?} after a {budget:?} budget"
    );

    let reply = within(
        JOB_LIMIT,
        "the next job",
        model.chat(&plain("Say hello.", 16), &ctx(JOB_LIMIT)),
    )
    .await
    .unwrap_or_else(|e| panic!("next job after a timeout: {e:?}"));
    assert!(!reply.text.is_empty());
    assert_eq!(
        model.child_pid(),
        pid,
        "the timed-out job was stopped, not the model process"
    );
}

#[tokio::test]
async fn a_cancelled_job_ends_promptly_and_the_model_stays_usable() {
    let model = local_model();
    within(JOB_LIMIT, "model load", model.warm_up(JOB_LIMIT))
        .await
        .unwrap_or_else(|e| panic!("warm up: {e:?}"));
    let job = ctx(JOB_LIMIT);
    let cancel = job.cancel.clone();
    let request = long_request();
    let started = Instant::now();
    let (result, ()) = within(JOB_LIMIT, "a cancelled job", async {
        tokio::join!(model.chat(&request, &job), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    })
    .await;
    assert_eq!(result, Err(ProviderError::Cancelled));
    assert!(
        started.elapsed() < Duration::from_millis(300) + PROMPT,
        "took {:?}",
        started.elapsed()
    );

    let reply = within(
        JOB_LIMIT,
        "the next job",
        model.chat(&plain("Say hello.", 16), &ctx(JOB_LIMIT)),
    )
    .await
    .unwrap_or_else(|e| panic!("next job after a cancel: {e:?}"));
    assert!(!reply.text.is_empty());
}

#[tokio::test]
async fn a_model_process_killed_mid_job_is_an_upstream_error_and_is_replaced() {
    let model = local_model();
    within(JOB_LIMIT, "model load", model.warm_up(JOB_LIMIT))
        .await
        .unwrap_or_else(|e| panic!("warm up: {e:?}"));
    let pid = model
        .child_pid()
        .unwrap_or_else(|| panic!("no child after warm up"));

    let request = long_request();
    let job = ctx(JOB_LIMIT);
    let (result, ()) = within(JOB_LIMIT, "a job whose model process is killed", async {
        tokio::join!(model.chat(&request, &job), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            signal(pid, Signal::SIGKILL);
        })
    })
    .await;
    match &result {
        Err(ProviderError::Upstream { message, .. }) => {
            assert!(message.contains("local model process crashed"), "{message}");
            assert!(
                message.contains("SIGKILL"),
                "the report says how it died: {message}"
            );
        }
        other => panic!("expected an Upstream error, got {other:?}"),
    }
    assert_eq!(model.child_pid(), None, "the dead process is forgotten");

    let reply = within(
        JOB_LIMIT,
        "the next job",
        model.chat(&plain("Say hello.", 16), &ctx(JOB_LIMIT)),
    )
    .await
    .unwrap_or_else(|e| panic!("next job after a crash: {e:?}"));
    assert!(!reply.text.is_empty());
    let new_pid = eventually(Duration::from_secs(5), "a new model process", || async {
        model.child_pid()
    })
    .await;
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn concurrent_jobs_take_turns_on_one_model_process() {
    let model = local_model();
    let (colour, fruit) = (plain("Name a colour.", 12), plain("Name a fruit.", 12));
    let (ctx_a, ctx_b) = (ctx(JOB_LIMIT), ctx(JOB_LIMIT));
    let (a, b) = within(JOB_LIMIT, "two jobs at once", async {
        tokio::join!(model.chat(&colour, &ctx_a), model.chat(&fruit, &ctx_b))
    })
    .await;
    for reply in [a, b] {
        let reply = reply.unwrap_or_else(|e| panic!("job failed: {e:?}"));
        assert!(!reply.text.is_empty());
        assert!(
            reply.usage.is_some_and(|u| u.output_tokens <= 12),
            "{:?}",
            reply.usage
        );
    }
}

#[tokio::test]
async fn images_are_refused_because_the_model_cannot_see() {
    let model = local_model();
    let mut request = plain("What is in this picture?", 16);
    request.images.push(orch_providers::chat::ImageInput {
        mime: "image/png",
        data: bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n"),
    });
    let result = model.chat(&request, &ctx(JOB_LIMIT)).await;
    assert_eq!(
        result,
        Err(ProviderError::BadRequest(
            "local model has no vision".into()
        ))
    );
    assert_eq!(
        model.child_pid(),
        None,
        "refused before starting a model process"
    );
}

// ---- The fleet as processes on the real local model ----

/// The default model's id as results and discovery report it (the file's stem).
/// The model's id in results: its file stem.
fn local_model_id() -> String {
    model_path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
/// Longest a whole fleet task may take here: model loads plus a plan, a
/// possible repair and a verdict on two cores shared with other tests.
const TASK_LIMIT: Duration = Duration::from_secs(300);
/// Phase budget for the model phases, so a slow shared machine cannot turn a
/// working model into a timeout; a real failure still shows as one.
const MODEL_PHASE_MS: u64 = 240_000;
/// What a user might have set that would make a worker use anything but the
/// local model: hosted-model keys and the provider/slot overrides.
const NOT_LOCAL_ENV: &[&str] = &[
    "OPENAI_API_KEY",
    "MOONSHOT_API_KEY",
    "OPENROUTER_API_KEY",
    "BRAVE_API_KEY",
    "TAVILY_API_KEY",
    "ORCH_PROVIDER",
    "ORCH_SLOT",
    "ORCH_OPENAI_API_KEY_ENV",
    "ORCH_OPENAI_API_KEY_FILE",
    "ORCH_REASONER_CHAIN",
    "ORCH_VERIFIER_CHAIN",
    "ORCH_DEFAULT_TOOLS",
    "ORCH_VERIFY",
];

/// Starts `bin` with only `--nats-url` and `extra`, without any API key or
/// provider override in its environment.
fn keyless(bin: &str, url: &str, extra: &[&str]) -> orch_tests::process::Proc {
    let mut args = vec!["--nats-url", url];
    args.extend_from_slice(extra);
    orch_tests::process::Proc::start_without(bin, &args, &[], NOT_LOCAL_ENV)
}

/// A coordinator, a reasoner and a verifier started keyless with these
/// flags, all visible in discovery, and a client.
async fn keyless_fleet(
    url: &str,
    coordinator: &[&str],
    workers: &[&str],
) -> ([orch_tests::process::Proc; 3], orch_client::Orchestrator) {
    let procs = [
        keyless("orch-coordinator", url, coordinator),
        keyless("orch-reasoner", url, workers),
        keyless("orch-verifier", url, workers),
    ];
    let orch = within(
        Duration::from_secs(10),
        "client connect",
        orch_client::Orchestrator::connect(url),
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    wait_for_services(
        &orch,
        &[
            ("orch-coordinator", 1),
            ("orch-reasoner", 1),
            ("orch-verifier", 1),
        ],
        Duration::from_secs(60),
        &procs,
    )
    .await;
    (procs, orch)
}

/// The plan as the fleet returns it (`primary_answer`, the reasoner's content).
fn wire_plan_schema(available_tools: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "tool": {"type": "string", "enum": available_tools},
                    "args": {"type": "object"},
                    "why": {"type": "string"}
                },
                "required": ["tool", "args", "why"],
                "additionalProperties": false
            }},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["steps", "answer", "confidence"],
        "additionalProperties": false
    })
}

/// The verifier's content.
fn wire_verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["approved", "rejected", "uncertain"]},
            "issues": {"type": "array", "items": {"type": "string"}},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["verdict", "issues", "confidence"],
        "additionalProperties": false
    })
}

/// Checks one role's outcome from the local slot: real, schema-valid output
/// from the local model. The default model with the grammar built from the
/// schema must produce it; an `invalid_output` fails the test.
fn assert_local_outcome(
    r: &orch_client::OrchestratedResult,
    role: orch_client::Role,
    schema: &Value,
    shown: &str,
) {
    let m = r
        .model_results
        .get(&role)
        .unwrap_or_else(|| panic!("no {role} result:\n{shown}"));
    assert_eq!(m.slot.as_str(), "local", "{role} slot:\n{shown}");
    let local_attempts: Vec<_> = r
        .attempts
        .iter()
        .filter(|a| a.role == role && a.slot.as_str() == "local")
        .collect();
    assert!(
        !local_attempts.is_empty(),
        "no {role} attempt on the local slot:\n{shown}"
    );
    assert!(
        m.success,
        "the local model gave no valid {role} output: {:?}\n{shown}",
        m.error
    );
    assert_eq!(m.provider, "local", "{role} provider:\n{shown}");
    assert_eq!(m.model, local_model_id(), "{role} model:\n{shown}");
    let mut problems = Vec::new();
    violations(schema, &m.content, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "{role} content does not follow its schema: {problems:#?}\n{shown}"
    );
    let usage = m
        .usage
        .unwrap_or_else(|| panic!("{role}: no token usage from the local model:\n{shown}"));
    assert!(
        usage.input_tokens > 0 && usage.output_tokens > 0,
        "{role} usage {usage:?}:\n{shown}"
    );
    assert!(
        r.models_used.iter().any(|u| *u == local_model_id()),
        "models_used omits the local model:\n{shown}"
    );
    assert_eq!(
        local_attempts.last().map(|a| a.outcome.as_str()),
        Some("ok")
    );
}

/// Asserts everything that follows from the reasoner's outcome and, when it
/// produced a plan, the verifier's.
fn assert_local_answer(
    r: &orch_client::OrchestratedResult,
    available_tools: &[&str],
    verify: bool,
) {
    use orch_client::Role;
    let shown = serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{r:?} ({e})"));
    // Which path a run took (valid output or an honest failure), for `--nocapture`.
    for (role, m) in &r.model_results {
        eprintln!(
            "{role}: success {} {}/{} {:?} {}",
            m.success,
            m.provider,
            m.model,
            m.usage,
            m.error.as_deref().unwrap_or(&m.content.to_string())
        );
    }
    assert_local_outcome(
        r,
        Role::Reasoner,
        &wire_plan_schema(available_tools),
        &shown,
    );
    let plan = r
        .primary_answer
        .as_ref()
        .unwrap_or_else(|| panic!("a plan but no primary_answer:\n{shown}"));
    assert_eq!(
        Some(plan),
        r.model_results.get(&Role::Reasoner).map(|m| &m.content),
        "{shown}"
    );
    assert!(
        plan["answer"]
            .as_str()
            .is_some_and(|a| !a.trim().is_empty()),
        "an empty answer passed validation:\n{shown}"
    );
    assert!((0.0..=1.0).contains(&r.confidence), "{shown}");
    if verify {
        assert_local_outcome(r, Role::Verifier, &wire_verdict_schema(), &shown);
        let verdict = &r.model_results[&Role::Verifier].content["verdict"];
        if verdict == "rejected" {
            // Synthesis: a rejection drops confidence to 0.3 and is a conflict.
            assert!(r.confidence <= 0.3 + 1e-9, "{shown}");
            assert!(!r.conflicts.is_empty(), "{shown}");
        }
    } else {
        assert!(!r.model_results.contains_key(&Role::Verifier), "{shown}");
    }
}

#[tokio::test]
async fn a_fleet_of_processes_plans_and_verifies_with_the_local_model() {
    orch_tests::init_logs();
    model_path();
    let nats = orch_tests::nats::NatsServer::start();
    let (_procs, orch) = keyless_fleet(
        &nats.url(),
        &["--reasoner-chain", "local", "--verifier-chain", "local"],
        &["--provider", "local", "--slot", "local"],
    )
    .await;

    let tools = ["web_search", "open_page"];
    let request = orch_client::SubmitRequest {
        tools: Some(vec!["reasoner".into(), "verifier".into()]),
        available_tools: tools.iter().map(|t| t.to_string()).collect(),
        verify: Some(true),
        timeouts: Some(orch_client::Timeouts {
            parallel_ms: None,
            reasoning_ms: Some(MODEL_PHASE_MS),
            verification_ms: Some(MODEL_PHASE_MS),
        }),
        ..orch_client::SubmitRequest::new("Find Python developers on LinkedIn")
    };
    let r = within(
        TASK_LIMIT,
        "task on the local model",
        orch.execute(&request),
    )
    .await
    .unwrap_or_else(|e| panic!("submit: {e}"));
    assert!(
        r.fallback_chain.iter().all(|f| f.contains("/local: ")),
        "only the local slots were tried: {:?}",
        r.fallback_chain
    );
    assert_local_answer(&r, &tools, true);
}

#[tokio::test]
async fn with_no_api_keys_and_default_flags_the_fleet_answers_with_the_local_model() {
    orch_tests::init_logs();
    model_path();
    let nats = orch_tests::nats::NatsServer::start();
    // No --provider, no --slot, no keys: the workers default to the local model.
    let (_procs, orch) = keyless_fleet(&nats.url(), &[], &[]).await;
    let found = within(
        Duration::from_secs(10),
        "discovery",
        orch.workers(Duration::from_millis(300)),
    )
    .await
    .unwrap_or_else(|e| panic!("discovery: {e}"));
    for name in ["orch-reasoner", "orch-verifier"] {
        let w = found
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} not discovered: {found:?}"));
        let id = local_model_id();
        assert_eq!(
            (w.meta("provider"), w.meta("model"), w.meta("slot")),
            ("local", id.as_str(), "local"),
            "{name} defaults"
        );
    }

    // The request sets only budgets (a shared two-core machine is slow); the
    // tools are the coordinator's defaults (vision, web, reasoner).
    let tools = ["web_search", "open_page"];
    let request = orch_client::SubmitRequest {
        available_tools: tools.iter().map(|t| t.to_string()).collect(),
        timeouts: Some(orch_client::Timeouts {
            parallel_ms: None,
            reasoning_ms: Some(MODEL_PHASE_MS),
            verification_ms: None,
        }),
        ..orch_client::SubmitRequest::new("Find Python developers on LinkedIn")
    };
    let r = within(
        TASK_LIMIT,
        "task on the local model",
        orch.execute(&request),
    )
    .await
    .unwrap_or_else(|e| panic!("submit: {e}"));
    // The default chain tries the hosted slots first; nothing serves them here,
    // so they fail at once and the local slot answers.
    let shown = format!("{:#?}", r.fallback_chain);
    for expected in [
        "reasoner/kimi_k2: no responders",
        "reasoner/chatgpt: no responders",
    ] {
        assert!(
            r.fallback_chain.iter().any(|f| f == expected),
            "{expected} missing: {shown}"
        );
    }
    assert!(
        r.fallback_chain.iter().any(|f| f.starts_with("web/")),
        "no web worker runs here, and the result says so: {shown}"
    );
    assert_local_answer(&r, &tools, false);
}
