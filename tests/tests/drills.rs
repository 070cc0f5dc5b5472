//! Fault drills against real servers and real processes on loopback:
//!
//! - `kill -9` of a worker with 100 tasks in flight: all 100 complete, none twice;
//! - a 3-node NATS cluster (JetStream R3) loses the node leading the task
//!   stream under load: no task lost, none twice;
//! - slow consumers (a subscriber that cannot keep up) are detected and
//!   surfaced: a rate-limited warning in the log, and a count in the
//!   coordinator's `orch.v1.stats` and the workers' `$SRV.STATS` data.
//!
//! No timing is asserted (the machine may be slow and busy): only counts.

use std::time::Duration;

use bytes::Bytes;
use orch_client::{Orchestrator, Role, SubmitRequest};
use orch_shared::subjects;
use orch_tests::fleet::wait_for_services;
use orch_tests::nats::{Cluster, NatsServer};
use orch_tests::process::{coordinator, describe_all, sim_worker};
use orch_tests::tally::{Announcements, assert_exactly_once, submit_durable_all};
use orch_tests::wait::{eventually, within};

const T: Duration = Duration::from_secs(180);

fn reasoner_task(id: &str) -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        task_id: Some(id.into()),
        ..SubmitRequest::new(format!("drill task {id}"))
    }
}

/// Jobs accepted and not yet answered by each live `orch-reasoner`, per instance.
async fn reasoner_in_flight(orch: &Orchestrator) -> Option<Vec<u64>> {
    let found = orch.workers(Duration::from_millis(300)).await.ok()?;
    Some(
        found
            .iter()
            .filter(|s| s.name == "orch-reasoner")
            .map(|s| s.data["in_flight"].as_u64().unwrap_or(0))
            .collect(),
    )
}

/// Two reasoner processes share a slot; 100 durable tasks are running on
/// them (some on each) when one is killed with SIGKILL. Its jobs stop
/// heartbeating, the coordinator retries them on the other copy, and every
/// task completes exactly once: one result, one announcement, one final event.
#[tokio::test]
async fn kill_9_of_a_worker_with_100_tasks_in_flight_completes_all_exactly_once() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let url = nats.url();
    // One slot only, so a task can succeed only on the surviving copy.
    let coord = coordinator(&url, &["--reasoner-chain", "kimi_k2"]);
    let worker = || {
        sim_worker(
            "orch-reasoner",
            &url,
            &[
                "--slot",
                "kimi_k2",
                // Long enough that all 100 are still running when the kill comes.
                "--sim-latency",
                "10s",
                "--concurrency",
                "128",
                "--heartbeat-interval",
                "500ms",
            ],
        )
    };
    let mut doomed = worker();
    let survivor = worker();
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 2)],
        T,
        [&coord, &doomed, &survivor],
    )
    .await;
    let announced = Announcements::watch(orch.nats()).await;

    let n = 100;
    let ids = submit_durable_all(
        &orch,
        (0..n)
            .map(|i| reasoner_task(&format!("kill9-{i}")))
            .collect(),
    )
    .await;
    let before = eventually(
        T,
        "100 jobs in flight, spread over both workers",
        || async {
            let per = reasoner_in_flight(&orch).await?;
            (per.len() == 2 && per.iter().sum::<u64>() == n && per.iter().all(|j| *j > 0))
                .then_some(per)
        },
    )
    .await;
    doomed.kill();

    let results = assert_exactly_once(&orch, &ids, T).await;
    for r in &results {
        let m = &r.model_results[&Role::Reasoner];
        assert!(m.success && m.slot.as_str() == "kimi_k2", "{r:?}");
    }
    // Exactly the killed worker's jobs were retried (one failed attempt
    // each, `worker_lost`); the survivor's finished on the first attempt.
    let retried: Vec<String> = results
        .iter()
        .flat_map(|r| r.attempts.iter().filter(|a| a.outcome != "ok"))
        .map(|a| a.outcome.clone())
        .collect();
    assert!(
        before.contains(&(retried.len() as u64)),
        "failed attempts {retried:?}; jobs per worker before the kill: {before:?}"
    );
    assert!(retried.iter().all(|o| o == "worker_lost"), "{retried:?}");
    // Exactly one announcement per task (a task run twice would announce twice).
    let counts = eventually(T, "every task announced", || async {
        let c = announced.counts();
        (c.len() == ids.len()).then_some(c)
    })
    .await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "announced more than once: {twice:?}");
    let stats = eventually(T, "stats count every task once", || async {
        let s = orch.stats().await.ok()?;
        (s.total_executions == n).then_some(s)
    })
    .await;
    assert_eq!(stats.success_rate, 1.0, "{stats:?}");
    drop((coord, survivor));
}

/// A 3-node cluster with every stream and bucket replicated 3 times. Under a
/// steady load of durable tasks, the node leading the task stream (and
/// whatever clients it serves) is killed with SIGKILL. The other two keep a
/// quorum: every task gets exactly one result.
#[tokio::test]
async fn losing_a_node_of_a_3_node_cluster_under_load_loses_no_task() {
    orch_tests::init_logs();
    let mut cluster = Cluster::start(3);
    cluster.wait_for_jetstream().await;
    let urls = cluster.urls();
    let coord = coordinator(
        &urls,
        &[
            "--js-replicas",
            "3",
            "--reasoner-chain",
            "kimi_k2",
            "--ack-wait",
            "5s",
        ],
    );
    let worker = sim_worker(
        "orch-reasoner",
        &urls,
        &[
            "--slot",
            "kimi_k2",
            "--sim-latency",
            "200ms",
            "--concurrency",
            "16",
        ],
    );
    let orch = Orchestrator::connect(&urls).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 1)],
        T,
        [&coord, &worker],
    )
    .await;
    let announced = Announcements::watch(orch.nats()).await;

    // 16 jobs at a time of 200 ms each: ~80 tasks/s at best, so 200 tasks
    // keep the fleet busy for a few seconds at least.
    let n = 200;
    let requests = (0..n).map(|i| reasoner_task(&format!("r3-{i}"))).collect();
    let ids = within(T, "submitting", submit_durable_all(&orch, requests)).await;
    eventually(T, "the load under way", || async {
        (announced.tasks() >= 10).then_some(())
    })
    .await;
    let js = orch.jetstream();
    let leader = cluster.stream_leader(&js, subjects::STREAM_TASKS).await;
    let done_before = announced.tasks();
    cluster.nodes[leader].kill();
    assert!(
        done_before < ids.len(),
        "the node died after the load ended ({done_before} of {} done)",
        ids.len()
    );

    assert_exactly_once(&orch, &ids, T)
        .await
        .iter()
        .for_each(|r| assert!(r.model_results[&Role::Reasoner].success, "{r:?}"));
    assert!(!cluster.nodes[leader].is_running());
    // The shared stats (folded from the replicated event stream) count every
    // task exactly once too.
    let stats = eventually(T, "stats count every task once", || async {
        let s = orch.stats().await.ok()?;
        (s.total_executions == n).then_some(s)
    })
    .await;
    assert_eq!(stats.success_rate, 1.0, "{stats:?}");
    drop((coord, worker));
}

/// Floods a subscriber that has room for 4 messages: the process counts the
/// drops, logs a warning, and reports the count: the coordinator in
/// `orch.v1.stats`, a worker in its `$SRV.STATS` data.
#[tokio::test]
async fn slow_consumers_are_logged_and_counted_in_stats() {
    orch_tests::init_logs();
    let started = std::time::Instant::now();
    let nats = NatsServer::start();
    let url = nats.url();
    let tiny = ["--nats-subscription-capacity", "4"];
    let mut coord_args = vec!["--no-jetstream"];
    coord_args.extend_from_slice(&tiny);
    let coord = coordinator(&url, &coord_args);
    let mut web_args = vec!["--slot", "default"];
    web_args.extend_from_slice(&tiny);
    let web = sim_worker("orch-web", &url, &web_args);
    let orch = Orchestrator::connect(&url).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-web", 1)],
        T,
        [&coord, &web],
    )
    .await;
    let before = within(T, "stats", orch.stats()).await.unwrap();
    assert_eq!(
        before.slow_consumer_events,
        0,
        "{before:?}\n{}",
        describe_all([&coord, &web])
    );

    // Fire-and-forget stats requests (no reply subject, so the coordinator
    // answers nothing) faster than it can take them off its subscription,
    // until it reports drops. Our own stats request may be dropped too:
    // `eventually` asks again.
    let flood = |subject: String| {
        let client = orch.nats().clone();
        async move {
            for _ in 0..20_000 {
                let _ = client.publish(subject.clone(), Bytes::new()).await;
            }
            let _ = client.flush().await;
        }
    };
    let stats = eventually(T, "the coordinator reports slow-consumer drops", || async {
        flood(subjects::STATS.to_string()).await;
        let s = tokio::time::timeout(Duration::from_secs(2), orch.stats())
            .await
            .ok()?
            .ok()?;
        (s.slow_consumer_events > 0).then_some(s)
    })
    .await;
    assert!(stats.slow_consumer_events > 0, "{stats:?}");
    eventually(T, "the coordinator logs the drops", || async {
        coord.stderr().contains("slow consumer").then_some(())
    })
    .await;

    // The worker: a flood of (unknown) cancellations, which every copy of the
    // slot receives on a plain subscription.
    let cancel = subjects::cancel(Role::Web, &"default".parse().unwrap());
    let drops = eventually(T, "the worker reports slow-consumer drops", || async {
        flood(cancel.clone()).await;
        let found = orch.workers(Duration::from_millis(500)).await.ok()?;
        let web = found.iter().find(|s| s.name == "orch-web")?;
        web.data["slow_consumer_events"].as_u64().filter(|n| *n > 0)
    })
    .await;
    assert!(drops > 0);
    eventually(T, "the worker logs the drops", || async {
        web.stderr().contains("slow consumer").then_some(())
    })
    .await;
    // Thousands of drops, but one warning at first and then at most one per
    // 10 s (SLOW_CONSUMER_WARN_EVERY) for as long as the test has run.
    let most = 1 + started.elapsed().as_secs() / 10;
    for (p, dropped) in [(&coord, stats.slow_consumer_events), (&web, drops)] {
        let lines = p
            .stderr()
            .lines()
            .filter(|l| l.contains("slow consumer"))
            .count() as u64;
        assert!(
            (1..=most).contains(&lines),
            "{lines} slow-consumer warnings for {dropped}+ drops (at most {most}):\n{}",
            p.describe()
        );
    }
}
