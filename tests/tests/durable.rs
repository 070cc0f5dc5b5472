//! JetStream: durable intake with exactly-once results, stored results,
//! event replay, shared stats, cache, large screenshots, dead letters.
//! Every test runs a real nats-server with file storage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use nix::sys::signal::Signal;
use orch_client::{ErrorCode, EventKind, Orchestrator, ReplayFrom, SubmitRequest, TaskId};
use orch_coordinator::config::DurableConfig;
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::{Role, subjects};
use orch_tests::fleet::{Fleet, WorkerSpec, wait_for_services};
use orch_tests::nats::{NatsServer, ServerOptions};
use orch_tests::process::{Proc, coordinator, sim_worker};
use orch_tests::tally::{
    Announcements, assert_exactly_once, final_events, stored_result, submit_durable_all,
};
use orch_tests::wait::{eventually, within};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);

fn reasoner_only(task: &str, id: &str) -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        task_id: Some(id.into()),
        ..SubmitRequest::new(task)
    }
}

/// Runs the reasoner-only task `id` (request/reply) and returns its result.
async fn run_reasoner_task(fleet: &Fleet, task: &str, id: &str) -> orch_client::OrchestratedResult {
    within(
        T,
        &format!("task {id}"),
        fleet.orch.execute(&reasoner_only(task, id)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_duplicate_publish_is_answered_once() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let req = reasoner_only("plan once", "dup-1");
    let a = within(T, "first publish", fleet.orch.submit_durable(&req))
        .await
        .unwrap();
    let b = within(T, "second publish", fleet.orch.submit_durable(&req))
        .await
        .unwrap();
    assert_eq!(a, b);
    // Also a raw publish, as a client in another language would do it.
    let js = fleet.orch.jetstream();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "dup-1");
    let ack = js
        .publish_with_headers(
            "orch.v1.tasks.dup-1",
            h,
            serde_json::to_vec(&req).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "the stream drops the duplicate");

    let r = within(T, "result", fleet.orch.wait_result(&a, T))
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(r.task_id, "dup-1");
    let finals = final_events(&fleet.orch).await;
    assert_eq!(finals.get("dup-1"), Some(&1), "{finals:?}");
    let stats = fleet.orch.stats().await.unwrap();
    assert_eq!(stats.total_executions, 1);
    assert_eq!(stats.scope, "shared");
}

#[tokio::test]
async fn results_are_stored_and_readable_by_id() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Reasoner, "kimi_k2")
                .with(|s| s.latency = Duration::from_millis(800)),
        ],
    )
    .await;
    // Request/reply results are stored too.
    let r = run_reasoner_task(&fleet, "stored", "rr-1").await;
    let id: TaskId = "rr-1".parse().unwrap();
    let stored = eventually(T, "stored result", || async {
        fleet.orch.result(&id).await.ok()
    })
    .await;
    assert_eq!(stored, r);
    // Unknown id: not_found. Running durable task: pending.
    let missing: TaskId = "never-submitted".parse().unwrap();
    let err = fleet.orch.result(&missing).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let slow = fleet
        .orch
        .submit_durable(&reasoner_only("slow", "pending-1"))
        .await
        .unwrap();
    let err = eventually(T, "pending", || async {
        match fleet.orch.result(&slow).await {
            Err(e) if e.code() == Some(ErrorCode::Pending) => Some(e),
            _ => None,
        }
    })
    .await;
    assert!(err.to_string().contains("pending-1"), "{err}");
    let done = within(T, "wait_result", fleet.orch.wait_result(&slow, T))
        .await
        .unwrap();
    assert!(done.succeeded());
    // Bad query.
    let bad = fleet
        .orch
        .nats()
        .request(subjects::RESULTS_GET, "{}".into())
        .await
        .unwrap();
    assert_eq!(
        bad.headers.unwrap().get("Orch-Error").unwrap().as_str(),
        "invalid_request"
    );
}

/// Task `id`'s events replayed from the start of the stream, with their
/// stream sequences, up to and including its final event.
async fn replay_task(orch: &Orchestrator, id: &TaskId) -> Vec<(u64, orch_client::Event)> {
    let mut replay = orch
        .replay_events(Some(id), None, ReplayFrom::Start)
        .await
        .unwrap();
    let mut seen = Vec::new();
    within(T, "replay", async {
        while let Some(e) = replay.next().await {
            let (seq, e) = e.unwrap();
            assert_eq!(e.task_id, id.as_str());
            let done = matches!(e.kind, EventKind::ActionComplete | EventKind::ActionFailed);
            seen.push((seq, e));
            if done {
                break;
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn per_task_events_replay_in_order() {
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
    let mut req = reasoner_only("replay me", "replay-1");
    req.tools = Some(vec!["web".into(), "kimi_k2".into(), "chatgpt".into()]);
    within(T, "execute", fleet.orch.execute(&req))
        .await
        .unwrap();
    let id: TaskId = "replay-1".parse().unwrap();
    let seen = replay_task(&fleet.orch, &id).await;
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let kinds: Vec<String> = seen
        .iter()
        .map(
            |(_, e)| match e.details.get("phase").and_then(|p| p.as_str()) {
                Some(p) => format!("{}:{p}", e.kind.as_str()),
                None => e.kind.as_str().to_string(),
            },
        )
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing in {kinds:?}"))
    };
    assert_eq!(pos("action_start"), 0);
    assert!(pos("phase_started:parallel") < pos("phase_completed:parallel"));
    assert!(pos("phase_completed:parallel") < pos("phase_started:reasoning"));
    assert!(
        pos("fallback") > pos("phase_started:reasoning"),
        "kimi_k2 has no workers"
    );
    assert!(pos("phase_completed:reasoning") < pos("phase_started:verification"));
    assert_eq!(pos("action_complete"), kinds.len() - 1);
    // Every event carries the task id, a kind and a timestamp.
    assert!(seen.iter().all(|(_, e)| e.ts.ends_with('Z')));
}

/// `--no-progress-events`: a task publishes its start, its fallbacks and its
/// final event, nothing per phase or attempt; the shared stats (built from
/// final events) still count it.
#[tokio::test]
async fn without_progress_events_a_task_publishes_its_start_fallbacks_and_end() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig {
            progress_events: false,
            ..CoordinatorConfig::default()
        },
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
        ],
    )
    .await;
    let mut req = reasoner_only("no progress", "no-progress-1");
    req.tools = Some(vec!["web".into(), "reasoner".into()]);
    let r = within(T, "execute", fleet.orch.execute(&req))
        .await
        .unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.fallback_chain.len(), 1, "kimi_k2 has no workers: {r:?}");
    let id: TaskId = "no-progress-1".parse().unwrap();
    let kinds: Vec<EventKind> = (replay_task(&fleet.orch, &id).await)
        .into_iter()
        .map(|(_, e)| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::ActionStart,
            EventKind::Fallback,
            EventKind::ActionComplete
        ]
    );
    let stats = within(T, "stats", fleet.orch.stats()).await.unwrap();
    assert_eq!(stats.scope, "shared");
    assert_eq!(stats.total_executions, 1);
    assert_eq!(stats.fallbacks_triggered, 1);
}

#[tokio::test]
async fn the_cache_serves_identical_requests() {
    let nats = NatsServer::start();
    let config = CoordinatorConfig {
        durable: Some(DurableConfig {
            cache_ttl: Some(Duration::from_secs(60)),
            ..DurableConfig::default()
        }),
        ..CoordinatorConfig::default()
    };
    let fleet = Fleet::start(
        &nats.url(),
        config,
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let mut req = reasoner_only("cache me", "c1");
    let first = within(T, "first", fleet.orch.execute(&req)).await.unwrap();
    assert!(!first.cached);
    req.task_id = Some("c2".into());
    let second = within(T, "second", fleet.orch.execute(&req)).await.unwrap();
    assert!(second.cached, "identical request served from the cache");
    assert_eq!(second.task_id, "c2");
    assert_eq!(second.primary_answer, first.primary_answer);
    req.task_id = Some("c3".into());
    req.cache = Some(false);
    let third = within(T, "third", fleet.orch.execute(&req)).await.unwrap();
    assert!(!third.cached, "opted out");
    req.task = "something else".into();
    req.cache = None;
    req.task_id = Some("c4".into());
    assert!(
        !within(T, "fourth", fleet.orch.execute(&req))
            .await
            .unwrap()
            .cached
    );
    let found = fleet
        .orch
        .workers(Duration::from_millis(300))
        .await
        .unwrap();
    let reasoner = found.iter().find(|s| s.name == "orch-reasoner").unwrap();
    assert_eq!(
        reasoner.requests, 3,
        "the cached task never reached a worker"
    );
    let stats = fleet.orch.stats().await.unwrap();
    assert_eq!(stats.cache_hits, 1);
    assert_eq!(stats.total_executions, 4);
}

#[tokio::test]
async fn a_five_megabyte_screenshot_works_end_to_end() {
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
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png.resize(5 * 1024 * 1024, 7);
    let req = SubmitRequest {
        tools: Some(vec!["vision".into(), "kimi_k2".into()]),
        screenshot: Some(png.clone().into()),
        ..SubmitRequest::new("look at this big page")
    };
    // Request/reply: the SDK uploads first and sends a reference.
    let r = within(T, "execute", fleet.orch.execute(&req))
        .await
        .unwrap();
    let v = &r.model_results[&Role::Vision];
    assert!(v.success, "{v:?}");
    assert!(
        v.content["description"]
            .as_str()
            .unwrap()
            .contains("5242880-byte"),
        "{v:?}"
    );
    // Durable, in MessagePack.
    let durable = fleet.orch.clone().with_msgpack();
    let id = within(T, "durable submit", durable.submit_durable(&req))
        .await
        .unwrap();
    let r = within(T, "durable result", durable.wait_result(&id, T))
        .await
        .unwrap();
    assert!(r.model_results[&Role::Vision].success);
    // A reference to a missing object is refused at submit.
    let bad = SubmitRequest {
        tools: Some(vec!["vision".into()]),
        screenshot_ref: Some(orch_shared::wire::ObjectRef::screenshot("no-such-object")),
        ..SubmitRequest::new("look")
    };
    let err = fleet.orch.execute(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
}

#[tokio::test]
async fn malformed_durable_tasks_are_dead_lettered_with_the_reason() {
    let nats = NatsServer::start();
    let fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "kimi_k2")],
    )
    .await;
    let js = fleet.orch.jetstream();
    for (subject, payload) in [
        ("orch.v1.tasks.bad-json", &b"{nope"[..]),
        ("orch.v1.tasks.no-task", &br#"{"tools":["reasoner"]}"#[..]),
        (
            "orch.v1.tasks.mismatch",
            &br#"{"task":"x","task_id":"other"}"#[..],
        ),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let dead = js.get_stream(subjects::STREAM_DEAD).await.unwrap();
    let reasons = eventually(T, "three dead letters", || {
        let dead = dead.clone();
        async move {
            let mut out = BTreeMap::new();
            for id in ["bad-json", "no-task", "mismatch"] {
                let m = dead
                    .get_last_raw_message_by_subject(&subjects::dead(id))
                    .await
                    .ok()?;
                out.insert(id, m.headers.get("Orch-Dead-Reason")?.as_str().to_string());
            }
            Some(out)
        }
    })
    .await;
    assert!(reasons["bad-json"].contains("malformed"), "{reasons:?}");
    assert!(reasons["no-task"].contains("task"), "{reasons:?}");
    assert!(reasons["mismatch"].contains("differs"), "{reasons:?}");
    // The coordinator keeps serving durable tasks.
    let id = fleet
        .orch
        .submit_durable(&reasoner_only("fine", "fine-1"))
        .await
        .unwrap();
    assert!(
        within(T, "good task", fleet.orch.wait_result(&id, T))
            .await
            .unwrap()
            .succeeded()
    );
}

#[tokio::test]
async fn a_task_that_keeps_failing_is_dead_lettered_after_max_deliver() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let cfg = DurableConfig {
        max_deliver: 2,
        ack_wait: Duration::from_secs(1),
        ..DurableConfig::default()
    };
    let durable = orch_coordinator::durable::Durable::setup(&client, &cfg)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let mover = tokio::spawn(orch_coordinator::intake::run_dead_letter_mover(
        client.clone(),
        durable.clone(),
        stop.clone(),
    ));
    within(T, "flush", client.flush()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.publish(
        "orch.v1.tasks.poison-1",
        serde_json::to_vec(&reasoner_only("poison", "poison-1"))
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // A coordinator that dies on this task every time: it takes the task and never acks.
    let consumer: jetstream::consumer::PullConsumer = durable
        .tasks
        .get_consumer(subjects::CONSUMER_TASKS)
        .await
        .unwrap();
    for attempt in 1..=2 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let m = within(T, "delivery", batch.next())
            .await
            .expect("a delivery")
            .unwrap();
        assert_eq!(m.info().unwrap().delivered, attempt);
    }
    // The server notices the exhausted task when someone asks for work again
    // (every running coordinator keeps asking).
    let mut empty = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    assert!(
        within(T, "no third delivery", empty.next()).await.is_none(),
        "no third delivery"
    );
    let dead = js.get_stream(subjects::STREAM_DEAD).await.unwrap();
    let m = eventually(T, "dead letter after 2 deliveries", || {
        let dead = dead.clone();
        async move {
            dead.get_last_raw_message_by_subject(&subjects::dead("poison-1"))
                .await
                .ok()
        }
    })
    .await;
    assert!(
        m.headers
            .get("Orch-Dead-Reason")
            .unwrap()
            .as_str()
            .contains("max deliveries (2)"),
        "{:?}",
        m.headers
    );
    let body: SubmitRequest = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body.task, "poison", "the original task is kept");
    let tasks = js.get_stream(subjects::STREAM_TASKS).await.unwrap();
    eventually(T, "removed from the task stream", || {
        let tasks = tasks.clone();
        async move {
            tasks
                .get_last_raw_message_by_subject("orch.v1.tasks.poison-1")
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    stop.cancel();
    let _ = mover.await;
}

#[tokio::test]
async fn stats_are_the_same_from_every_coordinator_and_survive_restarts() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut fleet = Fleet::start(
        &url,
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
        ],
    )
    .await;
    let second = Arc::new(
        Coordinator::start(nats.connect().await, CoordinatorConfig::default())
            .await
            .unwrap(),
    );
    let stop2 = CancellationToken::new();
    let serve2 = tokio::spawn(orch_coordinator::serve(second.clone(), stop2.clone()));
    for i in 0..12 {
        let req = SubmitRequest {
            task_id: Some(format!("s{i}")),
            ..SubmitRequest::new(format!("task {i}"))
        };
        if i % 2 == 0 {
            within(T, "execute", fleet.orch.execute(&req))
                .await
                .unwrap();
        } else {
            let id = fleet.orch.submit_durable(&req).await.unwrap();
            within(T, "durable", fleet.orch.wait_result(&id, T))
                .await
                .unwrap();
        }
    }
    let a = eventually(T, "both coordinators agree", || async {
        let a = without_in_flight(fleet.coordinator.stats());
        let b = without_in_flight(second.stats());
        (a.total_executions == 12 && a == b).then_some(a)
    })
    .await;
    assert_eq!(a.fallbacks_triggered, 12, "kimi_k2 has no workers");
    assert_eq!(a.latency["reasoner/chatgpt"].count, 12);

    // Restart: stop both, start a fresh one; it reports the same numbers.
    stop2.cancel();
    let _ = serve2.await;
    fleet.stop_coordinator().await;
    let third = Coordinator::start(nats.connect().await, CoordinatorConfig::default())
        .await
        .unwrap();
    assert_eq!(
        without_in_flight(third.stats()),
        a,
        "a new coordinator rebuilds the same stats"
    );
    // And after a server restart too.
    drop(third);
    let mut nats = nats;
    nats.restart();
    let fourth = within(T, "coordinator after server restart", async {
        loop {
            if let Ok(client) = async_nats::connect(nats.url()).await
                && let Ok(c) = Coordinator::start(client, CoordinatorConfig::default()).await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(without_in_flight(fourth.stats()), a);
}

/// A durable task whose result cannot be written when it finishes (here the
/// bucket's stream stops taking its subjects for a while, as when a cluster
/// elects a new leader for it after losing a node) keeps the result and writes
/// it again: stored once the bucket works, and the task is not run a second
/// time. Giving up at once meant a redelivery two seconds later and the whole
/// task, worker call included, run again.
#[tokio::test]
async fn a_result_that_cannot_be_stored_for_a_while_is_stored_later_not_run_again() {
    let nats = NatsServer::start();
    let mut fleet = chatgpt_fleet(&nats, Duration::from_secs(2)).await;
    let js = fleet.orch.jetstream();
    let kv = js.get_key_value(subjects::KV_RESULTS).await.unwrap();
    let id = fleet
        .orch
        .submit_durable(&reasoner_only("stored later", "stored-later"))
        .await
        .unwrap();
    // The run has begun once its pending marker is in the bucket.
    eventually(T, "the pending marker", || async {
        kv.get(id.as_str()).await.ok()?.map(|_| ())
    })
    .await;
    let paused = PausedResults::pause(&js).await;
    // The worker answers 2 s after the start; writes fail for a second or more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stored_result(&fleet.orch, &id).await.is_none(),
        "stored while the bucket took no writes"
    );
    paused.resume().await;

    let r = within(T, "the result", fleet.orch.wait_result(&id, T))
        .await
        .unwrap();
    assert!(r.succeeded(), "{r:?}");
    let stored = eventually(T, "the stored result", || stored_result(&fleet.orch, &id)).await;
    assert_eq!(stored.task_id, id.as_str());
    // Past the 2 s redelivery a give-up would have asked for, and its run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = fleet.workers.remove(0).stop().await;
    assert_eq!(report.completed, 1, "the task ran again: {report:?}");
}

/// A fleet (default coordinator) with one simulated `chatgpt` reasoner that
/// answers after `latency`.
async fn chatgpt_fleet(nats: &NatsServer, latency: Duration) -> Fleet {
    Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        vec![WorkerSpec::sim(Role::Reasoner, "chatgpt").with(|s| s.latency = latency)],
    )
    .await
}

/// The results bucket's stream taking no writes: its subjects moved away, so
/// every write to the bucket fails (no responders) until [`PausedResults::resume`].
struct PausedResults {
    js: jetstream::Context,
    config: jetstream::stream::Config,
}

impl PausedResults {
    async fn pause(js: &jetstream::Context) -> PausedResults {
        let name = format!("KV_{}", subjects::KV_RESULTS);
        let mut stream = js.get_stream(&name).await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        js.update_stream(jetstream::stream::Config {
            subjects: vec!["orch-test-paused.>".into()],
            ..config.clone()
        })
        .await
        .unwrap();
        PausedResults {
            js: js.clone(),
            config,
        }
    }

    async fn resume(self) {
        self.js.update_stream(self.config).await.unwrap();
    }
}

/// A request/reply task whose result cannot be stored when it finishes: the
/// caller gets its reply at once, and the result is written again until the
/// bucket takes it, then announced once. Written once and given up, `orch
/// result` showed the task `pending` until its marker expired.
#[tokio::test]
async fn a_request_reply_result_that_cannot_be_stored_for_a_while_is_stored_later() {
    let nats = NatsServer::start();
    let fleet = chatgpt_fleet(&nats, Duration::from_secs(1)).await;
    let js = fleet.orch.jetstream();
    let kv = js.get_key_value(subjects::KV_RESULTS).await.unwrap();
    let announced = Announcements::watch(fleet.orch.nats()).await;
    let id: TaskId = "rr-stored-later".parse().unwrap();
    let orch = fleet.orch.clone();
    let run = tokio::spawn(async move {
        orch.execute(&reasoner_only("stored later", "rr-stored-later"))
            .await
    });
    eventually(T, "the pending marker", || async {
        kv.get(id.as_str()).await.ok()?.map(|_| ())
    })
    .await;
    let paused = PausedResults::pause(&js).await;
    let reply = within(T, "the reply", run).await.unwrap().unwrap();
    assert!(reply.succeeded(), "{reply:?}");
    // A write or two fail meanwhile (the first retry is 100 ms after the first).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        stored_result(&fleet.orch, &id).await.is_none(),
        "stored while the bucket took no writes"
    );
    paused.resume().await;
    let stored = eventually(T, "the stored result", || stored_result(&fleet.orch, &id)).await;
    assert_eq!(stored, reply);
    eventually(T, "the announcement", || async {
        announced.counts().get(id.as_str()).copied()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(announced.counts().get(id.as_str()), Some(&1));
}

/// Restarts the server (kill -9, same store), then runs the reasoner task
/// `id`. The client, the coordinator and the worker reconnect by themselves;
/// a request sent before the coordinator has subscribed again is lost, so it
/// waits for the coordinator to answer first.
async fn restart_then_run(nats: &mut NatsServer, fleet: &Fleet, id: &str) {
    nats.restart();
    eventually(T, "the coordinator answering after the restart", || async {
        tokio::time::timeout(Duration::from_secs(1), fleet.orch.stats())
            .await
            .ok()?
            .ok()
    })
    .await;
    run_reasoner_task(fleet, "after", id).await;
}

/// After a server restart (kill -9, same store) a running coordinator's
/// stats projection follows the event stream again within seconds: its
/// ordered consumers (in memory on the server) are gone, and it creates them
/// again from the last sequence it folded in as soon as it has reconnected.
/// Left to async-nats, the first pull after the reconnect waits for six
/// `info` requests on the lost consumers and 15 s of backoff.
#[tokio::test]
async fn stats_follow_the_event_stream_again_soon_after_a_server_restart() {
    let mut nats = NatsServer::start();
    let fleet = chatgpt_fleet(&nats, Duration::ZERO).await;
    run_reasoner_task(&fleet, "before", "before-restart").await;
    eventually(T, "the first task counted", || async {
        (fleet.coordinator.stats().total_executions == 1).then_some(())
    })
    .await;

    restart_then_run(&mut nats, &fleet, "after-restart").await;
    // Seconds, not the 15 s and more of async-nats' own recovery; a margin
    // for a slow machine, so this fails only when that recovery is back.
    eventually(
        Duration::from_secs(8),
        "the task after the restart counted",
        || async { (fleet.coordinator.stats().total_executions == 2).then_some(()) },
    )
    .await;
    // Counted once: a second look half a second later (a consumer created
    // twice, or from too early a sequence, would deliver the task again).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.coordinator.stats().total_executions, 2);
}

/// Reads `follow` into `seen` (sequence, task id) up to `id`'s `action_complete`.
async fn follow_until_done(
    follow: &mut orch_client::EventReplay,
    seen: &mut Vec<(u64, String)>,
    id: &str,
) {
    while let Some(next) = follow.next().await {
        let (seq, e) = next.expect("a follow gives events, not errors");
        let done = e.task_id == id && e.kind == EventKind::ActionComplete;
        seen.push((seq, e.task_id));
        if done {
            return;
        }
    }
    panic!("the follow ended");
}

/// A replay following new events (`orch events --follow`) goes on across a
/// server restart (kill -9, same store): its consumer is created again from
/// the event after the last one it gave out, so it neither stops with an
/// error nor stalls, gives nothing twice and nothing from before it started.
#[tokio::test]
async fn an_event_follow_goes_on_across_a_server_restart() {
    let mut nats = NatsServer::start();
    let fleet = chatgpt_fleet(&nats, Duration::ZERO).await;
    // Events from before the follow starts are not part of it.
    run_reasoner_task(&fleet, "old", "follow-old").await;
    let mut follow = fleet
        .orch
        .replay_events(None, None, ReplayFrom::New)
        .await
        .unwrap();
    let mut seen: Vec<(u64, String)> = Vec::new();
    run_reasoner_task(&fleet, "before", "follow-before").await;
    within(
        T,
        "its events",
        follow_until_done(&mut follow, &mut seen, "follow-before"),
    )
    .await;

    restart_then_run(&mut nats, &fleet, "follow-after").await;
    // Seconds, not the 15 s and more of async-nats' own recovery.
    within(
        Duration::from_secs(8),
        "its events through the same follow",
        follow_until_done(&mut follow, &mut seen, "follow-after"),
    )
    .await;
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in stream order, each once: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(_, id)| id == "follow-before" || id == "follow-after"),
        "only events from after the follow started: {seen:?}"
    );
}

/// Failed tasks (`action_failed`) count as well as completed ones, each kind
/// read by a consumer of its own: a client sees its own task of either kind in
/// the very next stats it asks for, a coordinator without a snapshot replays
/// both kinds, and a snapshot an earlier version wrote (one sequence for both
/// kinds, under the old key) is where a new coordinator starts from.
#[tokio::test]
async fn failed_and_completed_tasks_count_and_an_old_snapshot_is_honoured() {
    let nats = NatsServer::start();
    let url = nats.url();
    // A reasoner that takes 300 ms: a task allowing reasoning 100 ms fails
    // (`action_failed`), one with the default time completes with a plan.
    let mut fleet = Fleet::start(
        &url,
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Reasoner, "chatgpt")
                .with(|s| s.latency = Duration::from_millis(300)),
        ],
    )
    .await;
    for i in 0..6 {
        let mut req = reasoner_only(&format!("task {i}"), &format!("k{i}"));
        if i % 2 == 1 {
            req.timeouts = Some(orch_shared::wire::Timeouts {
                reasoning_ms: Some(100),
                ..Default::default()
            });
        }
        let result = within(T, "execute", fleet.orch.execute(&req))
            .await
            .unwrap();
        assert_eq!(result.primary_answer.is_none(), i % 2 == 1, "task {i}");
        // Read-your-writes: asked right after the answer, no waiting.
        let stats = within(T, "stats", fleet.orch.stats()).await.unwrap();
        assert_eq!(stats.total_executions, i + 1, "stats after task {i}");
    }
    let stats = fleet.coordinator.stats();
    assert_eq!(stats.success_rate, 0.5, "{stats:?}");
    fleet.stop_coordinator().await;

    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    let bucket = js.get_key_value(subjects::KV_STATS).await.unwrap();
    let snapshot = bucket
        .get(orch_coordinator::projection::SNAPSHOT_KEY)
        .await
        .unwrap()
        .expect("the stopped coordinator saved its snapshot");
    let saved: serde_json::Value = serde_json::from_slice(&snapshot).unwrap();
    assert_eq!(saved["stats"]["total"], 6, "{saved}");

    // No snapshot: both kinds replayed from the stream.
    bucket
        .delete(orch_coordinator::projection::SNAPSHOT_KEY)
        .await
        .unwrap();
    let replayed = Coordinator::start(nats.connect().await, CoordinatorConfig::default())
        .await
        .unwrap();
    assert_eq!(
        without_in_flight(replayed.stats()),
        without_in_flight(stats.clone())
    );
    replayed.shutdown();

    // An earlier version's snapshot: every final event up to `seq` is in its
    // stats, here made-up ones (7 tasks), so what is replayed shows.
    let last_seq = js
        .get_stream(subjects::STREAM_EVENTS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let made_up = orch_coordinator::stats::Stats::default();
    for _ in 0..7 {
        made_up.apply(&orch_coordinator::stats::StatsDelta {
            succeeded: true,
            confidence: 0.9,
            execution_time_ms: 5.0,
            conflicts: 0,
            fallbacks: 0,
            model_usage: BTreeMap::new(),
            latency_ms: vec![("task".into(), 5.0)],
            cached: false,
        });
    }
    let legacy = serde_json::json!({ "seq": last_seq, "stats": made_up.state() });
    bucket
        .delete(orch_coordinator::projection::SNAPSHOT_KEY)
        .await
        .unwrap();
    bucket
        .put(
            orch_coordinator::projection::LEGACY_SNAPSHOT_KEY,
            serde_json::to_vec(&legacy).unwrap().into(),
        )
        .await
        .unwrap();
    let resumed = Coordinator::start(nats.connect().await, CoordinatorConfig::default())
        .await
        .unwrap();
    let report = resumed.stats();
    assert_eq!(report.total_executions, 7, "{report:?}");
    assert_eq!(report.success_rate, 1.0, "{report:?}");
    resumed.shutdown();
}

/// A stats report without the moment's `in_flight` (not part of what the
/// shared stats agree on).
fn without_in_flight(mut s: orch_shared::wire::StatsReport) -> orch_shared::wire::StatsReport {
    s.in_flight = 0;
    s
}

/// A coordinator process whose unacknowledged tasks come back after 2 s,
/// and an `orch-reasoner` on `kimi_k2` answering after `latency` with
/// `concurrency` jobs at a time, both visible to the returned client.
async fn reasoner_fleet_procs(
    url: &str,
    coordinators: usize,
    latency: &str,
    concurrency: &str,
) -> (Vec<Proc>, Proc, Orchestrator) {
    let coords: Vec<Proc> = (0..coordinators)
        .map(|_| coordinator(url, &["--ack-wait", "2s"]))
        .collect();
    let worker = sim_worker(
        "orch-reasoner",
        url,
        &[
            "--slot",
            "kimi_k2",
            "--sim-latency",
            latency,
            "--concurrency",
            concurrency,
        ],
    );
    let orch = Orchestrator::connect(url).await.unwrap();
    wait_for_services(
        &orch,
        &[("orch-coordinator", coordinators), ("orch-reasoner", 1)],
        T,
        coords.iter().chain([&worker]),
    )
    .await;
    (coords, worker, orch)
}

async fn submit_all(orch: &Orchestrator, prefix: &str, n: usize) -> Vec<TaskId> {
    let requests = (0..n)
        .map(|i| reasoner_only(&format!("durable task {i}"), &format!("{prefix}-{i}")))
        .collect();
    submit_durable_all(orch, requests).await
}

/// Durable intake at its in-flight limit: with `--max-in-flight 2` and a
/// backlog of ten tasks it holds two at a time (the worker could take eight)
/// and takes the next whenever one finishes, until the backlog is gone, each
/// task run once.
#[tokio::test]
async fn durable_intake_at_its_in_flight_limit_works_off_a_backlog() {
    let nats = NatsServer::start();
    let mut fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig {
            max_in_flight: 2,
            ..CoordinatorConfig::default()
        },
        vec![
            WorkerSpec::sim(Role::Reasoner, "kimi_k2")
                .with(|s| s.latency = Duration::from_millis(300)),
        ],
    )
    .await;
    let ids = submit_all(&fleet.orch, "limit", 10).await;
    // Five rounds of 300 ms: the coordinator is at its limit for a while.
    let coord = fleet.coordinator.clone();
    eventually(T, "every permit taken", || async {
        (coord.free_permits() == 0).then_some(())
    })
    .await;
    assert_exactly_once(&fleet.orch, &ids, T).await;
    // A result is stored before its message is acked and its permit freed.
    eventually(T, "every permit given back", || async {
        (coord.free_permits() == 2).then_some(())
    })
    .await;
    let report = fleet.workers.remove(0).stop().await;
    assert_eq!(report.completed, 10, "{report:?}");
}

#[tokio::test]
async fn killing_one_of_two_coordinators_mid_load_loses_and_doubles_nothing() {
    orch_tests::init_logs();
    let nats = NatsServer::start();
    let url = nats.url();
    let (mut coords, _worker, orch) = reasoner_fleet_procs(&url, 2, "300ms", "16").await;
    let ids = submit_all(&orch, "kill", 60).await;
    // Let both coordinators take tasks, then kill one without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    coords[0].signal(Signal::SIGKILL);
    assert!(coords[0].exited(T).await.is_some());
    assert_exactly_once(&orch, &ids, Duration::from_secs(120)).await;
    let stats = eventually(T, "stats count every task once", || async {
        let s = orch.stats().await.ok()?;
        (s.total_executions == 60).then_some(s)
    })
    .await;
    assert_eq!(stats.success_rate, 1.0);
}

#[tokio::test]
async fn restarting_nats_during_100_durable_tasks_loses_and_doubles_nothing() {
    orch_tests::init_logs();
    let mut nats = NatsServer::start_with(ServerOptions::default());
    let url = nats.url();
    let (_coords, _worker, orch) = reasoner_fleet_procs(&url, 1, "50ms", "8").await;
    let ids = submit_all(&orch, "restart", 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    assert_exactly_once(&orch, &ids, Duration::from_secs(120)).await;
}

#[tokio::test]
async fn a_server_without_jetstream_is_a_clear_startup_error() {
    let nats = NatsServer::start_with(ServerOptions {
        jetstream: false,
        ..ServerOptions::default()
    });
    let mut c = Proc::start("orch-coordinator", &["--nats-url", &nats.url()], &[]);
    let status = c.exited(T).await.expect("exits");
    assert_eq!(status.code(), Some(69), "{}", c.describe());
    let err = c.stderr();
    assert!(err.contains("JetStream is not enabled"), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("orch-coordinator:"))
            .count(),
        1,
        "{err}"
    );
    // --no-jetstream runs core-only.
    let mut c = Proc::start(
        "orch-coordinator",
        &["--nats-url", &nats.url(), "--no-jetstream"],
        &[],
    );
    let orch = Orchestrator::connect(&nats.url()).await.unwrap();
    let s = eventually(T, "core-only coordinator answers", || async {
        orch.stats().await.ok()
    })
    .await;
    assert!(s.scope.starts_with("coordinator:"));
    c.signal(Signal::SIGTERM);
    assert!(c.exited(T).await.unwrap().success());
}

/// A final event the stream did not acknowledge is published again as the
/// same message — its time, trace context and id — so the stream drops the
/// copy and a watcher sees one event, not a second one with another time.
#[tokio::test]
async fn a_final_event_is_published_again_unchanged() {
    use orch_coordinator::events::EventSink;
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "EVENTS_T".into(),
        subjects: vec!["orch.v1.events.>".into()],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .expect("stream");
    let mut watcher = client
        .subscribe("orch.v1.events.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let sink = EventSink::new(client.clone()).with_jetstream(js.clone());
    let id = TaskId::generate();
    let event = sink
        .encode_final(
            &id,
            EventKind::ActionComplete,
            serde_json::json!({"ok": true}),
        )
        .expect("encoded");
    let first = sink.publish_final(&event).await.expect("ack future");
    assert!(!first.await.expect("acknowledged").duplicate);
    // Later, as the retry does (a fresh timestamp would differ by then).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = sink.publish_final(&event).await.expect("ack future");
    assert!(
        again.await.expect("acknowledged").duplicate,
        "dropped as a copy"
    );
    let a = within(T, "first copy", watcher.next())
        .await
        .expect("message");
    let b = within(T, "second copy", watcher.next())
        .await
        .expect("message");
    assert_eq!(a.subject, b.subject);
    assert_eq!(a.payload, b.payload, "same body, time included");
    let (ha, hb) = (a.headers.expect("headers"), b.headers.expect("headers"));
    assert_eq!(
        ha.get("Nats-Msg-Id").map(|v| v.to_string()),
        Some(format!("{}.final", id.as_str()))
    );
    for name in ["Nats-Msg-Id", "Content-Type", "traceparent"] {
        assert_eq!(
            ha.get(name).map(|v| v.to_string()),
            hb.get(name).map(|v| v.to_string()),
            "{name}"
        );
    }
    let stored = js
        .get_stream("EVENTS_T")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(stored, 1);
}

/// The pending-result marker is written only where a task id has no entry:
/// a second start finds the first marker (same revision, same coordinator),
/// a stored result is returned as done (writing it again is still stored,
/// another run's result is not), and a key an operator deleted is written
/// again (the path through `kv::Store::create`).
#[tokio::test]
async fn a_pending_marker_is_created_once_per_task_id() {
    use orch_coordinator::durable::Durable;
    use orch_coordinator::results::{EncodedResult, Finish, ResultStore, Stored};

    let nats = NatsServer::start();
    let client = nats.connect().await;
    let durable = Durable::setup(&client, &DurableConfig::default())
        .await
        .expect("JetStream setup");
    let store = |name| {
        let (kv, js) = (durable.results.clone(), durable.js.clone());
        ResultStore::new(kv, js, client.clone(), name)
    };
    let (first, second) = (store("coordinator-a"), store("coordinator-b"));
    let id = TaskId::generate();

    let Ok(Stored::Pending { revision, marker }) = first.start(&id).await else {
        panic!("the first start writes a marker");
    };
    assert_eq!(marker.coordinator, "coordinator-a");
    let Ok(Stored::Pending {
        revision: seen,
        marker: existing,
    }) = second.start(&id).await
    else {
        panic!("a second start finds the first marker");
    };
    assert_eq!(
        (seen, existing.coordinator.as_str()),
        (revision, "coordinator-a")
    );

    let result = orch_client::OrchestratedResult {
        task_id: id.to_string(),
        task: "t".into(),
        primary_answer: None,
        model_results: BTreeMap::new(),
        confidence: 0.0,
        conflicts: vec![],
        execution_time_ms: 1.0,
        models_used: vec![],
        fallback_chain: vec![],
        attempts: vec![],
        trace_id: None,
        cached: false,
    };
    let encoded = EncodedResult::new(&result).unwrap();
    assert!(matches!(
        first.finish(&encoded, Some(revision)).await,
        Ok(Finish::Stored)
    ));
    assert!(matches!(second.start(&id).await, Ok(Stored::Done(_))));
    // Written again (its first answer lost): the stored entry is this very
    // result, so it is stored, not "another run finished first".
    assert!(matches!(
        first.finish(&encoded, Some(revision)).await,
        Ok(Finish::Stored)
    ));
    // Another run's result (its times differ) finds this one.
    let other = orch_client::OrchestratedResult {
        execution_time_ms: 2.0,
        ..result.clone()
    };
    let Ok(Finish::AlreadyDone(kept)) = second
        .finish(&EncodedResult::new(&other).unwrap(), Some(revision))
        .await
    else {
        panic!("another run's result does not replace the stored one");
    };
    assert_eq!(*kept, result);

    durable
        .results
        .delete(id.as_str())
        .await
        .expect("delete the entry");
    let Ok(Stored::Pending {
        revision: again,
        marker,
    }) = second.start(&id).await
    else {
        panic!("a deleted entry is written again");
    };
    assert!(again > revision);
    assert_eq!(marker.coordinator, "coordinator-b");
}
