//! Fuzz targets for the decoders at every process's edge (see `orch-fuzz`):
//! submit requests in JSON and MessagePack with their validation, `results.get`
//! queries, work requests and replies between coordinators and workers, error
//! replies, what clients read back (results, stats, events), and the ids,
//! MIME types and header values parsed out of subjects and headers.
//!
//! Each target asserts no panic, a decode error with a decode code
//! (`malformed` / `invalid_request`), and that anything accepted re-encodes
//! and decodes to the same value.

use std::fmt::Debug;

use async_nats::HeaderMap;
use orch_fuzz::proptest::prelude::*;
use orch_fuzz::{Checked, Corpus, Doc, Input, same_json, target};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::blob::Blob;
use crate::codec::{Encoding, decode_message, error_from_reply, error_reply, header_safe};
use crate::error::{ErrorBody, ErrorCode};
use crate::ids::{Slot, TaskId};
use crate::role::Role;
use crate::wire::{
    Event, EventKind, Limits, ObjectRef, OrchestratedResult, Plan, PlanStep, ResultQuery,
    SearchHit, StatsReport, SubmitRequest, Timeouts, UiElement, Verdict, VerdictKind,
    VisionAnalysis, WebFindings, WorkReply, WorkRequest,
};
use crate::{headers, subjects};

/// Field names and values that get mutated inputs past the first checks.
/// The submit and result words, besides the wire's shared ones
/// ([`words()`] has them all).
const OWN_WORDS: &[&str] = &[
    "task",
    "tools",
    "available_tools",
    "context",
    "screenshot",
    "web_search_query",
    "verify",
    "timeouts",
    "task_id",
    "screenshot_ref",
    "cache",
    "bucket",
    "name",
    "parallel_ms",
    "reasoning_ms",
    "verification_ms",
    "orch_screenshots",
    "role",
    "slot",
    "model_results",
    "primary_answer",
    "fallback_chain",
    "attempts",
    "outcome",
    "t-1",
];

/// Every word these targets inject.
pub(crate) fn words() -> Vec<&'static str> {
    [OWN_WORDS, &orch_fuzz::words::wire()].concat()
}

/// Both codecs.
const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

/// JSON and MessagePack inputs from one corpus, tagged with their codec.
pub(crate) fn either(corpus: &Corpus) -> BoxedStrategy<(Encoding, Input)> {
    prop_oneof![
        corpus.json_inputs().prop_map(|i| (Encoding::Json, i)),
        corpus.msgpack_inputs().prop_map(|i| (Encoding::MsgPack, i)),
    ]
    .boxed()
}

/// Decodes `input`: a value, or an error with a decode code. An accepted value
/// re-encodes in both codecs and decodes back to itself.
pub(crate) fn decode_checked<T>(enc: Encoding, input: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: DeserializeOwned + Serialize + Debug,
{
    let value = match enc.decode::<T>(input) {
        Ok(v) => v,
        Err(e) => {
            prop_assert!(
                matches!(e.code, ErrorCode::Malformed | ErrorCode::InvalidRequest),
                "decode error with code {}: {}",
                e.code,
                e.message
            );
            return Ok(None);
        }
    };
    let original = serde_json::to_value(&value).map_err(fail)?;
    // JSON cannot carry NaN or infinity (they encode as null) nor nest deeper
    // than serde_json's limit of 128: such values (decoded from MessagePack)
    // only round-trip through MessagePack.
    let json_safe = Doc::try_of(&value).is_some_and(|d| !d.has_non_finite() && d.depth() < 120);
    for other in ENCODINGS {
        let bytes = other.encode(&value).map_err(fail)?;
        if other == Encoding::Json && !json_safe {
            continue;
        }
        let back: T = other
            .decode(&bytes)
            .map_err(|e| fail(format!("re-decoding {value:?} as {other:?}: {e}")))?;
        let back = serde_json::to_value(&back).map_err(fail)?;
        prop_assert!(
            same_json(&original, &back),
            "{other:?} round trip changed the value: {original} → {back}"
        );
    }
    Ok(Some(value))
}

pub(crate) fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn submit_corpus() -> Corpus {
    let full = SubmitRequest {
        task: "Find Python developers on LinkedIn".into(),
        tools: Some(vec!["kimi_k2".into(), "vision".into(), "chatgpt".into()]),
        available_tools: vec!["playwright_navigate".into()],
        context: Some("Building talent pipeline".into()),
        screenshot: Some(Blob::from(vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3])),
        web_search_query: Some("python developers".into()),
        verify: Some(true),
        timeouts: Some(Timeouts {
            parallel_ms: Some(1000),
            reasoning_ms: Some(2000),
            verification_ms: Some(3000),
        }),
        task_id: Some("t-1".into()),
        screenshot_ref: None,
        cache: Some(false),
    };
    let by_ref = SubmitRequest {
        screenshot: None,
        screenshot_ref: Some(ObjectRef::screenshot("3f2a")),
        ..full.clone()
    };
    Corpus::new()
        .value(&SubmitRequest::new("hi"))
        .value(&full)
        .value(&by_ref)
        .json(json!({"task": "x", "screenshot": "data:image/png;base64,iVBORw0KGgo="}))
        .words(&words())
}

fn check_submit(enc: Encoding, input: &Input) -> Checked {
    let Some(req) = decode_checked::<SubmitRequest>(enc, input.bytes())? else {
        return Ok(());
    };
    match req.validate(&Limits::default()) {
        Ok(()) => {
            // What validation lets through is usable downstream.
            prop_assert!(req.roles().is_ok());
            if let Some(id) = &req.task_id {
                prop_assert!(id.parse::<TaskId>().is_ok());
            }
        }
        Err(body) => prop_assert!(
            matches!(
                body.error.code,
                ErrorCode::InvalidRequest | ErrorCode::UnknownTool | ErrorCode::PayloadTooLarge
            ),
            "validation error with code {}",
            body.error.code
        ),
    }
    Ok(())
}

#[test]
fn submit_json() {
    target("shared.submit_json").run(submit_corpus().json_inputs(), |input| {
        check_submit(Encoding::Json, &input)
    });
}

#[test]
fn submit_msgpack() {
    target("shared.submit_msgpack").run(submit_corpus().msgpack_inputs(), |input| {
        check_submit(Encoding::MsgPack, &input)
    });
}

#[test]
fn results_get() {
    let corpus = Corpus::new()
        .value(&ResultQuery {
            task_id: "t-1".into(),
        })
        .json(json!({"task_id": "0190a5b2c3d4e5f6a7b8c9d0e1f2a3b4"}))
        .words(&words());
    target("shared.results_get").run(either(&corpus), |(enc, input)| {
        if let Some(q) = decode_checked::<ResultQuery>(enc, input.bytes())? {
            // The coordinator parses the id next; either way is an answer.
            if let Ok(id) = q.task_id.parse::<TaskId>() {
                prop_assert_eq!(id.as_str(), q.task_id.as_str());
            }
        }
        Ok(())
    });
}

/// A plan, a vision analysis and web findings: the outputs phases pass on.
pub(crate) fn plan() -> Plan {
    Plan {
        steps: vec![PlanStep {
            tool: "playwright_navigate".into(),
            args: serde_json::from_value(json!({"url": "https://example.com", "n": 3}))
                .unwrap_or_default(),
            why: "open the page".into(),
        }],
        answer: "Search LinkedIn for Python developers.".into(),
        confidence: 0.8,
    }
}

pub(crate) fn vision() -> VisionAnalysis {
    VisionAnalysis {
        description: "A search page".into(),
        elements: vec![UiElement {
            kind: "button".into(),
            label: "Search".into(),
        }],
        errors_detected: vec!["404".into()],
        suggested_actions: vec!["click Search".into()],
    }
}

pub(crate) fn web() -> WebFindings {
    WebFindings {
        query: "python developers".into(),
        results: vec![SearchHit {
            title: "Hit".into(),
            url: "https://example.com/".into(),
            snippet: "a snippet".into(),
        }],
        pages: vec![crate::wire::PageText {
            url: "https://example.com/".into(),
            title: "Page".into(),
            text: "Some text.".into(),
        }],
    }
}

pub(crate) fn verdict() -> Verdict {
    Verdict {
        verdict: VerdictKind::Rejected,
        issues: vec!["wrong site".into()],
        confidence: 0.9,
    }
}

/// Work requests as the coordinator sends them, one per role.
pub(crate) fn work_requests() -> Vec<WorkRequest> {
    let base = WorkRequest {
        task_id: TaskId::generate(),
        role: Role::Vision,
        slot: Slot::default_slot(),
        task: "look".into(),
        context: Some("ctx".into()),
        available_tools: vec!["playwright_navigate".into()],
        screenshot: Some(Blob::from(vec![0x89, b'P', b'N', b'G', 1, 2, 3])),
        query: None,
        screenshot_ref: None,
        vision: None,
        web: None,
        answer: None,
    };
    vec![
        base.clone(),
        WorkRequest {
            role: Role::Vision,
            screenshot: None,
            screenshot_ref: Some(ObjectRef::screenshot("abc")),
            ..base.clone()
        },
        WorkRequest {
            role: Role::Web,
            slot: "searxng".parse().unwrap_or_else(|_| Slot::default_slot()),
            screenshot: None,
            query: Some("python developers".into()),
            ..base.clone()
        },
        WorkRequest {
            role: Role::Reasoner,
            slot: "kimi_k2".parse().unwrap_or_else(|_| Slot::default_slot()),
            screenshot: None,
            vision: Some(vision()),
            web: Some(web()),
            ..base.clone()
        },
        WorkRequest {
            role: Role::Verifier,
            slot: "chatgpt".parse().unwrap_or_else(|_| Slot::default_slot()),
            screenshot: None,
            vision: Some(vision()),
            web: Some(web()),
            answer: Some(plan()),
            ..base
        },
    ]
}

/// The corpus of work requests.
pub(crate) fn work_request_corpus() -> Corpus {
    work_requests()
        .iter()
        .fold(Corpus::new(), |c, w| c.value(w))
        .words(&words())
}

/// Successful worker replies, one per role output.
pub(crate) fn work_replies() -> Vec<WorkReply> {
    let reply = |content: serde_json::Value| WorkReply {
        provider: "openai".into(),
        model: "kimi-k2".into(),
        content,
        usage: Some(crate::wire::Usage {
            input_tokens: 12,
            output_tokens: 34,
        }),
        worker_id: "w1".into(),
        elapsed_ms: 12.5,
    };
    [
        serde_json::to_value(plan()),
        serde_json::to_value(vision()),
        serde_json::to_value(web()),
        serde_json::to_value(verdict()),
    ]
    .into_iter()
    .flatten()
    .map(reply)
    .collect()
}

/// The corpus of worker replies.
pub(crate) fn work_reply_corpus() -> Corpus {
    work_replies()
        .iter()
        .fold(Corpus::new(), |c, r| c.value(r))
        .words(&words())
}

#[test]
fn work_request() {
    target("shared.work_request").run(either(&work_request_corpus()), |(enc, input)| {
        if let Some(w) = decode_checked::<WorkRequest>(enc, input.bytes())? {
            // Ids decoded from the wire are subject-safe tokens.
            prop_assert!(w.task_id.as_str().parse::<TaskId>().is_ok());
            prop_assert!(w.slot.as_str().parse::<Slot>().is_ok());
            prop_assert_eq!(
                subjects::parse_work(&subjects::work(w.role, &w.slot)),
                Some((w.role, w.slot.clone()))
            );
        }
        Ok(())
    });
}

#[test]
fn work_reply() {
    target("shared.work_reply").run(either(&work_reply_corpus()), |(enc, input)| {
        decode_checked::<WorkReply>(enc, input.bytes())?;
        Ok(())
    });
}

/// Header names the decoders read, and values that matter to them.
pub(crate) const HEADER_NAMES: &[&str] = &[
    headers::CONTENT_TYPE,
    headers::ORCH_ERROR,
    headers::NATS_SERVICE_ERROR,
    headers::NATS_SERVICE_ERROR_CODE,
    headers::ORCH_KIND,
    headers::ORCH_BUDGET_MS,
    headers::ORCH_REQUEST_ID,
    headers::ORCH_REPLY_TO,
];

pub(crate) const HEADER_VALUES: &[&str] = &[
    "application/json",
    "application/msgpack",
    "application/x-msgpack; charset=utf-8",
    "APPLICATION/JSON ; q=1",
    "text/xml",
    "heartbeat",
    "timed_out",
    "unknown_tool",
    "from_the_future",
    "503",
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    " 42 ",
    "1e3",
];

/// A header map of up to four entries from [`HEADER_NAMES`] (or `None`).
pub(crate) fn header_map() -> BoxedStrategy<Option<HeaderMap>> {
    let entry = (
        prop::sample::select(HEADER_NAMES),
        orch_fuzz::text(HEADER_VALUES),
    );
    prop_oneof![
        1 => Just(None),
        6 => prop::collection::vec(entry, 0..4).prop_map(|entries| {
            let mut h = HeaderMap::new();
            for (name, value) in entries {
                // A received header never holds CR or LF (async-nats refuses them).
                if let Ok(v) = value.parse::<async_nats::HeaderValue>() {
                    h.insert(name, v);
                }
            }
            Some(h)
        }),
    ]
    .boxed()
}

#[test]
fn error_reply_from_headers() {
    let bodies = Corpus::new()
        .value(&ErrorBody::new(ErrorCode::TimedOut, "took too long"))
        .value(&ErrorBody::new(
            ErrorCode::UnknownTool,
            "unknown tool `x`\nline",
        ))
        .json(json!({"error": {"code": "from_the_future", "message": ""}}))
        .words(&words());
    let strategy = (header_map(), either(&bodies));
    target("shared.error_reply").run(strategy, |(h, (_, payload))| {
        let body = error_from_reply(h.as_ref(), payload.bytes());
        let flagged = h.as_ref().is_some_and(|h| {
            h.get(headers::ORCH_ERROR).is_some() || h.get(headers::NATS_SERVICE_ERROR).is_some()
        });
        prop_assert_eq!(body.is_some(), flagged);
        // Whatever came in can be answered with: an error reply round-trips.
        if let Some(body) = body {
            for enc in ENCODINGS {
                let (h, p) = error_reply(enc, &body);
                prop_assert_eq!(error_from_reply(Some(&h), &p), Some(body.clone()));
            }
        }
        // And the generic decode path refuses or accepts it with a decode code.
        match decode_message::<ErrorBody>(h.as_ref(), payload.bytes()) {
            Ok(_) => {}
            Err(e) => prop_assert!(matches!(
                e.code,
                ErrorCode::Malformed
                    | ErrorCode::InvalidRequest
                    | ErrorCode::UnsupportedContentType
            )),
        }
        Ok(())
    });
}

#[test]
fn ids_subjects_and_header_values() {
    let words: Vec<&str> = words()
        .iter()
        .chain(HEADER_VALUES)
        .copied()
        .chain([
            "orch.v1.tasks.",
            "orch.v1.work.reasoner.",
            "orch.v1.tasks.t-1",
        ])
        .collect();
    target("shared.ids").run(orch_fuzz::text(&words), |s| {
        let token = |t: &str, max: usize| {
            !t.is_empty()
                && t.len() <= max
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match s.parse::<TaskId>() {
            Ok(id) => {
                prop_assert!(token(id.as_str(), crate::ids::MAX_TASK_ID_LEN));
                let subject = subjects::task(&id);
                prop_assert_eq!(subjects::parse_task(&subject), Some(id.as_str()));
            }
            Err(e) => prop_assert!(e.value.chars().count() <= 80),
        }
        if let Ok(slot) = s.parse::<Slot>() {
            prop_assert!(token(slot.as_str(), crate::ids::MAX_SLOT_LEN));
        }
        if let Some(role) = Role::from_tool(&s) {
            prop_assert_eq!(Role::from_tool(role.as_str()), Some(role));
        }
        let _ = s.parse::<Role>();
        if let Some(k) = EventKind::parse(&s) {
            prop_assert_eq!(k.as_str(), s.as_str());
        }
        let code = ErrorCode::parse(&s);
        prop_assert!(code == ErrorCode::Unknown || code.as_str() == s);
        let _ = subjects::parse_task(&s);
        let _ = subjects::parse_work(&s);
        if let Err(e) = Encoding::from_mime(&s) {
            prop_assert_eq!(e.code, ErrorCode::UnsupportedContentType);
        }
        let safe = header_safe(&s);
        prop_assert!(!safe.is_empty() && !safe.chars().any(char::is_control));
        prop_assert!(safe.chars().count() <= 512);
        Ok(())
    });
}

fn orchestrated_result() -> OrchestratedResult {
    let replies = work_replies();
    let model_results = [Role::Reasoner, Role::Verifier]
        .into_iter()
        .zip(replies)
        .map(|(role, r)| {
            (
                role,
                crate::wire::ModelResult {
                    role,
                    slot: Slot::default_slot(),
                    provider: r.provider,
                    model: r.model,
                    success: true,
                    content: r.content,
                    error: None,
                    error_code: Some(ErrorCode::TimedOut),
                    latency_ms: 1.5,
                    usage: r.usage,
                    started_ms: 0.0,
                    finished_ms: 1.5,
                },
            )
        })
        .collect();
    OrchestratedResult {
        task_id: "t-1".into(),
        task: "do it".into(),
        primary_answer: serde_json::to_value(plan()).ok(),
        model_results,
        confidence: 0.7,
        conflicts: vec!["the verifier rejected the plan".into()],
        execution_time_ms: 12.0,
        models_used: vec!["kimi-k2".into()],
        fallback_chain: vec!["reasoner/kimi_k2: no responders".into()],
        attempts: vec![crate::wire::Attempt {
            role: Role::Reasoner,
            slot: Slot::default_slot(),
            outcome: "ok".into(),
            error: None,
            latency_ms: 1.0,
            budget_ms: 1000,
        }],
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        cached: true,
    }
}

#[test]
fn client_views() {
    let mut stats = StatsReport::default();
    stats.model_usage.insert("kimi-k2".into(), 3);
    stats.latency.insert("task".into(), Default::default());
    let corpus = Corpus::new()
        .value(&orchestrated_result())
        .value(&stats)
        .value(&Event {
            task_id: "t-1".into(),
            kind: EventKind::Fallback,
            ts: crate::wire::now_rfc3339(),
            trace_id: None,
            details: json!({"role": "reasoner", "slot": "kimi_k2", "stats": {"fallbacks": 1}}),
        })
        .words(&words());
    target("shared.client_views").run(either(&corpus), |(enc, input)| {
        if let Some(r) = decode_checked::<OrchestratedResult>(enc, input.bytes())? {
            let _ = (r.succeeded(), r.plan(), r.verdict());
        }
        decode_checked::<StatsReport>(enc, input.bytes())?;
        decode_checked::<Event>(enc, input.bytes())?;
        Ok(())
    });
}
