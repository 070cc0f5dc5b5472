//! The seed's pipeline rules, end to end over a real nats-server with
//! in-process coordinator and simulated workers.

use std::time::Duration;

use futures::StreamExt as _;
use orch_client::{ClientError, ErrorCode, EventKind, OrchestratedResult, SubmitRequest, Timeouts};
use orch_coordinator::CoordinatorConfig;
use orch_shared::{Blob, Role, TaskId};
use orch_tests::fleet::{Fleet, WorkerSpec, standard_workers};
use orch_tests::nats::NatsServer;
use orch_tests::wait::within;

const T: Duration = Duration::from_secs(30);

fn png() -> Blob {
    // An 8-byte PNG signature plus a little payload: the simulator only counts bytes.
    Blob::from(vec![
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13,
    ])
}

fn full_request(id: &str) -> SubmitRequest {
    SubmitRequest {
        task: "Find Python developers on LinkedIn".into(),
        tools: Some(vec![
            "kimi_k2".into(),
            "vision".into(),
            "web_search".into(),
            "chatgpt".into(),
        ]),
        available_tools: vec![
            "playwright_navigate".into(),
            "playwright_extract_entities".into(),
        ],
        context: Some("Building talent pipeline".into()),
        screenshot: Some(png()),
        web_search_query: Some("python developers linkedin".into()),
        verify: Some(true),
        timeouts: None,
        task_id: Some(id.into()),
        screenshot_ref: None,
        cache: None,
    }
}

async fn run(fleet: &Fleet, req: &SubmitRequest) -> OrchestratedResult {
    within(T, "task result", fleet.orch.execute(req))
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"))
}

#[tokio::test]
async fn happy_path_runs_all_four_roles_and_emits_events() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        standard_workers(),
    )
    .await;
    let id: TaskId = "happy-1".parse().unwrap();
    let mut events = fleet.orch.events(Some(&id)).await.unwrap();
    within(T, "flush", fleet.orch.nats().flush()).await.unwrap();

    let r = run(&fleet, &full_request("happy-1")).await;

    assert_eq!(r.task_id, "happy-1");
    assert_eq!(r.task, "Find Python developers on LinkedIn");
    for role in Role::ALL {
        let m = &r.model_results[&role];
        assert!(m.success, "{role} failed: {:?}", m.error);
        assert_eq!(m.provider, "sim");
        assert!(m.usage.is_some());
    }
    assert_eq!(r.model_results[&Role::Reasoner].slot.as_str(), "kimi_k2");
    assert_eq!(r.model_results[&Role::Verifier].slot.as_str(), "chatgpt");
    let plan = r.plan().expect("primary answer is a plan");
    assert_eq!(plan.steps.len(), 2);
    assert!(r.fallback_chain.is_empty(), "{:?}", r.fallback_chain);
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
    // plan 0.8, approved at 0.8: 0.8 + 0.2 * 0.5 * 0.8
    assert!((r.confidence - 0.88).abs() < 1e-9, "{}", r.confidence);
    assert_eq!(
        r.models_used,
        vec!["sim-reasoner", "sim-verifier", "sim-vision", "sim-web"]
    );
    assert_eq!(r.attempts.len(), 4);

    let mut kinds = Vec::new();
    within(T, "events up to action_complete", async {
        while let Some(e) = events.next().await {
            assert_eq!(e.task_id, "happy-1");
            kinds.push(e.kind);
            if e.kind == EventKind::ActionComplete {
                assert!((e.details["confidence"].as_f64().unwrap() - 0.88).abs() < 1e-9);
                break;
            }
        }
    })
    .await;
    assert_eq!(kinds.first(), Some(&EventKind::ActionStart));
    let count = |k| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count(EventKind::PhaseStarted), 3, "{kinds:?}");
    assert_eq!(count(EventKind::PhaseCompleted), 3, "{kinds:?}");
    assert_eq!(count(EventKind::ModelAttempt), 4, "{kinds:?}");
    assert_eq!(count(EventKind::Fallback), 0, "{kinds:?}");
}

#[tokio::test]
async fn phase_one_runs_vision_and_web_in_parallel() {
    let nats = NatsServer::start();
    let slow =
        |role| WorkerSpec::sim(role, "default").with(|s| s.latency = Duration::from_millis(400));
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            slow(Role::Vision),
            slow(Role::Web),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2"),
        ],
    )
    .await;
    let mut req = full_request("parallel-1");
    req.verify = Some(false);
    let r = run(&fleet, &req).await;
    let v = &r.model_results[&Role::Vision];
    let w = &r.model_results[&Role::Web];
    assert!(v.success && w.success);
    // Overlap of the recorded intervals: each started before the other finished.
    assert!(v.started_ms < w.finished_ms, "vision {v:?} web {w:?}");
    assert!(w.started_ms < v.finished_ms, "vision {v:?} web {w:?}");
    // Reasoning starts only after phase 1 is over.
    let reasoner = &r.model_results[&Role::Reasoner];
    assert!(reasoner.started_ms >= v.finished_ms.max(w.finished_ms));
}

#[tokio::test]
async fn falls_back_immediately_on_no_responders() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "local"),
        ],
    )
    .await;
    let r = run(&fleet, &SubmitRequest::new("plan something")).await;
    assert_eq!(
        r.fallback_chain,
        vec![
            "reasoner/kimi_k2: no responders",
            "reasoner/chatgpt: no responders"
        ]
    );
    let m = &r.model_results[&Role::Reasoner];
    assert!(m.success);
    assert_eq!(m.slot.as_str(), "local");
    let outcomes: Vec<_> = r
        .attempts
        .iter()
        .filter(|a| a.role == Role::Reasoner)
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["no_responders", "no_responders", "ok"]);
    let stats = fleet.orch.stats().await.unwrap();
    assert_eq!(stats.fallbacks_triggered, 2);
}

#[tokio::test]
async fn falls_back_on_an_error_reply() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.fail_rate = 1.0),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
        ],
    )
    .await;
    let r = run(&fleet, &SubmitRequest::new("plan something")).await;
    assert_eq!(
        r.fallback_chain,
        vec!["reasoner/kimi_k2: upstream: simulated upstream failure"]
    );
    assert_eq!(r.model_results[&Role::Reasoner].slot.as_str(), "chatgpt");
    assert!(r.primary_answer.is_some());
}

#[tokio::test]
async fn a_hung_slot_gets_only_its_share_of_the_phase() {
    let nats = NatsServer::start();
    let mut fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.hang = true),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
        ],
    )
    .await;
    let mut req = SubmitRequest::new("plan something");
    req.tools = Some(vec!["reasoner".into()]);
    req.timeouts = Some(Timeouts {
        reasoning_ms: Some(3000),
        ..Default::default()
    });
    let r = run(&fleet, &req).await;
    // 3 slots share 3000 ms: the hung primary gets 1000 ms, then chatgpt answers.
    assert_eq!(
        r.fallback_chain,
        vec!["reasoner/kimi_k2: timed out after 1000 ms"]
    );
    let m = &r.model_results[&Role::Reasoner];
    assert!(m.success);
    assert_eq!(m.slot.as_str(), "chatgpt");
    assert_eq!(r.attempts[0].budget_ms, 1000);
    // chatgpt's budget is carved from what was left: about 2000 / 2.
    assert!(
        (900..=1000).contains(&r.attempts[1].budget_ms),
        "{:?}",
        r.attempts
    );
    // The abandoned attempt was cancelled on the worker, which is idle again.
    let hung = fleet.workers.remove(0);
    let report = hung.stop().await;
    assert_eq!(
        report.cancelled_at_drain, 0,
        "the hung job should have been cancelled already"
    );
}

#[tokio::test]
async fn slots_left_when_the_phase_runs_out_are_recorded_as_skipped() {
    // A 1 ms reasoning phase: the hung primary gets the whole millisecond (an
    // attempt's budget is at least 1 ms), so when it times out nothing is left
    // for the two fallbacks, which would have answered at once.
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.hang = true),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
            WorkerSpec::sim(Role::Reasoner, "local"),
        ],
    )
    .await;
    let mut req = SubmitRequest::new("plan something");
    req.tools = Some(vec!["reasoner".into()]);
    req.timeouts = Some(Timeouts {
        reasoning_ms: Some(1),
        ..Default::default()
    });
    let r = run(&fleet, &req).await;

    let outcomes: Vec<(&str, &str, u64)> = r
        .attempts
        .iter()
        .map(|a| (a.slot.as_str(), a.outcome.as_str(), a.budget_ms))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("kimi_k2", "timed_out", 1),
            ("chatgpt", "skipped", 0),
            ("local", "skipped", 0)
        ],
        "{:?}",
        r.attempts
    );
    for skipped in &r.attempts[1..] {
        assert_eq!(
            skipped.error.as_deref(),
            Some("phase time limit reached before this slot was tried")
        );
        assert_eq!(skipped.latency_ms, 0.0);
    }
    // Only the attempt that ran is a fallback; the role's error is its error.
    assert_eq!(
        r.fallback_chain,
        vec!["reasoner/kimi_k2: timed out after 1 ms"]
    );
    let m = &r.model_results[&Role::Reasoner];
    assert!(!m.success);
    assert_eq!(m.slot.as_str(), "kimi_k2");
    assert_eq!(m.error_code, Some(ErrorCode::TimedOut));
    assert!(r.primary_answer.is_none());
    assert_eq!(r.confidence, 0.0);
    assert_eq!(r.models_used, Vec::<String>::new(), "{:?}", r.models_used);
}

#[tokio::test]
async fn a_task_still_running_at_the_drain_deadline_is_cancelled_and_answered() {
    let nats = NatsServer::start();
    let config = CoordinatorConfig {
        drain_timeout: Duration::from_millis(300),
        ..CoordinatorConfig::default()
    };
    let mut fleet = Fleet::start(
        &nats.url(),
        config,
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.hang = true)],
    )
    .await;
    let id: TaskId = "drain-deadline".parse().unwrap();
    let mut events = fleet.orch.events(Some(&id)).await.unwrap();
    within(T, "flush", fleet.orch.nats().flush()).await.unwrap();
    let mut req = SubmitRequest::new("plan something");
    req.task_id = Some(id.to_string());
    req.tools = Some(vec!["reasoner".into()]);
    // A 60 s phase: the hung primary's share alone would be 20 s.
    req.timeouts = Some(Timeouts {
        reasoning_ms: Some(60_000),
        ..Default::default()
    });
    let orch = fleet.orch.clone();
    let pending = tokio::spawn(async move { orch.execute(&req).await });
    within(T, "reasoner attempt dispatched", async {
        while let Some(e) = events.next().await {
            if e.kind == EventKind::ModelAttempt {
                return;
            }
        }
        panic!("event stream ended");
    })
    .await;

    // Drain: the task outlives the 300 ms deadline, so the coordinator stops
    // waiting for its worker and still answers the caller.
    fleet.stop_coordinator().await;
    let r = within(
        Duration::from_secs(10),
        "answer after the drain deadline",
        pending,
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("execute: {e}"));
    let m = &r.model_results[&Role::Reasoner];
    assert!(!m.success);
    assert_eq!(m.error_code, Some(ErrorCode::Cancelled), "{m:?}");
    assert_eq!(r.attempts.len(), 1, "{:?}", r.attempts);
    assert_eq!(r.attempts[0].outcome, "cancelled");
    assert!(r.primary_answer.is_none());
}

#[tokio::test]
async fn rejected_verification_drops_confidence_to_point_three() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.confidence = 0.95),
            WorkerSpec::sim(Role::Verifier, "chatgpt")
                .with(|s| s.verdict = orch_worker::sim::SimVerdict::Rejected),
        ],
    )
    .await;
    let mut req = SubmitRequest::new("delete the production database");
    req.tools = Some(vec!["kimi_k2".into(), "chatgpt".into()]);
    let r = run(&fleet, &req).await;
    assert_eq!(r.confidence, 0.3);
    assert_eq!(r.conflicts.len(), 1, "{:?}", r.conflicts);
    assert!(
        r.conflicts[0].starts_with("verification rejected"),
        "{:?}",
        r.conflicts
    );
    assert_eq!(
        r.verdict().unwrap().verdict,
        orch_shared::wire::VerdictKind::Rejected
    );
    assert_eq!(fleet.orch.stats().await.unwrap().conflicts_detected, 1);
}

#[tokio::test]
async fn vision_errors_cost_twenty_percent() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Vision, "default").with(|s| s.vision_errors = true),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.confidence = 0.9),
        ],
    )
    .await;
    let mut req = SubmitRequest::new("Analyze current page state");
    req.tools = Some(vec!["vision".into(), "kimi_k2".into()]);
    req.screenshot = Some(png());
    let r = run(&fleet, &req).await;
    assert!((r.confidence - 0.72).abs() < 1e-9, "{}", r.confidence);
    assert!(
        r.conflicts[0].contains("vision detected errors"),
        "{:?}",
        r.conflicts
    );
    // The reasoner saw the vision output.
    assert!(
        r.model_results[&Role::Vision].content["errors_detected"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
}

#[tokio::test]
async fn every_reasoner_down_means_null_answer_and_action_failed() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Web, "default")],
    )
    .await;
    let id: TaskId = "doomed".parse().unwrap();
    let mut events = fleet.orch.events(Some(&id)).await.unwrap();
    within(T, "flush", fleet.orch.nats().flush()).await.unwrap();
    let mut req = SubmitRequest::new("plan something");
    req.task_id = Some("doomed".into());
    let r = run(&fleet, &req).await;
    assert!(r.primary_answer.is_none());
    assert_eq!(r.confidence, 0.0);
    assert_eq!(r.fallback_chain.len(), 3, "{:?}", r.fallback_chain);
    let m = &r.model_results[&Role::Reasoner];
    assert!(!m.success);
    assert_eq!(m.error_code, Some(ErrorCode::Unavailable));
    assert!(r.model_results[&Role::Web].success, "phase 1 still ran");
    let failed = within(T, "action_failed event", async {
        loop {
            let e = events.next().await.expect("event stream ended");
            if e.kind == EventKind::ActionFailed {
                return e;
            }
            assert_ne!(e.kind, EventKind::ActionComplete);
        }
    })
    .await;
    assert_eq!(
        failed.details["fallback_chain"].as_array().unwrap().len(),
        3
    );
    let stats = fleet.orch.stats().await.unwrap();
    assert_eq!(stats.success_rate, 0.0);
}

#[tokio::test]
async fn per_request_timeouts_are_honoured() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default").with(|s| s.latency = Duration::from_secs(5)),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.latency = Duration::from_secs(5)),
            WorkerSpec::sim(Role::Reasoner, "chatgpt").with(|s| s.latency = Duration::from_secs(5)),
            WorkerSpec::sim(Role::Reasoner, "local").with(|s| s.latency = Duration::from_secs(5)),
        ],
    )
    .await;
    let mut req = SubmitRequest::new("plan something");
    req.timeouts = Some(Timeouts {
        parallel_ms: Some(300),
        reasoning_ms: Some(600),
        verification_ms: None,
    });
    let r = run(&fleet, &req).await;
    let web = &r.model_results[&Role::Web];
    assert!(!web.success);
    assert_eq!(web.error_code, Some(ErrorCode::TimedOut));
    assert_eq!(r.fallback_chain[0], "web/default: timed out after 300 ms");
    let budgets: Vec<u64> = r
        .attempts
        .iter()
        .filter(|a| a.role == Role::Reasoner)
        .map(|a| a.budget_ms)
        .collect();
    assert_eq!(budgets.len(), 3, "{:?}", r.attempts);
    assert!(budgets.iter().sum::<u64>() <= 600, "{budgets:?}");
    assert!(r.primary_answer.is_none());
    // Far below the 5 s the workers would take.
    assert!(r.execution_time_ms < 4000.0, "{}", r.execution_time_ms);
}

#[tokio::test]
async fn stats_after_several_tasks() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
            WorkerSpec::sim(Role::Verifier, "chatgpt"),
        ],
    )
    .await;
    for i in 0..5 {
        let mut req = SubmitRequest::new(format!("task {i}"));
        req.verify = Some(i % 2 == 0);
        run(&fleet, &req).await;
    }
    let s = fleet.orch.stats().await.unwrap();
    assert_eq!(s.total_executions, 5);
    assert_eq!(s.success_rate, 1.0);
    assert_eq!(
        s.fallbacks_triggered, 5,
        "kimi_k2 has no workers: one fallback per task"
    );
    assert_eq!(s.model_usage["sim-reasoner"], 5);
    assert_eq!(s.model_usage["sim-verifier"], 3);
    assert_eq!(s.model_usage["sim-web"], 5);
    assert!(
        s.avg_confidence > 0.8 && s.avg_confidence < 1.0,
        "{}",
        s.avg_confidence
    );
    assert!(s.avg_execution_time_ms > 0.0);
    assert_eq!(s.latency["task"].count, 5);
    assert_eq!(s.latency["reasoner/chatgpt"].count, 5);
    assert!(s.latency["task"].p99_ms >= s.latency["task"].p50_ms);
}

#[tokio::test]
async fn two_workers_of_one_role_share_the_work() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2"),
        ],
    )
    .await;
    let tasks = (0..40).map(|i| {
        let orch = fleet.orch.clone();
        async move { orch.execute(&SubmitRequest::new(format!("t{i}"))).await }
    });
    let results = within(T, "40 tasks", futures::future::join_all(tasks)).await;
    assert!(results.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|r| r.model_results[&Role::Web].success)
    }));
    let web_ids: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.model_results[&Role::Web].model.clone())
        .collect();
    assert_eq!(web_ids.len(), 1);
    let found = fleet
        .orch
        .workers(Duration::from_millis(300))
        .await
        .unwrap();
    let web: Vec<_> = found.iter().filter(|s| s.meta("role") == "web").collect();
    assert_eq!(web.len(), 2);
    assert!(
        web.iter().all(|w| w.requests > 0),
        "both web workers got work: {web:?}"
    );
    assert_eq!(web.iter().map(|w| w.requests).sum::<u64>(), 40);
}

#[tokio::test]
async fn the_shared_handle_is_one_connection() {
    let nats = NatsServer::start();
    let _fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let a = orch_client::get_orchestrator(&nats.url()).await.unwrap();
    let b = orch_client::get_orchestrator("nats://ignored:1")
        .await
        .unwrap();
    assert!(std::ptr::eq(a, b));
    let mut req = SubmitRequest::new("x");
    req.tools = Some(vec!["reasoner".into()]);
    let r = within(T, "execute", a.execute(&req)).await.unwrap();
    assert!(r.succeeded());
    assert!(matches!(
        b.execute(&SubmitRequest { tools: Some(vec!["nope".into()]), ..SubmitRequest::new("x") }).await,
        Err(ClientError::Rejected(e)) if e.error.code == ErrorCode::UnknownTool
    ));
}
