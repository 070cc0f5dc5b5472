//! Least-loaded (pull) dispatch for GPU-bound roles: work waits at the broker
//! for the first free worker, and faster copies are served first.

use std::collections::BTreeMap;
use std::time::Duration;

use orch_client::SubmitRequest;
use orch_coordinator::CoordinatorConfig;
use orch_shared::Role;
use orch_shared::role::RoleSet;
use orch_tests::fleet::{Fleet, WorkerSpec};
use orch_tests::nats::NatsServer;
use orch_tests::wait::within;

const T: Duration = Duration::from_secs(60);

fn pull_vision() -> CoordinatorConfig {
    CoordinatorConfig {
        pull_dispatch: [Role::Vision].into_iter().collect::<RoleSet>(),
        ..CoordinatorConfig::default()
    }
}

fn gpu(model: &str, latency_ms: u64) -> WorkerSpec {
    let mut w = WorkerSpec::sim(Role::Vision, "default").with(|s| {
        s.latency = Duration::from_millis(latency_ms);
        s.model = Some(model.to_string());
    });
    w.concurrency = 1;
    w
}

fn vision_task(i: usize) -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["vision".into()]),
        screenshot: Some(vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, i as u8].into()),
        task_id: Some(format!("v{i}")),
        ..SubmitRequest::new("what is on screen")
    }
}

async fn served_by(fleet: &Fleet, tasks: impl Iterator<Item = usize>) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for i in tasks {
        let r = within(T, "vision task", fleet.orch.execute(&vision_task(i)))
            .await
            .unwrap();
        let v = &r.model_results[&Role::Vision];
        assert!(v.success, "{v:?}");
        *by.entry(v.model.clone()).or_default() += 1;
    }
    by
}

#[tokio::test]
async fn a_free_fast_worker_is_preferred_over_a_slow_one() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        pull_vision(),
        vec![gpu("fast", 20), gpu("slow", 200)],
    )
    .await;
    // Warm up until each worker has measured itself: an unmeasured copy pulls
    // first (so a new worker is tried at once), and the slow one starts
    // pulling only once it has found the queue stream the coordinator made.
    let mut seen = BTreeMap::new();
    for i in 0..50 {
        for (model, n) in served_by(&fleet, i..i + 1).await {
            *seen.entry(model).or_insert(0) += n;
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both workers took work while unmeasured: {seen:?}"
    );
    let by = served_by(&fleet, 100..120).await;
    assert_eq!(
        by.get("fast"),
        Some(&20),
        "sequential tasks all go to the free fast worker: {by:?}"
    );
}

#[tokio::test]
async fn queued_work_waits_for_a_busy_worker_instead_of_failing() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(&nats.url(), pull_vision(), vec![gpu("only", 150)]).await;
    // Eight tasks at once on one worker that runs one at a time.
    let tasks = (0..8).map(|i| {
        let orch = fleet.orch.clone();
        async move { orch.execute(&vision_task(i)).await }
    });
    let results = within(T, "eight queued tasks", futures::future::join_all(tasks)).await;
    for r in results {
        let r = r.unwrap();
        let v = &r.model_results[&Role::Vision];
        assert!(v.success, "{v:?}");
        assert!(r.fallback_chain.is_empty(), "{:?}", r.fallback_chain);
    }
}

#[tokio::test]
async fn no_pulling_workers_means_no_responders_at_once() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        pull_vision(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let mut req = vision_task(1);
    req.tools = Some(vec!["vision".into(), "reasoner".into()]);
    let r = within(T, "task", fleet.orch.execute(&req)).await.unwrap();
    assert_eq!(r.fallback_chain, vec!["vision/default: no responders"]);
    assert!(r.succeeded());
}

#[tokio::test]
async fn a_hedged_slot_that_outlasts_its_p95_races_the_next_slot() {
    let nats = NatsServer::start();
    let config = CoordinatorConfig {
        hedge: orch_coordinator::config::parse_hedge("reasoner/kimi_k2").unwrap(),
        ..CoordinatorConfig::default()
    };
    let fast =
        WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.latency = Duration::from_millis(5));
    let mut fleet = Fleet::start(
        &nats.url(),
        config,
        vec![
            fast,
            WorkerSpec::sim(Role::Reasoner, "chatgpt").with(|s| s.model = Some("gpt".into())),
        ],
    )
    .await;
    let task = |i: usize| SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        task_id: Some(format!("h{i}")),
        ..SubmitRequest::new("plan")
    };
    // Learn kimi_k2's p95 (a few ms).
    for i in 0..25 {
        let r = within(T, "warm-up", fleet.orch.execute(&task(i)))
            .await
            .unwrap();
        assert_eq!(r.model_results[&Role::Reasoner].slot.as_str(), "kimi_k2");
    }
    // kimi_k2 now hangs: the hedge to chatgpt answers long before kimi_k2's 20 s share.
    fleet.workers.remove(0).stop().await;
    fleet
        .add_worker(WorkerSpec::sim(Role::Reasoner, "kimi_k2").with(|s| s.hang = true))
        .await;
    let r = within(T, "hedged task", fleet.orch.execute(&task(99)))
        .await
        .unwrap();
    let m = &r.model_results[&Role::Reasoner];
    assert!(m.success, "{m:?}");
    assert_eq!(m.slot.as_str(), "chatgpt");
    assert!(r.execution_time_ms < 5_000.0, "{}", r.execution_time_ms);
    assert!(
        r.fallback_chain.is_empty(),
        "a lost hedge is not a failure: {:?}",
        r.fallback_chain
    );
    let outcomes: Vec<(&str, &str)> = r
        .attempts
        .iter()
        .map(|a| (a.slot.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("kimi_k2", "hedge_lost"), ("chatgpt", "ok")]);
    // The loser was cancelled on its worker: nothing is left running there.
    let hung = fleet.workers.pop().unwrap();
    let report = hung.stop().await;
    assert_eq!(report.cancelled_at_drain, 0);
}
