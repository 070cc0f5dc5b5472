//! The coordinator's spans and metrics, named after the OpenTelemetry
//! conventions (messaging spans for NATS, `error.type` on failures).
//!
//! One trace per task: the `orch.task` span (a child of the submitter's
//! `traceparent` when it sent one) → one span per phase → one span per
//! dispatch attempt, whose context travels to the worker in the request's
//! headers. Fallbacks and conflicts are span events of the task span, which
//! ends with the confidence, models used and fallback count.
//!
//! All three are recorded after the fact: a waiting task holds their ids and
//! start times, not their OpenTelemetry data ([`RecordedSpan`]). The task's
//! trace ([`TaskTrace`]) is the current trace context while the task runs, so
//! its events, replies and JSON log lines carry its trace id, and its log
//! lines become its span events.
//!
//! Metrics go to the global meter provider (a no-op unless OTLP export is on,
//! see [`orch_shared::telemetry`]).

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::trace::{SpanKind, Status};
use orch_shared::trace::{RecordedSpan, SpanEnd, TaskTrace};
use orch_shared::wire::OrchestratedResult;
use orch_shared::{Role, Slot};

/// The trace of one task (the `orch.task` span), continuing the trace in
/// `headers` when they carry one. `subject` is where the task arrived;
/// `durable` says whether it came from the durable intake (a queue consumer)
/// or request/reply (a server). Run the task inside it ([`TaskTrace::run`]).
pub fn task_trace(subject: &str, durable: bool, headers: Option<&HeaderMap>) -> TaskTrace {
    let group = if durable {
        orch_shared::subjects::CONSUMER_TASKS
    } else {
        orch_shared::subjects::COORDINATOR_QUEUE
    };
    TaskTrace::start(
        "orch.task",
        if durable {
            SpanKind::Consumer
        } else {
            SpanKind::Server
        },
        &orch_shared::trace::extract(headers),
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", subject.to_string()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.consumer.group.name", group),
        ],
    )
}

/// Records a finished task on its trace (the running [`TaskTrace`]) and in
/// the metrics.
pub fn task_finished(result: &OrchestratedResult) {
    let success = result.succeeded() || !result.model_results.contains_key(&Role::Reasoner);
    TaskTrace::with_current(|task| {
        if !task.recording() {
            return;
        }
        for kv in [
            KeyValue::new("orch.task_id", result.task_id.clone()),
            KeyValue::new("orch.success", success),
            KeyValue::new("orch.cached", result.cached),
            KeyValue::new("orch.confidence", result.confidence),
            KeyValue::new("orch.models_used", result.models_used.join(",")),
            KeyValue::new("orch.fallback_count", result.fallback_chain.len() as i64),
            KeyValue::new("orch.conflict_count", result.conflicts.len() as i64),
            KeyValue::new("orch.execution_time_ms", result.execution_time_ms),
        ] {
            task.set_attribute(kv);
        }
        if !success {
            task.set_error("all_slots_failed", "every reasoner slot failed");
        }
    });
    let m = metrics();
    let outcome = if result.cached {
        "cached"
    } else if success {
        "ok"
    } else {
        "failed"
    };
    let attrs = [KeyValue::new("orch.outcome", outcome)];
    m.tasks.add(1, &attrs);
    m.task_duration
        .record(result.execution_time_ms / 1000.0, &attrs);
    if !result.conflicts.is_empty() {
        m.conflicts.add(result.conflicts.len() as u64, &[]);
    }
}

/// Ends the span of one phase (a child of the task span, recorded after the
/// fact: see [`RecordedSpan`]).
pub fn phase_finished(span: RecordedSpan, phase: &'static str) {
    span.end(|| SpanEnd {
        name: format!("phase {phase}").into(),
        kind: SpanKind::Internal,
        attributes: vec![KeyValue::new("orch.phase", phase)],
        status: Status::Unset,
        events: Vec::new(),
        dropped_events: 0,
    });
}

/// What the span of one dispatch attempt says: a request (core NATS) or a
/// queued message (pull dispatch) to one slot.
pub struct Attempt<'a> {
    /// The role asked.
    pub role: Role,
    /// The slot asked.
    pub slot: &'a Slot,
    /// Sent to the slot's work queue (pull dispatch) rather than as a request.
    pub queued: bool,
    /// 1-based attempt number within the role's chain.
    pub number: usize,
    /// The time the attempt was given.
    pub budget: Duration,
    /// A hedge (a second attempt racing a slow first one).
    pub hedge: bool,
}

/// Records an attempt's outcome: ends its span (a child of the phase span,
/// recorded after the fact; its context went into the request's headers, so
/// the worker's span is its child) and counts it in the metrics. `error` is
/// the error code and message of a failed attempt.
pub fn attempt_finished(
    span: RecordedSpan,
    a: &Attempt<'_>,
    latency: Duration,
    error: Option<(&str, &str)>,
) {
    let Attempt { role, slot, .. } = *a;
    let outcome = error.map_or("ok", |(code, _)| code);
    span.end(|| {
        let subject = if a.queued {
            orch_shared::subjects::queue(role, slot)
        } else {
            orch_shared::subjects::work(role, slot)
        };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", subject.clone()),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("orch.role", role.as_str()),
            KeyValue::new("orch.slot", slot.to_string()),
            KeyValue::new("orch.attempt", a.number as i64),
            KeyValue::new("orch.budget_ms", a.budget.as_millis() as i64),
            KeyValue::new("orch.hedge", a.hedge),
            KeyValue::new("orch.outcome", outcome.to_string()),
        ];
        let status = match error {
            Some((code, message)) => {
                attributes.push(KeyValue::new("error.type", code.to_string()));
                Status::error(message.to_string())
            }
            None => Status::Unset,
        };
        SpanEnd {
            name: format!("send {subject}").into(),
            kind: if a.queued {
                SpanKind::Producer
            } else {
                SpanKind::Client
            },
            attributes,
            status,
            events: Vec::new(),
            dropped_events: 0,
        }
    });
    let m = metrics();
    let attrs = [
        KeyValue::new("orch.role", role.as_str()),
        KeyValue::new("orch.slot", slot.to_string()),
        KeyValue::new("orch.outcome", outcome.to_string()),
    ];
    m.attempt_duration.record(latency.as_secs_f64(), &attrs);
    if let Some((code, _)) = error
        && code != "hedge_lost"
    {
        m.fallbacks.add(
            1,
            &[
                KeyValue::new("orch.role", role.as_str()),
                KeyValue::new("orch.slot", slot.to_string()),
                KeyValue::new("error.type", code.to_string()),
            ],
        );
    }
}

/// Counts a refused request (bad input, overload, shutdown) by error code.
pub fn request_refused(endpoint: &'static str, code: &str) {
    metrics().errors.add(
        1,
        &[
            KeyValue::new("orch.endpoint", endpoint),
            KeyValue::new("error.type", code.to_string()),
        ],
    );
}

/// Tracks tasks in flight on this coordinator (a gauge).
pub struct InFlight(());

impl InFlight {
    /// Counts one more task in flight until dropped.
    pub fn enter() -> InFlight {
        metrics().in_flight.add(1, &[]);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.add(-1, &[]);
    }
}

/// The coordinator's instruments.
pub struct Metrics {
    /// `orch.task.duration` (s), by outcome.
    pub task_duration: Histogram<f64>,
    /// `orch.attempt.duration` (s), by role, slot and outcome.
    pub attempt_duration: Histogram<f64>,
    /// `orch.tasks`, by outcome.
    pub tasks: Counter<u64>,
    /// `orch.fallbacks`: failed attempts that moved a role on, by role, slot, error.
    pub fallbacks: Counter<u64>,
    /// `orch.conflicts` found by synthesis.
    pub conflicts: Counter<u64>,
    /// `orch.errors`: refused requests, by endpoint and error code.
    pub errors: Counter<u64>,
    /// `orch.tasks.in_flight` on this coordinator.
    pub in_flight: UpDownCounter<i64>,
}

/// Latency buckets in seconds, from 1 ms to 10 minutes.
const SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 600.0,
];

/// The instruments, made on first use from the global meter provider (set up
/// by telemetry init before any task runs).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("orch-coordinator");
        Metrics {
            task_duration: meter
                .f64_histogram("orch.task.duration")
                .with_unit("s")
                .with_description("Wall time of a task, submit to result")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            attempt_duration: meter
                .f64_histogram("orch.attempt.duration")
                .with_unit("s")
                .with_description("Duration of one dispatch attempt to a worker slot")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            tasks: meter
                .u64_counter("orch.tasks")
                .with_description("Finished tasks")
                .build(),
            fallbacks: meter
                .u64_counter("orch.fallbacks")
                .with_description("Failed attempts that moved a role to its next slot")
                .build(),
            conflicts: meter
                .u64_counter("orch.conflicts")
                .with_description("Conflicts found by synthesis")
                .build(),
            errors: meter
                .u64_counter("orch.errors")
                .with_description("Requests refused with a structured error")
                .build(),
            in_flight: meter
                .i64_up_down_counter("orch.tasks.in_flight")
                .with_description("Tasks running on this coordinator")
                .build(),
        }
    })
}
