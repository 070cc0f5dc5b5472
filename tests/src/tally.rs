//! Counting what the fleet produced, for tests that must prove "every task
//! done, none twice": durable submission with the client's retry, result
//! announcements as they happen, final events in the `ORCH_EVENTS` stream
//! and stored results in the `orch_results` bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use orch_client::{
    ClientError, EventKind, OrchestratedResult, Orchestrator, SubmitRequest, TaskId,
};
use orch_shared::subjects;

use crate::wait::{eventually, within};

/// Durable submits in flight at once in [`submit_durable_all`].
const SUBMIT_CONCURRENCY: usize = 16;
/// How long a stream read waits for one more event before it gives up (only
/// when the stream holds nothing that matches).
const EVENT_IDLE: Duration = Duration::from_secs(5);

/// Submits every request durably (at most [`SUBMIT_CONCURRENCY`] at once),
/// retrying a publish that got no acknowledgement as a client would (same
/// task id, so JetStream deduplicates it). Returns the ids in request order.
pub async fn submit_durable_all(orch: &Orchestrator, requests: Vec<SubmitRequest>) -> Vec<TaskId> {
    let submits = requests.into_iter().map(|req| async move {
        within(Duration::from_secs(120), "durable submit", async {
            loop {
                match orch.submit_durable(&req).await {
                    Ok(id) => return id,
                    Err(ClientError::Nats(_) | ClientError::TimedOut(_)) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("durable submit of {:?}: {e}", req.task_id),
                }
            }
        })
        .await
    });
    futures::stream::iter(submits)
        .buffered(SUBMIT_CONCURRENCY)
        .collect()
        .await
}

/// Counts events of `kinds` in the `ORCH_EVENTS` stream per task id, reading
/// the stream up to its end at the time of the call. JetStream errors (a
/// cluster electing a leader) are retried for up to a minute.
pub async fn events_per_task(orch: &Orchestrator, kinds: &[EventKind]) -> BTreeMap<String, usize> {
    let mut last_error = String::new();
    let what = format!("reading {} ({kinds:?})", subjects::STREAM_EVENTS);
    let counts = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match read_events(orch, kinds).await {
                Ok(counts) => return counts,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    counts.unwrap_or_else(|_| panic!("{what}: {last_error}"))
}

async fn read_events(
    orch: &Orchestrator,
    kinds: &[EventKind],
) -> Result<BTreeMap<String, usize>, String> {
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        orch.jetstream().get_stream(subjects::STREAM_EVENTS),
    )
    .await
    .map_err(|_| "stream info timed out".to_string())?
    .map_err(|e| format!("stream info: {e}"))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: kinds
                .iter()
                .map(|k| format!("{}.events.*.{}", subjects::PREFIX, k.as_str()))
                .collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("ordered consumer: {e}"))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let mut counts = BTreeMap::new();
    loop {
        let m = match tokio::time::timeout(EVENT_IDLE, msgs.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(format!("reading: {e}")),
            Ok(None) => return Err("the consumer ended".into()),
            // Quiet: nothing matches at all, or the stream stalled mid-way.
            Err(_) if counts.is_empty() => return Ok(counts),
            Err(_) => return Err("the stream stalled".into()),
        };
        if let Some(id) = m.subject.split('.').nth(3) {
            *counts.entry(id.to_string()).or_default() += 1;
        }
        // Nothing left for this consumer: everything published so far is counted.
        if m.info().is_ok_and(|i| i.pending == 0) {
            return Ok(counts);
        }
    }
}

/// Final events (`action_complete` and `action_failed`) per task id.
pub async fn final_events(orch: &Orchestrator) -> BTreeMap<String, usize> {
    events_per_task(orch, &[EventKind::ActionComplete, EventKind::ActionFailed]).await
}

/// The result stored for `id` in the `orch_results` bucket, read directly
/// (not through a coordinator); `None` while missing or pending.
pub async fn stored_result(orch: &Orchestrator, id: &TaskId) -> Option<OrchestratedResult> {
    let kv = orch
        .jetstream()
        .get_key_value(subjects::KV_RESULTS)
        .await
        .ok()?;
    let bytes = kv.get(id.as_str()).await.ok()??;
    serde_json::from_slice::<OrchestratedResult>(&bytes)
        .ok()
        .filter(|r| r.task_id == id.as_str())
}

/// Counts `orch.v1.results.<task_id>` announcements while it lives.
pub struct Announcements {
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcements {
    /// Subscribes (and flushes, so nothing announced after this returns is missed).
    pub async fn watch(client: &async_nats::Client) -> Announcements {
        let wildcard = format!("{}.results.*", subjects::PREFIX);
        let mut sub = client
            .subscribe(wildcard.clone())
            .await
            .unwrap_or_else(|e| panic!("subscribing {wildcard}: {e}"));
        within(Duration::from_secs(10), "flush", client.flush())
            .await
            .unwrap_or_else(|e| panic!("flush: {e}"));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let sink = counts.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(id) = m.subject.split('.').nth(3) else {
                    continue;
                };
                // `orch.v1.results.get` is the lookup endpoint, not a task.
                if subjects::RESERVED_TASK_IDS.contains(&id) {
                    continue;
                }
                if let Ok(mut c) = sink.lock() {
                    *c.entry(id.to_string()).or_default() += 1;
                }
            }
        });
        Announcements { counts, task }
    }

    /// Announcements so far, per task id.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Distinct tasks announced so far.
    pub fn tasks(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for Announcements {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that every task in `ids` finished successfully exactly once: its
/// result is readable (through a coordinator and in the results bucket), and
/// the event stream holds exactly one final event for it. Returns the results.
pub async fn assert_exactly_once(
    orch: &Orchestrator,
    ids: &[TaskId],
    limit: Duration,
) -> Vec<OrchestratedResult> {
    let mut results = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        let r = within(
            limit,
            &format!("result of {id}"),
            orch.wait_result(id, limit),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(r.succeeded(), "{id}: {r:?}");
        assert_eq!(r.task_id, id.as_str());
        let stored = eventually(limit, &format!("{id} in {}", subjects::KV_RESULTS), || {
            stored_result(orch, id)
        })
        .await;
        assert!(stored.succeeded(), "{id}: stored {stored:?}");
        seen.insert(r.task_id.clone());
        results.push(r);
    }
    assert_eq!(seen.len(), ids.len(), "task ids must be distinct");
    let start = std::time::Instant::now();
    let finals = loop {
        let f = final_events(orch).await;
        let missing: Vec<&str> = ids
            .iter()
            .map(TaskId::as_str)
            .filter(|id| !f.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break f;
        }
        assert!(
            start.elapsed() < limit,
            "no final event in {} after {limit:?} for {} tasks: {missing:?}",
            subjects::STREAM_EVENTS,
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wrong: Vec<_> = ids
        .iter()
        .filter(|id| finals.get(id.as_str()) != Some(&1))
        .map(|id| {
            (
                id.to_string(),
                finals.get(id.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "tasks without exactly one final event (task, count): {wrong:?}"
    );
    results
}
