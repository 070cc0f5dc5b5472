//! Durable task intake: every coordinator pulls from the shared `orch-coordinators`
//! consumer of the `ORCH_TASKS` work-queue stream.
//!
//! - A task is acknowledged only after its result is stored; while it runs the
//!   coordinator sends progress acks every third of `ack_wait`, so long tasks
//!   are not redelivered.
//! - If the coordinator dies, the server redelivers the task after `ack_wait`
//!   and another coordinator completes it. The result store's create/CAS (see
//!   [`crate::results`]) and the deduplicated final event make the outcome
//!   exactly once.
//! - A task that cannot be decoded is dead-lettered at once, with the reason;
//!   one that keeps failing is dead-lettered after `max_deliver` deliveries
//!   (the server's max-deliveries advisory triggers the move).
//! - Pulling is bounded by the coordinator's free task permits.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt as _;
use orch_shared::codec::Encoding;
use orch_shared::reconnect::Backoff;
use orch_shared::wire::SubmitRequest;
use orch_shared::{TaskId, subjects};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::durable::Durable;
use crate::service::Coordinator;

/// Header on dead-lettered tasks: why.
pub const DEAD_REASON: &str = "Orch-Dead-Reason";
/// Header on dead-lettered tasks: the original subject.
pub const DEAD_SUBJECT: &str = "Orch-Dead-Subject";
/// Header on dead-lettered tasks: deliveries so far.
pub const DEAD_DELIVERIES: &str = "Orch-Dead-Deliveries";

/// Most tasks pulled per fetch.
const MAX_BATCH: usize = 64;

/// Publishes a task to the dead-letter stream.
///
/// # Errors
/// When the publish is not acknowledged.
pub async fn dead_letter(
    js: &jetstream::Context,
    task_id: &str,
    original_subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    reason: &str,
    deliveries: i64,
) -> Result<(), String> {
    // Keep the original headers (Content-Type, trace context) except the
    // dedup id, so a re-dead-lettering is not silently dropped.
    let mut h = HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        if !AsRef::<str>::as_ref(name).eq_ignore_ascii_case("Nats-Msg-Id") {
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
    }
    h.insert(
        DEAD_REASON,
        orch_shared::codec::header_safe(reason).as_str(),
    );
    h.insert(DEAD_SUBJECT, original_subject);
    h.insert(DEAD_DELIVERIES, deliveries.to_string().as_str());
    let token: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    let token = if token.is_empty() {
        "unknown".to_string()
    } else {
        token
    };
    js.publish_with_headers(subjects::dead(&token), h, payload)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    tracing::warn!(task_id, reason, "task dead-lettered");
    Ok(())
}

/// Pulls durable tasks until `stop`; running tasks are tracked on `tasks`.
pub async fn run(
    coord: Arc<Coordinator>,
    durable: Durable,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let consumer: jetstream::consumer::PullConsumer = match durable
        .tasks
        .get_consumer(subjects::CONSUMER_TASKS)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "durable intake disabled: cannot open the task consumer");
            return;
        }
    };
    tracing::info!(
        stream = subjects::STREAM_TASKS,
        consumer = subjects::CONSUMER_TASKS,
        "durable intake running"
    );
    // Fetch failures (no stream leader, connection down) pause 0.1 s, doubling
    // up to 5 s, until a fetch works again.
    let fresh_backoff = || Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut backoff = fresh_backoff();
    while !stop.is_cancelled() {
        // Bounded by free permits: wait for at least one.
        let free = coord.free_permits();
        if free == 0 {
            tokio::select! {
                () = stop.cancelled() => break,
                () = coord.permit_freed() => continue,
            }
        }
        let batch = consumer
            .fetch()
            .max_messages(free.min(MAX_BATCH))
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => {
                backoff = fresh_backoff();
                b
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.next_pause(), "fetching durable tasks failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = backoff.pause() => {}
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => None,
                m = batch.next() => m,
            };
            let Some(next) = next else { break };
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "fetch ended");
                    break;
                }
            };
            accept(&coord, &durable, &tasks, msg).await;
        }
    }
    tracing::info!("durable intake stopped");
}

async fn accept(
    coord: &Arc<Coordinator>,
    durable: &Durable,
    tasks: &TaskTracker,
    msg: jetstream::Message,
) {
    let deliveries = msg.info().map(|i| i.delivered).unwrap_or(1);
    let subject = msg.subject.to_string();
    let id_token = subjects::parse_task(&subject).unwrap_or("").to_string();
    let task_id: TaskId = match id_token.parse() {
        Ok(id) => id,
        Err(e) => {
            return refuse(
                durable,
                &id_token,
                msg,
                deliveries,
                format!("invalid_request: subject {subject}: {e}"),
            )
            .await;
        }
    };
    let decoded = Encoding::from_headers(msg.headers.as_ref())
        .and_then(|enc| enc.decode::<SubmitRequest>(&msg.payload));
    let mut request = match decoded {
        Ok(r) => r,
        Err(e) => return refuse(durable, &id_token, msg, deliveries, e.to_string()).await,
    };
    match &request.task_id {
        Some(body_id) if body_id != task_id.as_str() => {
            let reason = format!(
                "invalid_request: task_id `{body_id}` in the body differs from the subject's `{task_id}`"
            );
            return refuse(durable, &id_token, msg, deliveries, reason).await;
        }
        _ => request.task_id = Some(task_id.to_string()),
    }
    let spec = match coord.spec(request) {
        Ok(s) => s,
        Err(body) => return refuse(durable, &id_token, msg, deliveries, body.to_string()).await,
    };
    let Some(permit) = coord.try_permit() else {
        // Raced with request/reply submits for the last permit: let someone else take it.
        let _ = msg
            .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
            .await;
        return;
    };
    let coord = coord.clone();
    let ack_wait = durable.config.ack_wait;
    let trace = crate::telemetry::task_trace(&msg.subject, true, msg.headers.as_ref());
    // Boxed, and the message dropped once split from its acker: the spawned
    // task holds only what it needs while the task waits on workers (a kept
    // payload would also pin the connection's read buffer it was cut from).
    let spec = Box::new(spec);
    let job = async move {
        let _permit = permit;
        let (_, acker) = msg.split();
        // Progress acks keep a long task from being redelivered while it runs.
        let progress = async {
            let mut ticker = tokio::time::interval(ack_wait / 3);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        };
        let run = Box::pin(coord.run_durable(spec, deliveries));
        let outcome = tokio::select! {
            r = run => r,
            () = progress => unreachable_progress(),
        };
        match outcome {
            Ok(()) => {
                if let Err(e) = acker.double_ack().await {
                    // The result is stored: a redelivery finds it and only acks.
                    tracing::warn!(%subject, error = %e, "acknowledging a finished task failed");
                }
            }
            Err(e) => {
                tracing::error!(%subject, error = %e, deliveries, "durable task not stored; it will be redelivered");
                let delay = Duration::from_secs(2u64.saturating_pow(deliveries.clamp(0, 5) as u32));
                let _ = acker.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    };
    tasks.spawn(trace.run(job));
}

/// Dead-letters an unusable task and terminates its delivery (or naks it when
/// the dead-letter publish fails, so it is not lost).
async fn refuse(
    durable: &Durable,
    id: &str,
    msg: jetstream::Message,
    deliveries: i64,
    reason: String,
) {
    let outcome = dead_letter(
        &durable.js,
        id,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        msg.payload.clone(),
        &reason,
        deliveries,
    )
    .await;
    match outcome {
        Ok(()) => {
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "terminating a dead-lettered task failed");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering failed; the task will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// The progress loop never ends on its own.
fn unreachable_progress() -> Result<(), String> {
    Err("progress loop ended".into())
}

#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: i64,
}

/// Moves tasks that exhausted `max_deliver` to the dead-letter stream, driven
/// by the server's advisory (a task whose coordinator keeps dying cannot
/// report itself).
pub async fn run_dead_letter_mover(
    client: async_nats::Client,
    durable: Durable,
    stop: CancellationToken,
) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        subjects::STREAM_TASKS,
        subjects::CONSUMER_TASKS
    );
    let mut sub = match client
        .queue_subscribe(subject.clone(), subjects::COORDINATOR_QUEUE.to_string())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %subject, "cannot watch max-deliveries advisories; poison tasks will stay in the stream");
            return;
        }
    };
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(adv) = serde_json::from_slice::<MaxDeliveries>(&m.payload) else {
            tracing::warn!("undecodable max-deliveries advisory");
            continue;
        };
        let original = match durable.tasks.get_raw_message(adv.stream_seq).await {
            Ok(original) => original,
            // Acknowledged meanwhile (a late success): nothing to move.
            Err(e) => {
                tracing::debug!(seq = adv.stream_seq, error = %e, "max-deliveries advisory for a message that is gone");
                continue;
            }
        };
        let subject = original.subject.to_string();
        let id = subjects::parse_task(&subject)
            .unwrap_or("unknown")
            .to_string();
        let reason = format!(
            "max deliveries ({}) exceeded without a stored result",
            adv.deliveries
        );
        match dead_letter(
            &durable.js,
            &id,
            &subject,
            Some(&original.headers),
            original.payload.clone(),
            &reason,
            adv.deliveries,
        )
        .await
        {
            Ok(()) => {
                if let Err(e) = durable.tasks.delete_message(adv.stream_seq).await {
                    tracing::warn!(seq = adv.stream_seq, error = %e, "removing a dead-lettered task from the stream failed");
                }
            }
            Err(e) => tracing::error!(error = %e, task_id = %id, "dead-lettering failed"),
        }
    }
}
