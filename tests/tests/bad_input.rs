//! Bad input never crashes anything: every malformed message gets a
//! structured error reply (body + `Orch-Error` header), and the process keeps
//! serving.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use orch_coordinator::CoordinatorConfig;
use orch_shared::codec::{Encoding, error_from_reply};
use orch_shared::wire::{Limits, OrchestratedResult, SubmitRequest};
use orch_shared::{ErrorBody, ErrorCode, Role, headers, subjects};
use orch_tests::fleet::{Fleet, WorkerSpec};
use orch_tests::nats::NatsServer;
use orch_tests::wait::within;

const T: Duration = Duration::from_secs(20);

async fn raw(
    client: &async_nats::Client,
    subject: &str,
    mime: Option<&str>,
    payload: Vec<u8>,
) -> async_nats::Message {
    let mut h = HeaderMap::new();
    if let Some(m) = mime {
        h.insert(headers::CONTENT_TYPE, m);
    }
    within(
        T,
        subject,
        client.request_with_headers(subject.to_string(), h, Bytes::from(payload)),
    )
    .await
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"))
}

fn expect_error(msg: &async_nats::Message, code: ErrorCode) -> ErrorBody {
    let h = msg.headers.as_ref().expect("error replies carry headers");
    assert_eq!(
        h.get(headers::ORCH_ERROR).map(|v| v.as_str().to_string()),
        Some(code.as_str().to_string()),
        "Orch-Error header; body: {}",
        String::from_utf8_lossy(&msg.payload)
    );
    // The body is the documented shape, in the request's encoding.
    let body = error_from_reply(msg.headers.as_ref(), &msg.payload).expect("error body");
    assert_eq!(body.error.code, code);
    assert!(!body.error.message.is_empty());
    body
}

async fn still_serving(fleet: &Fleet) {
    let mut req = SubmitRequest::new("are you still there?");
    req.tools = Some(vec!["reasoner".into()]);
    let r: OrchestratedResult = within(T, "valid submit after bad ones", fleet.orch.execute(&req))
        .await
        .expect("coordinator still serves");
    assert!(r.succeeded());
}

#[tokio::test]
async fn malformed_submits_get_structured_errors_and_the_coordinator_keeps_serving() {
    let nats = NatsServer::start();
    let config = CoordinatorConfig {
        limits: Limits {
            max_screenshot_bytes: 1024,
            ..Limits::default()
        },
        ..CoordinatorConfig::default()
    };
    let fleet = Fleet::start(
        &nats.url(),
        config,
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let c = fleet.orch.nats().clone();
    let json = Some("application/json");
    let mp = Some("application/msgpack");

    // Broken JSON.
    let body = expect_error(
        &raw(&c, subjects::SUBMIT, json, b"{\"task\": ".to_vec()).await,
        ErrorCode::Malformed,
    );
    assert!(body.error.message.contains("JSON"), "{body}");
    // Not JSON at all, no Content-Type (JSON is the default).
    expect_error(
        &raw(&c, subjects::SUBMIT, None, vec![0xff, 0x00, 0x13]).await,
        ErrorCode::Malformed,
    );
    // Empty payload.
    expect_error(
        &raw(&c, subjects::SUBMIT, None, vec![]).await,
        ErrorCode::Malformed,
    );
    // Broken MessagePack: the reply is MessagePack too.
    let m = raw(&c, subjects::SUBMIT, mp, vec![0xc1]).await;
    assert_eq!(
        m.headers
            .as_ref()
            .unwrap()
            .get(headers::CONTENT_TYPE)
            .unwrap()
            .as_str(),
        "application/msgpack"
    );
    expect_error(&m, ErrorCode::Malformed);
    // Truncated MessagePack map.
    expect_error(
        &raw(&c, subjects::SUBMIT, mp, vec![0x81, 0xa4, b't']).await,
        ErrorCode::Malformed,
    );
    // Missing task (JSON and MessagePack).
    let b = expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"tools":["vision"]}"#.to_vec(),
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    assert!(b.error.message.contains("task"), "{b}");
    let no_task = rmp_serde::to_vec_named(&serde_json::json!({"context": "x"})).unwrap();
    expect_error(
        &raw(&c, subjects::SUBMIT, mp, no_task).await,
        ErrorCode::InvalidRequest,
    );
    // Empty task, wrong types, unknown fields.
    expect_error(
        &raw(&c, subjects::SUBMIT, json, br#"{"task":"   "}"#.to_vec()).await,
        ErrorCode::InvalidRequest,
    );
    expect_error(
        &raw(&c, subjects::SUBMIT, json, br#"{"task":42}"#.to_vec()).await,
        ErrorCode::InvalidRequest,
    );
    expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"task":"x","verfy":true}"#.to_vec(),
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    expect_error(
        &raw(&c, subjects::SUBMIT, json, br#"[1,2,3]"#.to_vec()).await,
        ErrorCode::InvalidRequest,
    );
    // Unknown tool.
    let b = expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"task":"x","tools":["kimi_k2","x-ray"]}"#.to_vec(),
        )
        .await,
        ErrorCode::UnknownTool,
    );
    assert!(b.error.message.contains("x-ray"), "{b}");
    // Bad task id, bad timeouts, bad base64.
    expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"task":"x","task_id":"a.b.>"}"#.to_vec(),
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"task":"x","timeouts":{"reasoning_ms":0}}"#.to_vec(),
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    expect_error(
        &raw(
            &c,
            subjects::SUBMIT,
            json,
            br#"{"task":"x","screenshot":"%%%"}"#.to_vec(),
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    // Oversized screenshot (limit set to 1 KiB above) and oversized task.
    let big = SubmitRequest {
        screenshot: Some(vec![0u8; 4096].into()),
        ..SubmitRequest::new("look")
    };
    let payload = Encoding::MsgPack.encode(&big).unwrap().to_vec();
    expect_error(
        &raw(&c, subjects::SUBMIT, mp, payload).await,
        ErrorCode::PayloadTooLarge,
    );
    let long = serde_json::to_vec(&SubmitRequest::new("x".repeat(100_000))).unwrap();
    expect_error(
        &raw(&c, subjects::SUBMIT, json, long).await,
        ErrorCode::PayloadTooLarge,
    );
    // Unsupported content type.
    expect_error(
        &raw(&c, subjects::SUBMIT, Some("text/xml"), b"<task/>".to_vec()).await,
        ErrorCode::UnsupportedContentType,
    );

    // Stats with garbage still answer.
    let s = raw(&c, subjects::STATS, None, b"garbage".to_vec()).await;
    assert!(
        serde_json::from_slice::<serde_json::Value>(&s.payload).unwrap()["total_executions"]
            .is_u64()
    );

    still_serving(&fleet).await;
    // Refused submits are not executions.
    assert_eq!(fleet.orch.stats().await.unwrap().total_executions, 1);
}

#[tokio::test]
async fn msgpack_submit_gets_a_msgpack_result() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Vision, "default"),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2"),
        ],
    )
    .await;
    let msgpack = fleet.orch.clone().with_msgpack();
    let mut req = SubmitRequest::new("Analyze current page state");
    req.tools = Some(vec!["vision".into(), "kimi_k2".into()]);
    req.screenshot = Some(vec![0x89, b'P', b'N', b'G', 1, 2, 3].into());
    let r = within(T, "msgpack execute", msgpack.execute(&req))
        .await
        .unwrap();
    assert!(r.model_results[&Role::Vision].success);
    assert!(r.succeeded());
}

#[tokio::test]
async fn malformed_work_requests_get_structured_errors_and_the_worker_keeps_serving() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let c = fleet.orch.nats().clone();
    let slot = "kimi_k2".parse().unwrap();
    let subject = subjects::work(Role::Reasoner, &slot);
    let expect = |m: async_nats::Message, code: ErrorCode| {
        let body = error_from_reply(m.headers.as_ref(), &m.payload).expect("worker error reply");
        assert_eq!(body.error.code, code, "{body}");
        // The body alone says it too, as the coordinator's errors do.
        let enc = orch_shared::codec::Encoding::from_headers(m.headers.as_ref()).unwrap();
        let alone: orch_shared::error::ErrorBody = enc
            .decode(&m.payload)
            .unwrap_or_else(|e| panic!("error body {:?}: {e}", m.payload));
        assert_eq!(alone, body);
        // NATS micro conventions too, so generic tooling sees the error.
        assert!(
            m.headers
                .as_ref()
                .unwrap()
                .get(headers::NATS_SERVICE_ERROR_CODE)
                .is_some()
        );
    };
    expect(
        raw(&c, &subject, Some("application/msgpack"), vec![0xc1, 0xc1]).await,
        ErrorCode::Malformed,
    );
    expect(
        raw(&c, &subject, None, b"{not json".to_vec()).await,
        ErrorCode::Malformed,
    );
    expect(
        raw(&c, &subject, None, br#"{"task":"x"}"#.to_vec()).await,
        ErrorCode::InvalidRequest,
    );
    expect(
        raw(&c, &subject, Some("image/png"), vec![1, 2, 3]).await,
        ErrorCode::UnsupportedContentType,
    );
    // A request meant for another role.
    let wrong =
        serde_json::json!({"task_id": "t", "role": "vision", "slot": "kimi_k2", "task": "x"});
    expect(
        raw(&c, &subject, None, serde_json::to_vec(&wrong).unwrap()).await,
        ErrorCode::InvalidRequest,
    );
    // A bad budget header.
    let ok =
        serde_json::json!({"task_id": "t", "role": "reasoner", "slot": "kimi_k2", "task": "x"});
    let mut h = HeaderMap::new();
    h.insert(headers::ORCH_BUDGET_MS, "soon");
    let m = within(
        T,
        "bad budget",
        c.request_with_headers(subject.clone(), h, serde_json::to_vec(&ok).unwrap().into()),
    )
    .await
    .unwrap();
    expect(m, ErrorCode::InvalidRequest);
    // A valid JSON work request from "another language" works.
    let m = raw(&c, &subject, None, serde_json::to_vec(&ok).unwrap()).await;
    assert!(error_from_reply(m.headers.as_ref(), &m.payload).is_none());
    let reply: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(reply["provider"], "sim");
    assert!(reply["content"]["steps"].is_array());

    still_serving(&fleet).await;
}

/// A reply over the server's max payload cannot be published; the caller gets
/// a `payload_too_large` error at once instead of waiting for its timeout, and
/// the worker keeps serving.
#[tokio::test]
async fn a_reply_over_the_max_payload_becomes_an_error_reply() {
    let nats = NatsServer::start_with(orch_tests::nats::ServerOptions {
        extra_config: "max_payload: 65536\n".into(),
        ..Default::default()
    });
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Web, "default")],
    )
    .await;
    let c = fleet.orch.nats().clone();
    let subject = subjects::work(Role::Web, &"default".parse().unwrap());
    // The simulated search repeats the query in every result: a 30 kB query
    // fits the request and overflows the reply.
    let big = serde_json::json!({
        "task_id": "t", "role": "web", "slot": "default", "task": "x",
        "query": "q".repeat(30_000),
    });
    let m = raw(&c, &subject, None, serde_json::to_vec(&big).unwrap()).await;
    let body = error_from_reply(m.headers.as_ref(), &m.payload).expect("an error reply");
    assert_eq!(body.error.code, ErrorCode::PayloadTooLarge, "{body}");
    assert!(body.error.message.contains("max payload"), "{body}");
    let small = serde_json::json!({
        "task_id": "t", "role": "web", "slot": "default", "task": "x", "query": "rust"
    });
    let m = raw(&c, &subject, None, serde_json::to_vec(&small).unwrap()).await;
    assert!(
        error_from_reply(m.headers.as_ref(), &m.payload).is_none(),
        "the worker still serves: {:?}",
        m.payload
    );
}
