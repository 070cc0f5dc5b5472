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
    // Warm up: let each worker measure itself (the slow one gets work while unmeasured).
    let _ = served_by(&fleet, 0..6).await;
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
