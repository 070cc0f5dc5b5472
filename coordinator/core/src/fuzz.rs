//! Fuzz targets for what the coordinator decodes (see `orch-fuzz`): worker
//! replies and heartbeats on its inbox (headers, NATS status, payload in
//! either codec) through the reply router, down to the role schema check and
//! synthesis; submitted
//! tasks down to a [`TaskSpec`]; and the stored results and final events the
//! JetStream side reads back, down to the shared stats.

use async_nats::{HeaderMap, Message, StatusCode};
use bytes::Bytes;
use orch_fuzz::proptest::prelude::*;
use orch_fuzz::{Corpus, Input, target};
use orch_shared::codec::{Encoding, error_reply};
use orch_shared::wire::{
    Event, EventKind, Plan, SubmitRequest, Timeouts, Verdict, VisionAnalysis, WorkReply,
};
use orch_shared::{Blob, ErrorBody, ErrorCode, Role, headers};
use serde_json::json;

use crate::config::CoordinatorConfig;
use crate::dispatch::{AttemptError, Inbox, decode_reply};
use crate::pipeline::{TaskSpec, validate};
use crate::results::decode as decode_stored;
use crate::stats::{Stats, StatsDelta};
use crate::synthesis::{self, Inputs};
fn replies() -> Corpus {
    let reply = |content: serde_json::Value| WorkReply {
        provider: "openai".into(),
        model: "kimi-k2".into(),
        content,
        usage: Some(orch_shared::wire::Usage {
            input_tokens: 1,
            output_tokens: 2,
        }),
        worker_id: "w".into(),
        elapsed_ms: 3.5,
    };
    Corpus::new()
        .value(&reply(json!({
            "steps": [{"tool": "navigate", "args": {"url": "https://example.com"}, "why": "go"}],
            "answer": "Go there.", "confidence": 0.7
        })))
        .value(&reply(
            json!({"verdict": "rejected", "issues": ["wrong"], "confidence": 0.9}),
        ))
        .value(&reply(json!({
            "description": "a page", "elements": [{"kind": "button", "label": "OK"}],
            "errors_detected": ["404"], "suggested_actions": []
        })))
        .value(&reply(json!({
            "query": "q", "results": [{"title": "t", "url": "https://e.com", "snippet": "s"}],
            "pages": [{"url": "https://e.com", "title": "t", "text": "x"}]
        })))
        .value(&ErrorBody::new(
            ErrorCode::TimedOut,
            "the job's budget ran out",
        ))
        .words(&orch_fuzz::words::wire())
}

const STATUSES: &[Option<u16>] = &[
    None,
    Some(200),
    Some(503),
    Some(408),
    Some(404),
    Some(100),
    Some(500),
];

/// A reply as it reaches the inbox: headers, NATS status, payload.
#[derive(Debug, Clone)]
struct Inbound {
    headers: Option<HeaderMap>,
    status: Option<u16>,
    payload: Input,
}

impl Inbound {
    fn message(&self) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::from(self.payload.0.clone()),
            headers: self.headers.clone(),
            status: self.status.and_then(|s| StatusCode::from_u16(s).ok()),
            description: self.status.map(|_| "status description".into()),
            length: self.payload.0.len(),
        }
    }
}

fn inbound() -> impl Strategy<Value = Inbound> {
    let corpus = replies();
    let payload = prop_oneof![corpus.json_inputs(), corpus.msgpack_inputs()];
    let values = [
        "application/json",
        "application/msgpack",
        "text/plain",
        "heartbeat",
        "timed_out",
        "unavailable",
        "no_such_code",
        "500",
    ];
    let entry = (
        prop::sample::select(vec![
            headers::CONTENT_TYPE,
            headers::ORCH_KIND,
            headers::ORCH_ERROR,
            headers::NATS_SERVICE_ERROR,
            headers::NATS_SERVICE_ERROR_CODE,
        ]),
        orch_fuzz::text(&values),
    );
    let hdrs = prop::option::weighted(
        0.9,
        prop::collection::vec(entry, 0..4).prop_map(|entries| {
            let mut h = HeaderMap::new();
            for (name, value) in entries {
                // A received header never holds CR or LF (async-nats refuses them).
                if let Ok(v) = value.parse::<async_nats::HeaderValue>() {
                    h.insert(name, v);
                }
            }
            h
        }),
    );
    (hdrs, prop::sample::select(STATUSES), payload).prop_map(|(headers, status, payload)| Inbound {
        headers,
        status,
        payload,
    })
}

#[test]
fn worker_reply() {
    target("coordinator.worker_reply").run(inbound(), |inbound| {
        // The router: a heartbeat only restarts the silence timer; anything
        // else is the attempt's reply.
        let inbox = Inbox::default();
        inbox.deliver(inbound.message());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(arrived) = inbox.poll_arrived(&mut cx) else {
            return Err(TestCaseError::fail(
                "a delivered message did not wake the attempt",
            ));
        };
        prop_assert!(arrived.ended.is_none());
        let (reply, heartbeat) = (arrived.reply, arrived.last_heartbeat);
        let is_heartbeat = inbound
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::ORCH_KIND))
            .is_some_and(|k| k.as_str() == headers::KIND_HEARTBEAT);
        prop_assert_eq!(heartbeat.is_some(), is_heartbeat);
        let Some(msg) = reply else {
            prop_assert!(is_heartbeat);
            return Ok(());
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            return Ok(());
        }
        let reply = match decode_reply(&msg) {
            Ok(r) => r,
            Err(e) => {
                prop_assert!(
                    matches!(
                        e,
                        AttemptError::Rejected { .. }
                            | AttemptError::BadReply(_)
                            | AttemptError::Transport(_)
                    ),
                    "{e:?}"
                );
                let _ = (e.code(), e.error_code(), e.worth_retrying_same_slot());
                return Ok(());
            }
        };
        // Down the pipeline: the role's schema check, then synthesis.
        let mut plan = None;
        let mut verdict = None;
        let mut vision = None;
        for role in Role::ALL {
            match validate(role, reply.clone()) {
                Ok(r) => match role {
                    Role::Reasoner => {
                        plan = serde_json::from_value::<Plan>(r.content).ok();
                        prop_assert!(plan.is_some());
                    }
                    Role::Verifier => {
                        verdict = serde_json::from_value::<Verdict>(r.content).ok();
                        prop_assert!(verdict.is_some());
                    }
                    Role::Vision => {
                        vision = serde_json::from_value::<VisionAnalysis>(r.content).ok();
                        prop_assert!(vision.is_some());
                    }
                    Role::Web => {}
                },
                Err(e) => prop_assert!(matches!(e, AttemptError::BadReply(_)), "{e:?}"),
            }
        }
        let tools = ["navigate".to_string()];
        for reasoner_requested in [true, false] {
            let out = synthesis::synthesize(Inputs {
                reasoner_requested,
                plan: plan.as_ref(),
                verdict: verdict.as_ref(),
                vision: vision.as_ref(),
                available_tools: &tools,
            });
            prop_assert!((0.0..=1.0).contains(&out.confidence), "{}", out.confidence);
        }
        Ok(())
    });
}

#[test]
fn worker_error_replies_round_trip() {
    // What a worker answers with on failure decodes to `Rejected` with its code.
    let code = prop::sample::select(vec![
        ErrorCode::TimedOut,
        ErrorCode::Overloaded,
        ErrorCode::InvalidOutput,
        ErrorCode::Unknown,
    ]);
    let enc = prop::sample::select(vec![Encoding::Json, Encoding::MsgPack]);
    target("coordinator.worker_error").run((code, enc, any::<String>()), |(code, enc, text)| {
        let (h, payload) = error_reply(enc, &ErrorBody::new(code, text.clone()));
        let msg = Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers: Some(h),
            status: None,
            description: None,
        };
        prop_assert_eq!(
            decode_reply(&msg),
            Err(AttemptError::Rejected {
                code,
                message: text
            })
        );
        Ok(())
    });
}

fn submissions() -> Corpus {
    let full = SubmitRequest {
        task: "Find Python developers".into(),
        tools: Some(vec![
            "reasoner".into(),
            "vision".into(),
            "verifier".into(),
            "web".into(),
        ]),
        available_tools: vec!["navigate".into()],
        context: Some("ctx".into()),
        screenshot: Some(Blob::from(vec![0x89, b'P', b'N', b'G'])),
        web_search_query: None,
        verify: None,
        timeouts: Some(Timeouts {
            parallel_ms: Some(1),
            reasoning_ms: Some(600_000),
            verification_ms: None,
        }),
        task_id: Some("t-1".into()),
        screenshot_ref: None,
        cache: Some(true),
    };
    Corpus::new()
        .value(&SubmitRequest::new("hi"))
        .value(&full)
        .json(json!({"task": "x", "tools": ["vision"], "verify": false}))
        .json(json!({"task": "x", "tools": ["verifier"], "verify": true}))
        .words(&[
            "task",
            "tools",
            "verify",
            "timeouts",
            "parallel_ms",
            "reasoning_ms",
            "verification_ms",
            "screenshot",
            "screenshot_ref",
            "task_id",
            "vision",
            "web",
            "reasoner",
            "verifier",
            "kimi_k2",
            "chatgpt",
        ])
}

#[test]
fn submit_to_spec() {
    let cfg = CoordinatorConfig::default();
    let corpus = submissions();
    let input = prop_oneof![
        corpus.json_inputs().prop_map(|i| (Encoding::Json, i)),
        corpus.msgpack_inputs().prop_map(|i| (Encoding::MsgPack, i)),
    ];
    target("coordinator.submit_spec").run(input, |(enc, input)| {
        let Ok(req) = enc.decode::<SubmitRequest>(input.bytes()) else {
            return Ok(());
        };
        match TaskSpec::from_request(req, &cfg) {
            Ok(spec) => {
                prop_assert!(!spec.roles.is_empty());
                prop_assert!(
                    !spec.roles.contains(Role::Verifier) || spec.roles.contains(Role::Reasoner)
                );
                // Each phase gets the request's limit (validated) or the default.
                let max = std::time::Duration::from_millis(cfg.limits.max_timeout_ms);
                let (got, default) = (spec.timeouts, cfg.timeouts);
                prop_assert!(got.parallel <= max.max(default.parallel));
                prop_assert!(got.reasoning <= max.max(default.reasoning));
                prop_assert!(got.verification <= max.max(default.verification));
            }
            Err(body) => prop_assert!(
                matches!(
                    body.error.code,
                    ErrorCode::InvalidRequest | ErrorCode::UnknownTool | ErrorCode::PayloadTooLarge
                ),
                "{body}"
            ),
        }
        Ok(())
    });
}

#[test]
fn stored_results_and_stats_events() {
    let delta = StatsDelta {
        succeeded: true,
        confidence: 0.7,
        execution_time_ms: 12.0,
        conflicts: 1,
        fallbacks: 2,
        model_usage: [("kimi-k2".to_string(), 1)].into_iter().collect(),
        latency_ms: vec![("task".into(), 12.0), ("reasoner/default".into(), 5.0)],
        cached: false,
    };
    let corpus = Corpus::new()
        .value(&Event {
            task_id: "t-1".into(),
            kind: EventKind::ActionComplete,
            ts: "2025-01-01T00:00:00.000Z".into(),
            trace_id: None,
            details: json!({ "stats": delta }),
        })
        .json(json!({"status": "pending", "task_id": "t-1", "since": "2025-01-01T00:00:00.000Z", "coordinator": "c1"}))
        .words(&[
            "stats", "succeeded", "confidence", "execution_time_ms", "conflicts", "fallbacks",
            "model_usage", "latency_ms", "cached", "status", "pending", "details",
        ]);
    target("coordinator.stored").run(corpus.json_inputs(), |input| {
        let _ = decode_stored(input.bytes());
        // The shared-stats projection folds every final event it reads.
        if let Ok(delta) = crate::projection::final_event_delta(input.bytes()) {
            let stats = Stats::default();
            stats.apply(&delta);
            stats.apply(&delta);
            let report = stats.report(0, "shared");
            prop_assert_eq!(report.total_executions, 2);
            prop_assert!((0.0..=1.0).contains(&report.avg_confidence));
            let copy = Stats::default();
            copy.restore(&stats.state());
            prop_assert_eq!(copy.state(), stats.state());
        }
        Ok(())
    });
}
