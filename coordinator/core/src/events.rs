//! The seed's EventBus, distributed: every step of a task is published on
//! `orch.v1.events.<task_id>.<kind>` as a JSON [`Event`], so anyone can watch
//! one task (`orch.v1.events.<id>.>`), one kind (`orch.v1.events.*.fallback`)
//! or everything.

use async_nats::Client;
use orch_shared::TaskId;
use orch_shared::codec::Encoding;
use orch_shared::subjects;
use orch_shared::wire::{Event, EventKind, now_rfc3339};
use serde_json::Value;

/// Publishes task events (or nothing, when disabled). Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    client: Option<Client>,
    /// Final events go through JetStream (with an acknowledgement) when set.
    js: Option<async_nats::jetstream::Context>,
    /// Whether progress kinds ([`EventKind::is_progress`]) are published.
    progress: bool,
}

impl EventSink {
    /// A sink publishing through `client`.
    pub fn new(client: Client) -> EventSink {
        EventSink {
            client: Some(client),
            js: None,
            progress: true,
        }
    }

    /// A sink that drops everything (`--no-events`).
    pub fn disabled() -> EventSink {
        EventSink {
            client: None,
            js: None,
            progress: false,
        }
    }

    /// Leaves out the progress kinds (`--no-progress-events`): a task then
    /// publishes its `action_start`, its final event and any `fallback` or
    /// `conflict`.
    pub fn without_progress(mut self) -> EventSink {
        self.progress = false;
        self
    }

    /// Sends final events through JetStream, so their stream sequence is known.
    pub fn with_jetstream(mut self, js: async_nats::jetstream::Context) -> EventSink {
        if self.client.is_some() {
            self.js = Some(js);
        }
        self
    }

    /// A task's final event, encoded once in the current trace (deduplicated
    /// per task by its `Nats-Msg-Id`). `None` when events are off or it
    /// cannot be encoded (logged).
    pub fn encode_final(
        &self,
        task_id: &TaskId,
        kind: EventKind,
        details: Value,
    ) -> Option<FinalEvent> {
        self.client.as_ref()?;
        let (headers, payload) = message(task_id, kind, details, Some(&final_event_id(task_id)))?;
        Some(FinalEvent {
            subject: subjects::event(task_id, kind),
            headers,
            payload,
        })
    }

    /// Publishes `event`. With JetStream the returned future resolves to the
    /// stream's acknowledgement; publishing the same event again (unchanged:
    /// same time, trace context and id) is how a lost one is retried.
    pub async fn publish_final(
        &self,
        event: &FinalEvent,
    ) -> Option<async_nats::jetstream::context::PublishAckFuture> {
        let subject = event.subject.clone();
        let (headers, payload) = (event.headers.clone(), event.payload.clone());
        let outcome = match (&self.js, &self.client) {
            (Some(js), _) => (js.publish_with_headers(subject, headers, payload).await)
                .map(Some)
                .map_err(|e| e.to_string()),
            (None, Some(client)) => (client.publish_with_headers(subject, headers, payload).await)
                .map(|()| None)
                .map_err(|e| e.to_string()),
            (None, None) => Ok(None),
        };
        outcome.unwrap_or_else(|error| {
            tracing::warn!(subject = %event.subject, %error, "final event publish failed");
            None
        })
    }

    /// Whether events are published at all.
    pub fn enabled(&self) -> bool {
        self.client.is_some()
    }

    /// Publishes one event. Publishing is fire-and-forget: a failure is logged,
    /// never allowed to fail the task.
    pub async fn emit(&self, task_id: &TaskId, kind: EventKind, details: Value) {
        let Some(client) = &self.client else { return };
        if kind.is_progress() && !self.progress {
            return;
        }
        let Some((headers, payload)) = message(task_id, kind, details, None) else {
            return;
        };
        if let Err(e) = client
            .publish_with_headers(subjects::event(task_id, kind), headers, payload)
            .await
        {
            tracing::warn!(%task_id, kind = kind.as_str(), error = %e, "event publish failed");
        }
    }
}

/// A task's final event, encoded: see [`EventSink::encode_final`].
pub struct FinalEvent {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// An event's headers and JSON body, in the current trace; `msg_id` makes the
/// event stream keep only its first copy. `None` (logged) if it cannot be encoded.
fn message(
    task_id: &TaskId,
    kind: EventKind,
    details: Value,
    msg_id: Option<&str>,
) -> Option<(async_nats::HeaderMap, bytes::Bytes)> {
    let event = Event {
        task_id: task_id.to_string(),
        kind,
        ts: now_rfc3339(),
        trace_id: orch_shared::trace::current_trace_id(),
        details,
    };
    let payload = match Encoding::Json.encode(&event) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%task_id, kind = kind.as_str(), error = %e, "event encoding failed");
            return None;
        }
    };
    let mut headers = Encoding::Json.headers();
    orch_shared::trace::inject(&mut headers);
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    Some((headers, payload))
}

/// The `Nats-Msg-Id` of a task's final event (one per task).
pub fn final_event_id(task_id: &TaskId) -> String {
    format!("{}.final", task_id.as_str())
}

/// The final event of a finished task: `action_failed` when a reasoner was
/// asked for and none answered, else `action_complete`; the details carry the
/// task's stats contribution (the shared stats are built from them).
pub fn final_event(
    result: &orch_shared::wire::OrchestratedResult,
    delta: &crate::stats::StatsDelta,
) -> (EventKind, Value) {
    let failed = result.primary_answer.is_none()
        && result
            .model_results
            .contains_key(&orch_shared::Role::Reasoner);
    let stats = serde_json::to_value(delta).unwrap_or(Value::Null);
    if failed {
        (
            EventKind::ActionFailed,
            serde_json::json!({
                "reason": "every reasoner slot failed",
                "fallback_chain": result.fallback_chain,
                "execution_time_ms": result.execution_time_ms,
                "stats": stats,
            }),
        )
    } else {
        (
            EventKind::ActionComplete,
            serde_json::json!({
                "confidence": result.confidence,
                "models_used": result.models_used,
                "conflicts": result.conflicts.len(),
                "fallbacks": result.fallback_chain.len(),
                "execution_time_ms": result.execution_time_ms,
                "cached": result.cached,
                "stats": stats,
            }),
        )
    }
}
