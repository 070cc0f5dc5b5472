//! Pull (least-loaded) dispatch: besides its queue-group subject, every worker
//! pulls from its slot's consumer on the `ORCH_WORK` work-queue stream, and
//! only when it has a free concurrency slot — so queued work waits at the
//! broker for the first free worker instead of behind a busy one.
//!
//! Pulls use the consumer's `prioritized` policy (nats-server ≥ 2.12): a worker
//! asks with a priority from its typical latency (faster → lower number), and
//! the server serves lower numbers first. A slow copy therefore only gets work
//! when every faster copy is busy. On older servers the pulls carry no priority.
//!
//! Delivery is at most once (`max_deliver` 1, acknowledged on receipt): the
//! coordinator owns retries, and a queued job whose budget ran out is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use async_nats::{StatusCode, Subject};
use futures::StreamExt as _;
use orch_shared::codec::Encoding;
use orch_shared::{ErrorCode, headers, subjects};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::WorkError;
use crate::serve::{Job, Origin, Shared, SlotPermit, accept, respond_err};

/// How long one pull request waits at the server (also bounds how long a
/// draining worker listens for what its last pull may still bring).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Most jobs asked for in one pull.
const MAX_PULL: usize = 16;
/// A consumer nobody pulled from for this long is removed by the server.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(120);
/// How often the consumer is re-created (idempotent), in case it expired while every copy was busy.
const CONSUMER_REFRESH: Duration = Duration::from_secs(30);
/// How often to look for the stream before a coordinator has created it.
const STREAM_POLL: Duration = Duration::from_secs(1);

/// The priority to pull with: 0 for unmeasured or very fast workers, then one
/// step per doubling of the typical latency above 10 ms (50 ms → 2, 250 ms → 4).
pub(crate) fn priority(typical: Option<Duration>) -> usize {
    let Some(t) = typical else { return 0 };
    let ms = t.as_secs_f64() * 1000.0;
    if ms <= 10.0 {
        0
    } else {
        ((ms / 10.0).log2().floor() as usize).min(9)
    }
}

fn job_deadline_origin(info_published: time::OffsetDateTime) -> Instant {
    let published: SystemTime = info_published.into();
    let age = SystemTime::now()
        .duration_since(published)
        .unwrap_or_default();
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// Runs the pull loop until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, tracker: TaskTracker, stop: CancellationToken) {
    let role = shared.handler.role();
    let slot = shared.cfg.slot.clone();
    let js = jetstream::new(shared.client.clone());
    let stream = loop {
        match js.get_stream(subjects::STREAM_WORK).await {
            Ok(s) => break s,
            Err(_) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        }
    };
    let name = subjects::queue_consumer(role, &slot);
    let base = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("{role}/{slot} workers pull queued work when free")),
        filter_subject: subjects::queue(role, &slot),
        ack_policy: consumer::AckPolicy::Explicit,
        max_deliver: 1,
        ack_wait: Duration::from_secs(30),
        max_waiting: 4096,
        // When every copy of the slot is gone, the consumer disappears and
        // coordinators see "no responders" instead of queueing into the void.
        inactive_threshold: CONSUMER_INACTIVE,
        ..Default::default()
    };
    let prioritized = consumer::pull::Config {
        priority_policy: consumer::PriorityPolicy::Prioritized,
        priority_groups: vec![subjects::WORK_PRIORITY_GROUP.into()],
        ..base.clone()
    };
    let with_priority = match stream.create_consumer(prioritized.clone()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "prioritized pulls unavailable (nats-server < 2.12?); pulling without priority");
            if let Err(e) = stream.create_consumer(base).await {
                tracing::warn!(error = %e, consumer = %name, "pull dispatch disabled: cannot create the consumer");
                return;
            }
            false
        }
    };
    let inbox = shared.client.new_inbox();
    let mut sub = match shared.client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "pull dispatch disabled: cannot subscribe its inbox");
            return;
        }
    };
    let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{name}", subjects::STREAM_WORK);
    tracing::info!(consumer = %name, with_priority, "pulling queued work when free");
    let mut refreshed = Instant::now();
    while !stop.is_cancelled() {
        if refreshed.elapsed() > CONSUMER_REFRESH {
            refreshed = Instant::now();
            let cfg = if with_priority {
                prioritized.clone()
            } else {
                base_again(&prioritized)
            };
            if let Err(e) = stream.create_consumer(cfg).await {
                tracing::warn!(error = %e, consumer = %name, "refreshing the pull consumer failed");
            }
        }
        // Registered before looking, so a slot freed in between still wakes us.
        let freed = shared.permit_freed.notified();
        let free = shared.permits.available_permits().min(MAX_PULL);
        if free == 0 {
            tokio::select! {
                () = stop.cancelled() => break,
                () = freed => continue,
                () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        }
        drop(freed);
        let mut pull = serde_json::json!({
            "batch": free,
            "expires": PULL_EXPIRES.as_nanos() as u64,
        });
        if with_priority {
            pull["group"] = subjects::WORK_PRIORITY_GROUP.into();
            pull["priority"] = priority(shared.metrics.typical_latency(1)).into();
        }
        let sent = shared
            .client
            .publish_with_reply(next_subject.clone(), inbox.clone(), pull.to_string().into())
            .await;
        // A finishing job holds its reply until this pull is queued on the
        // connection, so the server sees "free again" before the coordinator
        // can send the next task (otherwise a slower idle copy would get it).
        shared.pull_issued.notify_waiters();
        if let Err(e) = sent {
            tracing::warn!(error = %e, "pull request failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Read this pull's answers: up to `free` jobs, ended by a status message or expiry.
        let mut received = 0;
        let limit = Instant::now() + PULL_EXPIRES + Duration::from_secs(1);
        while received < free {
            let next = tokio::time::timeout_at(limit.into(), sub.next()).await;
            let Ok(Some(msg)) = next else { break };
            match msg.status {
                // Jobs carry no status; 404/408/409 end the pull, 100 is an idle heartbeat.
                None => {
                    received += 1;
                    take(&shared, &tracker, &js, msg, stop.is_cancelled()).await;
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(_) => break,
            }
        }
    }
    // Answer what an outstanding pull may still bring, so no job is silently lost.
    let drain_until = Instant::now() + PULL_EXPIRES + Duration::from_millis(200);
    while let Ok(Some(msg)) = tokio::time::timeout_at(drain_until.into(), sub.next()).await {
        if msg.status.is_none() {
            take(&shared, &tracker, &js, msg, true).await;
        }
    }
}

/// Acknowledges a pulled job (at most once) and runs it — or, while
/// shutting down, tells the coordinator to go elsewhere.
async fn take(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    js: &jetstream::Context,
    msg: async_nats::Message,
    refuse: bool,
) {
    let jm = jetstream::Message {
        message: msg,
        context: js.clone(),
    };
    let published = jm
        .info()
        .map(|i| job_deadline_origin(i.published))
        .unwrap_or_else(|_| Instant::now());
    if let Err(e) = jm.ack().await {
        tracing::debug!(error = %e, "acknowledging a queued job failed");
    }
    let message = jm.message;
    let Some(reply) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::ORCH_REPLY_TO))
        .map(|v| Subject::from(v.as_str()))
    else {
        tracing::warn!(subject = %message.subject, "queued job without an Orch-Reply-To header dropped");
        shared.metrics.record_err(ErrorCode::InvalidRequest, true);
        return;
    };
    let job = Job {
        origin: Origin::Queued {
            message,
            reply,
            published,
        },
        // The slot this pull was sized by; taken now, so the loop's next pull
        // already counts it. (None when a request/reply job took it meanwhile:
        // the job then waits for a slot like any other.)
        permit: SlotPermit::try_take(&shared.permits, &shared.permit_freed),
    };
    if refuse {
        let enc = Encoding::from_headers(job.message().headers.as_ref()).unwrap_or_default();
        let err = WorkError::new(ErrorCode::ShuttingDown, "worker is shutting down");
        respond_err(shared, &job, enc, &err, true).await;
        return;
    }
    accept(shared, tracker, job).await;
}

/// The prioritized config without its priority settings.
fn base_again(prioritized: &consumer::pull::Config) -> consumer::pull::Config {
    consumer::pull::Config {
        priority_policy: consumer::PriorityPolicy::None,
        priority_groups: Vec::new(),
        ..prioritized.clone()
    }
}
