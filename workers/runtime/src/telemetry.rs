//! A worker's spans and metrics (OpenTelemetry conventions).
//!
//! Each job runs in an `orch.job` span, a child of the coordinator's attempt
//! span (its context arrives in the request's headers), so the provider calls
//! the handler makes land in the task's trace. An in-flight gauge and a job
//! duration histogram go to the global meter provider.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, UpDownCounter};
use orch_shared::{Role, Slot, headers, subjects};
use tracing::Span;

/// The span of one job received on `subject`.
pub(crate) fn job_span(
    message: &async_nats::Message,
    role: Role,
    slot: &Slot,
    queued: bool,
    worker_id: &str,
) -> Span {
    let group = if queued {
        subjects::queue_consumer(role, slot)
    } else {
        subjects::work_queue(role, slot)
    };
    let task_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::ORCH_TASK_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "orch.job",
        otel.name = %format_args!("process {}", message.subject),
        otel.kind = if queued { "consumer" } else { "server" },
        messaging.system = "nats",
        messaging.destination.name = %message.subject,
        messaging.operation.type = "process",
        messaging.consumer.group.name = %group,
        messaging.message.body.size = message.payload.len() as u64,
        orch.role = %role,
        orch.slot = %slot,
        orch.task_id = %task_id,
        orch.worker_id = %worker_id,
    );
    orch_shared::trace::follow(&span, message.headers.as_ref());
    span
}

/// The instruments of a worker process.
pub(crate) struct Metrics {
    in_flight: UpDownCounter<i64>,
    duration: Histogram<f64>,
}

pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("orch-worker");
        Metrics {
            in_flight: meter
                .i64_up_down_counter("orch.worker.in_flight")
                .with_description("Jobs accepted by this worker and not yet answered")
                .build(),
            duration: meter
                .f64_histogram("orch.worker.job.duration")
                .with_unit("s")
                .with_description("Time from receiving a job to answering it")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0, 600.0,
                ])
                .build(),
        }
    })
}

/// Counts a job in flight (per role and slot) until dropped.
pub(crate) struct InFlight {
    attrs: [KeyValue; 2],
}

impl InFlight {
    pub(crate) fn enter(role: Role, slot: &Slot) -> InFlight {
        let attrs = [
            KeyValue::new("orch.role", role.as_str()),
            KeyValue::new("orch.slot", slot.to_string()),
        ];
        metrics().in_flight.add(1, &attrs);
        InFlight { attrs }
    }

    /// Records how the job ended.
    pub(crate) fn finished(&self, span: &Span, took: Duration, error: Option<(&str, &str)>) {
        let outcome = error.map_or("ok", |(code, _)| code);
        if let Some((code, message)) = error {
            orch_shared::trace::record_error(span, code, message);
        }
        let mut attrs = self.attrs.to_vec();
        attrs.push(KeyValue::new("orch.outcome", outcome.to_string()));
        metrics().duration.record(took.as_secs_f64(), &attrs);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.add(-1, &self.attrs);
    }
}
