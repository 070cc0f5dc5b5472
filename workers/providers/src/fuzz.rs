//! Fuzz targets for everything a model backend reads from a server it does
//! not control (see `orch-fuzz`): OpenAI chat completions (whole and as SSE
//! streams cut at arbitrary chunk boundaries), Ollama replies (whole and as
//! NDJSON streams), error bodies and their status mapping, `Retry-After`
//! forms, screenshots (magic bytes and dimensions), and the model's reply
//! text turned into a plan, verdict or vision analysis — plus the prompts and
//! chat requests built from a decoded work request.
//!
//! Beyond "no panic": errors carry bounded messages without the API key,
//! waits are bounded, a stream decodes the same however it is chunked, and
//! every accepted role output passes the coordinator's schema check.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use orch_fuzz::proptest::prelude::*;
use orch_fuzz::{Checked, Corpus, mutated_bytes, target};
use orch_shared::Role;
use orch_shared::codec::Encoding;
use orch_shared::wire::{Plan, Verdict, VisionAnalysis, WorkRequest};
use orch_worker::{JobContext, ProviderInfo};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

use crate::chat::{ChatModel, ChatRequest, ChatResponse, ProviderError};
use crate::http::{self, ErrorInfo, MAX_MESSAGE_CHARS};
use crate::image::{self, ImageLimits};
use crate::ollama::{self, StreamedReply};
use crate::openai::{self, StreamedCompletion};
use crate::retry::{self, RetryPolicy};
use crate::roles::{LlmHandler, RoleOptions, output, prompt, schema};
use crate::stream::{Framing as _, LineSplitter, MAX_TEXT_BYTES, SseDecoder};

/// A key a hostile server echoes back; it must never reach an error message.
const KEY: &str = "sk-FUZZ-SECRET-0123456789";

fn scrub(s: &str) -> String {
    s.replace(KEY, "***")
}

const WORDS: &[&str] = &[
    "choices",
    "message",
    "delta",
    "content",
    "refusal",
    "model",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "type",
    "code",
    "param",
    "detail",
    "msg",
    "text",
    "done",
    "prompt_eval_count",
    "eval_count",
    "insufficient_quota",
    "exceeded_current_quota_error",
    "response_format",
    "json_schema not supported",
    "[DONE]",
    KEY,
];

/// An error message is bounded: bounded() keeps MAX_MESSAGE_CHARS plus an
/// ellipsis per quoted piece (at most two), fixed wording adds a little.
fn error_is_bounded(e: &ProviderError) -> Checked {
    let n = e.to_string().chars().count();
    prop_assert!(
        n <= 2 * MAX_MESSAGE_CHARS + 200,
        "the error is {n} characters long"
    );
    Ok(())
}

/// A bounded error without the API key (backends that hold one).
fn error_is_clean(e: &ProviderError) -> Checked {
    error_is_bounded(e)?;
    let msg = e.to_string();
    prop_assert!(!msg.contains(KEY), "the error leaks the key: {msg}");
    Ok(())
}

fn completion_corpus() -> Corpus {
    Corpus::new()
        .json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "kimi-k2",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"answer\":\"x\"}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
        .json(json!({
            "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]
        }))
        .json(json!({"choices": [{"message": {"content": null, "refusal": "I can't"}}]}))
        .json(json!({"error": {"message": format!("bad key {KEY}"), "type": "invalid_request_error"}}))
        .json(json!({"choices": []}))
        .words(WORDS)
}

#[test]
fn openai_completion() {
    let status = prop_oneof![Just(200u16), 100u16..1000];
    target("providers.openai_completion").run(
        (status, completion_corpus().json_inputs()),
        |(status, body)| {
            match openai::parse_completion(status, body.bytes(), "default-model", &scrub) {
                Ok(r) => prop_assert!(!r.model.is_empty()),
                Err(e) => {
                    prop_assert!(
                        matches!(
                            e,
                            ProviderError::Upstream { .. } | ProviderError::InvalidOutput(_)
                        ),
                        "{e:?}"
                    );
                    error_is_clean(&e)?;
                }
            }
            Ok(())
        },
    );
}

/// Cut points for a byte stream: the same bytes, delivered in pieces.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..6)
}

fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// What `OpenAiChat::read_stream` does with a body delivered as `pieces`.
fn read_sse(pieces: &[&[u8]]) -> Result<ChatResponse, ProviderError> {
    let upstream = |message: String| ProviderError::Upstream {
        status: None,
        message,
    };
    let mut decoder = SseDecoder::default();
    let mut answer = StreamedCompletion::default();
    let mut pieces = pieces.iter();
    let mut ended = false;
    while !answer.is_done() && !ended {
        let events = match pieces.next() {
            Some(chunk) => decoder.push(chunk).map_err(upstream)?,
            None => {
                ended = true;
                decoder.finish().map_err(upstream)?.into_iter().collect()
            }
        };
        for data in events {
            if answer.push(&data, &scrub)? {
                break;
            }
        }
    }
    answer.finish("default-model")
}

fn sse_seeds() -> Vec<Vec<u8>> {
    let chunk = |delta: serde_json::Value| {
        format!(
            "data: {}\n\n",
            json!({"model": "kimi-k2", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let mut plain = String::from(": OPENROUTER PROCESSING\n\n");
    plain.push_str(&chunk(json!({"role": "assistant", "content": ""})));
    plain.push_str(&chunk(json!({"content": "{\"answer\":"})));
    plain.push_str(&chunk(json!({"content": "\"x\"}"})));
    plain.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
    );
    plain.push_str("data: [DONE]\n\n");
    let crlf = plain.replace('\n', "\r\n");
    let refusal = format!("{}data: [DONE]\n", chunk(json!({"refusal": "no"})));
    let error = format!(
        "{}data: {}\n\n",
        chunk(json!({"content": "a"})),
        json!({"error": {"message": format!("overloaded {KEY}")}})
    );
    let multiline =
        "event: x\ndata: {\"choices\":[{\"delta\":\ndata: {\"content\":\"y\"}}]}\n\ndata:[DONE]"
            .to_string();
    [plain, crlf, refusal, error, multiline]
        .into_iter()
        .map(String::into_bytes)
        .collect()
}

#[test]
fn openai_stream() {
    target("providers.openai_stream").run((mutated_bytes(sse_seeds()), cuts()), |(body, cuts)| {
        let whole = read_sse(&[body.bytes()]);
        let pieces = read_sse(&chunks(body.bytes(), &cuts));
        match &pieces {
            Ok(r) => prop_assert!(r.text.len() <= MAX_TEXT_BYTES),
            Err(e) => error_is_clean(e)?,
        }
        // Chunk boundaries never change a successful answer.
        if let Ok(w) = whole {
            prop_assert_eq!(Ok(w), pieces);
        }
        Ok(())
    });
}

fn ollama_corpus() -> Corpus {
    Corpus::new()
        .json(json!({
            "model": "llava", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "{\"description\":\"x\"}"},
            "done": true, "prompt_eval_count": 12, "eval_count": 7
        }))
        .json(json!({"error": "model \"llava\" not found, try pulling it first"}))
        .json(json!({"model": "llava", "message": {"content": "partial"}, "done": false}))
        .words(WORDS)
}

#[test]
fn ollama_reply() {
    target("providers.ollama_reply").run(ollama_corpus().json_inputs(), |body| {
        match ollama::parse_reply(200, body.bytes(), "default-model") {
            Ok(r) => prop_assert!(!r.model.is_empty() && r.usage.is_some()),
            Err(e) => {
                prop_assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
                error_is_bounded(&e)?;
            }
        }
        Ok(())
    });
}

/// What `OllamaChat::read_stream` does with a body delivered as `pieces`.
fn read_ndjson(pieces: &[&[u8]]) -> Result<ChatResponse, ProviderError> {
    let upstream = |message: String| ProviderError::Upstream {
        status: None,
        message,
    };
    let mut lines = LineSplitter::default();
    let mut answer = StreamedReply::default();
    let mut pieces = pieces.iter();
    let mut ended = false;
    while !answer.is_done() && !ended {
        let batch = match pieces.next() {
            Some(chunk) => lines.push(chunk).map_err(upstream)?,
            None => {
                ended = true;
                lines.finish().map_err(upstream)?.into_iter().collect()
            }
        };
        for raw in batch {
            if raw.trim().is_empty() {
                continue;
            }
            if answer.push(&raw)? {
                break;
            }
        }
    }
    answer.finish("default-model")
}

fn ndjson_seeds() -> Vec<Vec<u8>> {
    let line = |v: serde_json::Value| format!("{v}\n");
    let mut ok = String::new();
    ok.push_str(&line(json!({"model": "llava", "message": {"role": "assistant", "content": "{\"a\""}, "done": false})));
    ok.push_str(&line(json!({"model": "llava", "message": {"role": "assistant", "content": ":1}"}, "done": false})));
    ok.push_str(&line(json!({"model": "llava", "message": {"content": ""}, "done": true, "prompt_eval_count": 5, "eval_count": 2})));
    let crlf = ok.replace('\n', "\r\n\r\n");
    let error = format!(
        "{}{}",
        line(json!({"message": {"content": "x"}, "done": false})),
        line(json!({"error": "out of memory"}))
    );
    let unterminated = r#"{"message":{"content":"y"},"done":true}"#.to_string();
    [ok, crlf, error, unterminated]
        .into_iter()
        .map(String::into_bytes)
        .collect()
}

#[test]
fn ollama_stream() {
    target("providers.ollama_stream").run(
        (mutated_bytes(ndjson_seeds()), cuts()),
        |(body, cuts)| {
            let whole = read_ndjson(&[body.bytes()]);
            let pieces = read_ndjson(&chunks(body.bytes(), &cuts));
            match &pieces {
                Ok(r) => prop_assert!(r.text.len() <= MAX_TEXT_BYTES),
                Err(e) => error_is_bounded(e)?,
            }
            if let Ok(w) = whole {
                prop_assert_eq!(Ok(w), pieces);
            }
            Ok(())
        },
    );
}

const RETRY_VALUES: &[&str] = &[
    "0",
    "7",
    "0.5",
    "-1",
    "1e308",
    "inf",
    "NaN",
    "18446744073709551616",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
];

/// `Retry-After` / `retry-after-ms` headers (values that are valid header text).
fn retry_headers() -> impl Strategy<Value = HeaderMap> {
    let value = orch_fuzz::text(RETRY_VALUES);
    (prop::option::of(value.clone()), prop::option::of(value)).prop_map(|(ms, after)| {
        let mut h = HeaderMap::new();
        for (name, v) in [("retry-after-ms", ms), ("retry-after", after)] {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(name, v);
            }
        }
        h
    })
}

#[test]
fn error_body_and_status() {
    let bodies = Corpus::new()
        .json(json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}))
        .json(json!({"error": "model not found"}))
        .json(json!({"object": "error", "message": "Unsupported response format type: json_schema", "type": "BadRequestError", "code": 400}))
        .json(json!({"detail": [{"loc": ["body", "response_format"], "msg": "not allowed"}]}))
        .json(json!({"error": {"message": "out of credit", "type": "insufficient_quota"}}))
        .words(WORDS);
    let status = prop_oneof![
        Just(400u16),
        Just(401),
        Just(402),
        Just(408),
        Just(429),
        Just(500),
        Just(503),
        100u16..1000
    ];
    target("providers.error_body").run(
        (status, retry_headers(), bodies.json_inputs()),
        |(status, headers, body)| {
            let _ = ErrorInfo::parse(body.bytes());
            let Ok(status) = StatusCode::from_u16(status) else {
                return Ok(());
            };
            let f = http::classify(status, &headers, body.bytes(), &scrub);
            error_is_clean(&f.error)?;
            let code = status.as_u16();
            if f.retryable {
                prop_assert!(code == 429 || code == 408 || (500..600).contains(&code));
            }
            if let Some(wait) = f.retry_after {
                prop_assert!(wait <= Duration::from_secs(24 * 3600), "{wait:?}");
            }
            Ok(())
        },
    );
}

#[test]
fn retry_after_and_backoff() {
    let deadline_ms = prop_oneof![0u64..5_000, any::<u64>()];
    target("providers.retry_after").run(
        (retry_headers(), any::<u32>(), deadline_ms),
        |(headers, retries, deadline_ms)| {
            let now = SystemTime::now();
            let wait = retry::retry_after(&headers, now);
            if let Some(w) = wait {
                prop_assert!(w <= Duration::from_secs(24 * 3600), "{w:?}");
            }
            let policy = RetryPolicy {
                max_retries: retries % 8,
                ..RetryPolicy::default()
            };
            let _ = policy.backoff(retries);
            let start = Instant::now();
            let deadline = start
                .checked_add(Duration::from_millis(deadline_ms))
                .unwrap_or(start);
            if let Some(w) = policy.next_wait(retries % 10, wait, start, deadline) {
                prop_assert!(start + w < deadline);
            }
            Ok(())
        },
    );
}

/// A PNG header (IHDR) and a baseline JPEG header (SOF0).
fn image_seeds() -> Vec<Vec<u8>> {
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
    jpeg.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    jpeg.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08, 0x03, 0x00, 0x04, 0x00]);
    jpeg.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
    let progressive: Vec<u8> = jpeg
        .iter()
        .map(|&b| if b == 0xc0 { 0xc2 } else { b })
        .collect();
    vec![
        image::test_png(640, 480).to_vec(),
        image::test_png(8192, 1).to_vec(),
        jpeg,
        progressive,
        b"GIF89a\x01\x00\x01\x00".to_vec(),
    ]
}

#[test]
fn image_validation() {
    let limits = ImageLimits {
        max_bytes: 64 * 1024,
        max_side: 8192,
    };
    target("providers.image").run(mutated_bytes(image_seeds()), |data| {
        let data = Bytes::from(data.0);
        match image::validate(&data, &limits) {
            Ok(img) => {
                prop_assert!((1..=limits.max_side).contains(&img.width));
                prop_assert!((1..=limits.max_side).contains(&img.height));
                let magic: &[u8] = if img.input.mime == "image/png" {
                    b"\x89PNG\r\n\x1a\n"
                } else {
                    b"\xff\xd8\xff"
                };
                prop_assert!(data.starts_with(magic));
            }
            Err(e) => {
                prop_assert_eq!(e.code, orch_shared::ErrorCode::InvalidInput);
                prop_assert!(e.message.len() < 400, "{}", e.message);
            }
        }
        Ok(())
    });
}

/// Replies as models write them: bare JSON, fenced, after prose or `<think>`.
fn reply_corpus() -> Corpus {
    let plan = json!({
        "steps": [{"tool": "playwright_navigate", "args": [{"name": "url", "value": "https://example.com"}], "why": "open it"}],
        "answer": "Open the page.", "confidence": 0.8
    });
    let plan_obj_args = json!({
        "steps": [{"tool": "search", "args": {"q": "rust", "n": 3, "deep": {"x": [1, 2]}}}],
        "answer": "Search.", "confidence": 1
    });
    let verdict = json!({"verdict": " Approved ", "issues": ["none"], "confidence": 0.9});
    let vision = json!({
        "description": "A login page", "elements": [{"kind": "button", "label": "Sign in"}],
        "errors_detected": [], "suggested_actions": ["type the password"]
    });
    Corpus::new()
        .json(plan)
        .json(plan_obj_args)
        .json(verdict)
        .json(vision)
        .words(orch_fuzz::words::ROLE_OUTPUTS)
        .words(&["name", "value"])
}

/// The text around a JSON reply: prose, code fences, a `<think>` block.
const WRAPPERS: &[(&str, &str)] = &[
    ("", ""),
    ("Here is the plan:\n```json\n", "\n```\nDone."),
    ("<think>{\"steps\": oops}</think>\n", ""),
    ("Sure! ", " Hope this helps {"),
    ("```\n", ""),
    ("{\"partial\": ", ""),
];

#[test]
fn role_output() {
    let wrapped = (reply_corpus().json_inputs(), prop::sample::select(WRAPPERS))
        .prop_map(|(body, (pre, post))| format!("{pre}{}{post}", body.text()));
    let role = prop::sample::select(Role::ALL.to_vec());
    target("providers.role_output").run((wrapped, role), |(text, role)| {
        let _ = output::extract_json(&text);
        let Ok(v) = output::parse(role, &text) else {
            return Ok(());
        };
        // What a worker accepts, the coordinator's schema check accepts too.
        match role {
            Role::Reasoner => {
                let p: Plan = serde_json::from_value(v).map_err(fail)?;
                prop_assert!((0.0..=1.0).contains(&p.confidence));
                prop_assert!(!p.answer.is_empty());
                prop_assert!(p.steps.len() <= schema::MAX_STEPS);
                prop_assert!(p.answer.chars().count() <= schema::MAX_ANSWER);
                for s in &p.steps {
                    prop_assert!(!s.tool.is_empty() && s.args.len() <= schema::MAX_ARGS);
                }
            }
            Role::Verifier => {
                let d: Verdict = serde_json::from_value(v).map_err(fail)?;
                prop_assert!((0.0..=1.0).contains(&d.confidence));
                prop_assert!(d.issues.len() <= schema::MAX_LIST_ITEMS);
            }
            Role::Vision => {
                let a: VisionAnalysis = serde_json::from_value(v).map_err(fail)?;
                prop_assert!(!a.description.is_empty());
                prop_assert!(a.elements.len() <= schema::MAX_ELEMENTS);
            }
            Role::Web => prop_assert!(false, "the web role has no model output"),
        }
        Ok(())
    });
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// A model that is never called: `LlmHandler::request` only builds the request.
struct NoModel;

#[async_trait]
impl ChatModel for NoModel {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "none".into(),
            model: "none".into(),
        }
    }

    async fn chat(&self, _: &ChatRequest, _: &JobContext) -> Result<ChatResponse, ProviderError> {
        Err(ProviderError::Cancelled)
    }
}

fn work_corpus() -> Corpus {
    let plan: Plan = serde_json::from_value(json!({
        "steps": [{"tool": "t", "args": {"a": 1}, "why": "w"}], "answer": "a", "confidence": 0.5
    }))
    .unwrap_or_else(|_| unreachable!("a valid plan"));
    let base = WorkRequest {
        task_id: orch_shared::TaskId::generate(),
        role: Role::Vision,
        slot: orch_shared::Slot::default_slot(),
        task: "look".into(),
        context: Some("ctx".into()),
        available_tools: vec!["t".into(), "".into(), "t".into()],
        screenshot: Some(image::test_png(4, 4).into()),
        query: Some("q".into()),
        screenshot_ref: None,
        vision: Some(VisionAnalysis {
            description: "d".into(),
            elements: vec![],
            errors_detected: vec!["e".into()],
            suggested_actions: vec![],
        }),
        web: None,
        answer: Some(plan),
    };
    Corpus::new().value(&base).words(&[
        "task",
        "context",
        "available_tools",
        "screenshot",
        "answer",
        "steps",
        "vision",
    ])
}

#[test]
fn prompts_from_work_requests() {
    let handlers: Vec<(Role, LlmHandler)> = [Role::Vision, Role::Reasoner, Role::Verifier]
        .into_iter()
        .filter_map(|r| {
            LlmHandler::new(r, Arc::new(NoModel), RoleOptions::default())
                .ok()
                .map(|h| (r, h))
        })
        .collect();
    target("providers.prompts").run(work_corpus().msgpack_inputs(), |input| {
        let Ok(req) = Encoding::MsgPack.decode::<WorkRequest>(input.bytes()) else {
            return Ok(());
        };
        for (role, h) in &handlers {
            match h.request(&req) {
                Ok(chat) => {
                    prop_assert!(chat.user.starts_with("Task: "));
                    prop_assert!(
                        schema::check_strict(&chat.schema.map(|s| s.schema).unwrap_or_default())
                            .is_ok()
                    );
                }
                Err(e) => prop_assert!(
                    matches!(
                        e.code,
                        orch_shared::ErrorCode::InvalidInput
                            | orch_shared::ErrorCode::InvalidRequest
                    ),
                    "{role}: {e}"
                ),
            }
            let _ = prompt::repair(&prompt::user(*role, &req), &req.task, "bad");
        }
        Ok(())
    });
}
