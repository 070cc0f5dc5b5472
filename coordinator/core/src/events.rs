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
}

impl EventSink {
    /// A sink publishing through `client`.
    pub fn new(client: Client) -> EventSink {
        EventSink {
            client: Some(client),
        }
    }

    /// A sink that drops everything (`--no-events`).
    pub fn disabled() -> EventSink {
        EventSink { client: None }
    }

    /// Publishes one event. Publishing is fire-and-forget: a failure is logged,
    /// never allowed to fail the task.
    pub async fn emit(&self, task_id: &TaskId, kind: EventKind, details: Value) {
        let Some(client) = &self.client else { return };
        let event = Event {
            task_id: task_id.to_string(),
            kind,
            ts: now_rfc3339(),
            trace_id: None,
            details,
        };
        let payload = match Encoding::Json.encode(&event) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%task_id, kind = kind.as_str(), error = %e, "event encoding failed");
                return;
            }
        };
        if let Err(e) = client
            .publish_with_headers(
                subjects::event(task_id, kind),
                Encoding::Json.headers(),
                payload,
            )
            .await
        {
            tracing::warn!(%task_id, kind = kind.as_str(), error = %e, "event publish failed");
        }
    }
}
