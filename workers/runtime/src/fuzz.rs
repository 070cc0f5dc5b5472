//! Fuzz target for what a worker decodes before its handler runs (see
//! `orch-fuzz`): the `Content-Type` and `Orch-Budget-Ms` headers, the work
//! request in JSON or MessagePack, and the role/slot check — then the error
//! reply it would answer with must decode on the coordinator's side.

use std::time::Instant;

use async_nats::HeaderMap;
use orch_fuzz::proptest::prelude::*;
use orch_fuzz::{Corpus, target};
use orch_shared::codec::{Encoding, error_from_reply, error_reply};
use orch_shared::wire::{Plan, PlanStep, VisionAnalysis, WorkRequest};
use orch_shared::{Blob, ErrorBody, ErrorCode, Role, Slot, TaskId, headers};
use serde_json::json;

use crate::serve::{ServeConfig, decode_work, job_budget};

const WORDS: &[&str] = &[
    "task_id",
    "role",
    "slot",
    "task",
    "context",
    "available_tools",
    "screenshot",
    "screenshot_ref",
    "bucket",
    "name",
    "orch_screenshots",
    "searxng",
];

const SLOTS: &[&str] = &["default", "kimi_k2", "chatgpt", "searxng"];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/msgpack",
    "application/vnd.msgpack",
    "text/json; charset=utf-8",
    "text/xml",
];

const BUDGETS: &[&str] = &[
    "0",
    "1",
    "30000",
    " 250 ",
    "-1",
    "1e3",
    "18446744073709551615",
    "18446744073709551616",
    "",
];

fn requests() -> Corpus {
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
    let slot = |s: &str| s.parse::<Slot>().unwrap_or_else(|_| Slot::default_slot());
    let verifier = WorkRequest {
        role: Role::Verifier,
        slot: slot("chatgpt"),
        screenshot: None,
        vision: Some(VisionAnalysis {
            description: "a page".into(),
            elements: vec![],
            errors_detected: vec![],
            suggested_actions: vec![],
        }),
        answer: Some(Plan {
            steps: vec![PlanStep {
                tool: "playwright_navigate".into(),
                args: serde_json::Map::new(),
                why: "go".into(),
            }],
            answer: "do it".into(),
            confidence: 0.5,
        }),
        ..base.clone()
    };
    let web = WorkRequest {
        role: Role::Web,
        slot: slot("searxng"),
        screenshot: None,
        query: Some("rust".into()),
        ..base.clone()
    };
    Corpus::new()
        .value(&base)
        .value(&verifier)
        .value(&web)
        .json(json!({"task_id": "t-1", "role": "reasoner", "slot": "kimi_k2", "task": "plan"}))
        .words(WORDS)
        .words(&orch_fuzz::words::wire())
}

/// Headers as a coordinator (or anyone allowed to publish) might send them.
fn job_headers() -> impl Strategy<Value = Option<HeaderMap>> {
    let content_type = prop::option::of(orch_fuzz::text(CONTENT_TYPES));
    let budget = prop::option::of(orch_fuzz::text(BUDGETS));
    prop::option::weighted(0.9, (content_type, budget)).prop_map(|h| {
        h.map(|(ct, budget)| {
            let mut h = HeaderMap::new();
            // A received header never holds CR or LF (async-nats refuses them).
            for (name, value) in [
                (headers::CONTENT_TYPE, ct),
                (headers::ORCH_BUDGET_MS, budget),
            ] {
                if let Some(v) = value.and_then(|v| v.parse::<async_nats::HeaderValue>().ok()) {
                    h.insert(name, v);
                }
            }
            h
        })
    })
}

#[test]
fn decode_job() {
    let corpus = requests();
    let payload = prop_oneof![corpus.json_inputs(), corpus.msgpack_inputs()];
    let worker = (0..Role::ALL.len(), prop::sample::select(SLOTS));
    target("worker.decode_job").run(
        (job_headers(), payload, worker),
        |(h, payload, (role, slot))| {
            let role = Role::ALL[role];
            let slot: Slot = slot.parse().map_err(orch_fuzz_fail)?;
            let cfg = ServeConfig::new(slot.clone());
            // Admission: the codec from the headers.
            let enc = match Encoding::from_headers(h.as_ref()) {
                Ok(enc) => enc,
                Err(e) => {
                    prop_assert_eq!(e.code, ErrorCode::UnsupportedContentType);
                    return answerable(Encoding::Json, &ErrorBody::new(e.code, e.message));
                }
            };
            let header = h
                .as_ref()
                .and_then(|h| h.get(headers::ORCH_BUDGET_MS))
                .map(|v| v.as_str());
            match job_budget(header, &cfg) {
                Ok(budget) => {
                    prop_assert!(budget >= cfg.min_budget);
                    // The deadline the job runs under (as `run_job` computes it).
                    let _deadline = Instant::now() + budget;
                }
                Err(e) => {
                    prop_assert!(
                        matches!(
                            e.code,
                            ErrorCode::InvalidRequest | ErrorCode::DeadlineTooShort
                        ),
                        "{e}"
                    );
                    answerable(enc, &ErrorBody::new(e.code, e.message))?;
                }
            }
            match decode_work(enc, payload.bytes(), role, &slot) {
                Ok(w) => {
                    prop_assert_eq!(w.role, role);
                    prop_assert_eq!(&w.slot, &slot);
                }
                Err(e) => {
                    prop_assert!(
                        matches!(e.code, ErrorCode::Malformed | ErrorCode::InvalidRequest),
                        "{e}"
                    );
                    answerable(enc, &ErrorBody::new(e.code, e.message))?;
                }
            }
            Ok(())
        },
    );
}

fn orch_fuzz_fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// The error reply a worker sends for `body` reads back as the same error.
fn answerable(enc: Encoding, body: &ErrorBody) -> Result<(), TestCaseError> {
    let (h, payload) = error_reply(enc, body);
    let back = error_from_reply(Some(&h), &payload);
    prop_assert_eq!(back.as_ref(), Some(body));
    Ok(())
}
