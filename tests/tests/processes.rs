//! The binaries as separate processes: SIGTERM drains in-flight work and
//! exits 0; the fleet still answers across processes.

use std::time::Duration;

use futures::StreamExt as _;
use nix::sys::signal::Signal;
use orch_client::{ClientError, EventKind, Orchestrator, SubmitRequest, TaskId};
use orch_shared::Role;
use orch_tests::fleet::{FLEET, wait_for_services};
use orch_tests::nats::NatsServer;
use orch_tests::process::{Proc, sim_worker};
use orch_tests::wait::within;

const T: Duration = Duration::from_secs(30);

fn request(id: &str) -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        task_id: Some(id.into()),
        ..SubmitRequest::new("a slow plan")
    }
}

/// Submits in the background and returns once the reasoner attempt has been dispatched.
async fn submit_and_wait_for_dispatch(
    orch: &Orchestrator,
    id: &str,
) -> tokio::task::JoinHandle<Result<orch_client::OrchestratedResult, ClientError>> {
    let task_id: TaskId = id.parse().unwrap();
    let mut events = orch.events(Some(&task_id)).await.unwrap();
    within(T, "flush", orch.nats().flush()).await.unwrap();
    let o = orch.clone();
    let req = request(id);
    let handle = tokio::spawn(async move { o.execute(&req).await });
    within(T, "reasoner attempt dispatched", async {
        while let Some(e) = events.next().await {
            if e.kind == EventKind::ModelAttempt && e.details["role"] == "reasoner" {
                return;
            }
        }
        panic!("event stream ended");
    })
    .await;
    handle
}

#[tokio::test]
async fn sigterm_on_a_worker_finishes_its_in_flight_task_then_exits_0() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let url = nats.url();
    let coordinator = Proc::start("orch-coordinator", &["--nats-url", &url], &[]);
    let mut reasoner = sim_worker(
        "orch-reasoner",
        &url,
        &["--slot", "kimi_k2", "--sim-latency", "1500ms"],
    );
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 1)],
        T,
        [&coordinator, &reasoner],
    )
    .await;

    let handle = submit_and_wait_for_dispatch(&orch, "drain-worker").await;
    // Give the worker a moment to pick the job up, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reasoner.signal(Signal::SIGTERM);

    let result = within(T, "task result", handle)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", reasoner.describe(), coordinator.describe()));
    let m = &result.model_results[&Role::Reasoner];
    assert!(m.success, "{m:?}\n{}", reasoner.describe());
    assert_eq!(
        m.slot.as_str(),
        "kimi_k2",
        "answered by the draining worker, no fallback"
    );
    assert!(
        result.fallback_chain.is_empty(),
        "{:?}",
        result.fallback_chain
    );
    let status = reasoner
        .exited(T)
        .await
        .expect("worker exits after draining");
    assert!(status.success(), "{status}\n{}", reasoner.describe());
    assert!(
        reasoner.stderr().contains("draining"),
        "{}",
        reasoner.describe()
    );
}

#[tokio::test]
async fn sigterm_on_the_coordinator_finishes_its_in_flight_task_then_exits_0() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let url = nats.url();
    let mut coordinator = Proc::start("orch-coordinator", &["--nats-url", &url], &[]);
    let reasoner = sim_worker(
        "orch-reasoner",
        &url,
        &["--slot", "kimi_k2", "--sim-latency", "1000ms"],
    );
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 1)],
        T,
        [&coordinator, &reasoner],
    )
    .await;

    let handle = submit_and_wait_for_dispatch(&orch, "drain-coord").await;
    coordinator.signal(Signal::SIGTERM);
    let result = within(T, "task result", handle)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", coordinator.describe()));
    assert!(result.succeeded(), "{result:?}");
    let status = coordinator
        .exited(T)
        .await
        .expect("coordinator exits after draining");
    assert!(status.success(), "{status}\n{}", coordinator.describe());
    // Nobody takes submits any more.
    let err = orch.execute(&request("after")).await.unwrap_err();
    assert!(matches!(err, ClientError::NoCoordinator(_)), "{err}");
}

#[tokio::test]
async fn a_fleet_of_processes_answers_a_four_role_task() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let url = nats.url();
    let procs = [
        Proc::start("orch-coordinator", &["--nats-url", &url, "--verify"], &[]),
        sim_worker("orch-vision", &url, &[]),
        sim_worker("orch-web", &url, &[]),
        sim_worker("orch-reasoner", &url, &["--slot", "local"]),
        sim_worker("orch-verifier", &url, &["--slot", "local"]),
    ];
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(&orch, &FLEET, T, &procs).await;
    let req = SubmitRequest {
        screenshot: Some(vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a].into()),
        available_tools: vec!["playwright_click".into()],
        ..SubmitRequest::new("Analyze current page state")
    };
    let r = within(T, "task", orch.execute(&req)).await.unwrap();
    assert_eq!(r.model_results.len(), 4, "{r:?}");
    assert!(r.model_results.values().all(|m| m.success), "{r:?}");
    // Default chains: kimi_k2 and chatgpt have no workers, so two + one fallbacks.
    assert_eq!(
        r.fallback_chain,
        vec![
            "reasoner/kimi_k2: no responders",
            "reasoner/chatgpt: no responders",
            "verifier/chatgpt: no responders"
        ]
    );
    let found = orch.workers(Duration::from_millis(300)).await.unwrap();
    let reasoner = found.iter().find(|s| s.name == "orch-reasoner").unwrap();
    assert_eq!(reasoner.meta("slot"), "local");
    assert_eq!(reasoner.meta("provider"), "sim");
    assert_eq!(reasoner.requests, 1);
}

/// What a stop may take at most: the 10 s drain deadline the harness gives,
/// plus its bounded steps. Before this was bounded a worker whose server had
/// gone stayed up until a second signal (60 s and more).
const STOP_BOUND: Duration = Duration::from_secs(25);

#[tokio::test]
async fn sigterm_stops_every_process_whose_nats_server_is_gone() {
    orch_tests::init_logs();
    let mut nats = NatsServer::start();
    let url = nats.url();
    let mut procs = vec![
        orch_tests::process::coordinator(&url, &[]),
        sim_worker("orch-reasoner", &url, &["--slot", "kimi_k2"]),
        sim_worker("orch-verifier", &url, &["--slot", "chatgpt"]),
        sim_worker("orch-vision", &url, &[]),
        sim_worker("orch-web", &url, &[]),
    ];
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(
        &orch,
        &[
            ("orch-coordinator", 1),
            ("orch-reasoner", 1),
            ("orch-verifier", 1),
            ("orch-vision", 1),
            ("orch-web", 1),
        ],
        T,
        procs.iter(),
    )
    .await;
    drop(orch);
    nats.kill();
    // Let every client notice the server is gone and start reconnecting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in &procs {
        p.signal(Signal::SIGTERM);
    }
    for p in &mut procs {
        let status = p.exited(STOP_BOUND).await.unwrap_or_else(|| {
            panic!(
                "still running after SIGTERM with NATS gone\n{}",
                p.describe()
            )
        });
        assert!(
            status.code().is_some(),
            "exited by itself, not by a signal: {status}\n{}",
            p.describe()
        );
    }
}
