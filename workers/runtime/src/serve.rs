//! The serve loop: one NATS micro service per worker process, one endpoint on
//! `orch.v1.work.<role>.<slot>` in the slot's queue group, so N copies share
//! the load and `$SRV.PING/INFO/STATS` discovery works.
//!
//! Per request: decode once at the edge, check the budget, wait (bounded) for
//! a concurrency permit, run the handler under the deadline while sending
//! heartbeats to the reply inbox, and answer with a [`WorkReply`] or a typed
//! error. Nothing a peer sends can panic the loop.
//!
//! Shutdown: stop the endpoint (no new work), answer requests still buffered
//! with `shutting_down` (the coordinator retries them on another copy), let
//! in-flight jobs finish within the drain deadline, cancel the rest, flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use tracing::Span;

use async_nats::service::{self, ServiceExt as _};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use orch_shared::codec::{Encoding, error_reply, header_safe};
use orch_shared::error::ErrorBody;
use orch_shared::shutdown::drain_step;
use orch_shared::wire::{ObjectRef, WorkReply, WorkRequest};
use orch_shared::{ErrorCode, Role, Slot, headers, subjects};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::WorkError;
use crate::handler::{Handler, JobContext, Output};
use crate::metrics::WorkerMetrics;

/// How a worker serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The slot served (part of the subject).
    pub slot: Slot,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs accepted beyond `concurrency` that wait for a permit; more are refused with `overloaded`.
    pub max_queue: usize,
    /// How long in-flight jobs may run after a shutdown signal.
    pub drain_timeout: Duration,
    /// Interval of progress heartbeats to the reply inbox.
    pub heartbeat_interval: Duration,
    /// Budget assumed when a request carries no `Orch-Budget-Ms` header.
    pub default_budget: Duration,
    /// Requests with less budget than this are refused with `deadline_too_short`.
    pub min_budget: Duration,
}

impl ServeConfig {
    /// Defaults for `slot`: see [`crate::args`] for the reasoning behind each value.
    pub fn new(slot: Slot) -> ServeConfig {
        ServeConfig {
            slot,
            concurrency: 4,
            max_queue: 64,
            drain_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            default_budget: Duration::from_secs(60),
            min_budget: Duration::from_millis(1),
        }
    }
}

/// Why serving stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The micro service or its endpoint could not be registered.
    #[error("starting NATS service `{name}`: {message}")]
    Start {
        /// Service name.
        name: String,
        /// Client error.
        message: String,
    },
    /// Subscribing failed.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// Client error.
        source: async_nats::SubscribeError,
    },
    /// The work subscription ended without a shutdown (connection closed for good).
    #[error("the work subscription on {0} ended unexpectedly (NATS connection closed?)")]
    SubscriptionClosed(String),
}

/// What happened during a serve run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// Jobs answered successfully.
    pub completed: u64,
    /// Jobs answered with an error.
    pub failed: u64,
    /// Jobs still running when the drain deadline passed (cancelled).
    pub cancelled_at_drain: usize,
}

pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) cfg: ServeConfig,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) permits: Arc<Semaphore>,
    /// Notified whenever a concurrency slot is given back (the pull loop waits
    /// for a free slot on it); see [`SlotPermit`].
    pub(crate) permit_freed: Arc<tokio::sync::Notify>,
    /// Notified when the pull loop has queued a new pull request.
    pub(crate) pull_issued: tokio::sync::Notify,
    worker_id: String,
    /// Request id → the job's cancellation token, for `orch.v1.cancel.*`.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Parent of every job token; cancelled when the drain deadline passes.
    drain_cancel: CancellationToken,
    draining: AtomicBool,
}

/// Serves `handler` until `shutdown` is cancelled, then drains.
///
/// # Errors
/// When the service cannot start or its subscription dies.
pub async fn serve(
    client: Client,
    handler: Arc<dyn Handler>,
    cfg: ServeConfig,
    shutdown: CancellationToken,
) -> Result<ServeReport, ServeError> {
    let role = handler.role();
    let info = handler.info();
    let metrics = Arc::new(WorkerMetrics::new(cfg.concurrency));
    let name = format!("orch-{}", role.as_str());
    let subject = subjects::work(role, &cfg.slot);
    let metadata: HashMap<String, String> = [
        ("role", role.as_str().to_string()),
        ("slot", cfg.slot.to_string()),
        ("provider", info.provider.clone()),
        ("model", info.model.clone()),
        ("concurrency", cfg.concurrency.to_string()),
        (
            "heartbeat_ms",
            cfg.heartbeat_interval.as_millis().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let stats_metrics = metrics.clone();
    let service = client
        .service_builder()
        .description(format!(
            "orch {} worker, slot {} ({} {})",
            role, cfg.slot, info.provider, info.model
        ))
        .metadata(metadata.clone())
        .queue_group(subjects::work_queue(role, &cfg.slot))
        .stats_handler(move |_endpoint, _stats| stats_metrics.snapshot())
        .start(&name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServeError::Start {
            name: name.clone(),
            message: e.to_string(),
        })?;
    let worker_id = service.info().await.id;
    let mut endpoint = service
        .endpoint_builder()
        .name("work")
        .metadata(metadata)
        .add(&subject)
        .await
        .map_err(|e| ServeError::Start {
            name: name.clone(),
            message: e.to_string(),
        })?;
    let cancel_subject = subjects::cancel(role, &cfg.slot);
    let mut cancels = client
        .subscribe(cancel_subject.clone())
        .await
        .map_err(|source| ServeError::Subscribe {
            subject: cancel_subject,
            source,
        })?;

    let shared = Arc::new(Shared {
        client: client.clone(),
        handler,
        permits: Arc::new(Semaphore::new(cfg.concurrency)),
        permit_freed: Arc::new(tokio::sync::Notify::new()),
        pull_issued: tokio::sync::Notify::new(),
        cfg,
        metrics: metrics.clone(),
        worker_id: worker_id.clone(),
        cancels: Mutex::new(HashMap::new()),
        drain_cancel: CancellationToken::new(),
        draining: AtomicBool::new(false),
    });
    tracing::info!(
        %subject, worker_id, provider = %info.provider, model = %info.model,
        concurrency = shared.cfg.concurrency, "worker serving"
    );

    let tracker = TaskTracker::new();
    let pull_stop = CancellationToken::new();
    let pull = tokio::spawn(crate::queue::run(
        shared.clone(),
        tracker.clone(),
        pull_stop.clone(),
    ));
    let mut unexpected_end = false;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(msg) = cancels.next() => {
                if let Ok(id) = std::str::from_utf8(&msg.payload)
                    && let Some(token) = shared.cancels.lock().ok().and_then(|m| m.get(id.trim()).cloned())
                {
                    tracing::debug!(request_id = id, "cancel received");
                    token.cancel();
                }
            }
            next = endpoint.next() => match next {
                Some(request) => accept(&shared, &tracker, Job { origin: Origin::Micro(request), permit: None }).await,
                None => { unexpected_end = true; break; }
            }
        }
    }

    // ---- drain ----
    shared.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        in_flight = metrics.in_flight(),
        "draining: no new work accepted"
    );
    pull_stop.cancel();
    if let Some(Err(e)) = drain_step(&client, "unsubscribe", endpoint.stop()).await {
        tracing::warn!(error = %e, "unsubscribing the work endpoint failed");
    }
    // Requests already buffered locally: tell the coordinator to go elsewhere at once.
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(100), endpoint.next()).await
    {
        let enc = Encoding::from_headers(request.message.headers.as_ref()).unwrap_or_default();
        let err = WorkError::new(ErrorCode::ShuttingDown, "worker is shutting down");
        let job = Job {
            origin: Origin::Micro(request),
            permit: None,
        };
        respond_err(&shared, &job, enc, &err, true).await;
    }
    if let Some(Err(e)) = drain_step(&client, "stop service", service.stop()).await {
        tracing::debug!(error = %e, "stopping the micro service");
    }
    // The pull loop answers what its last pull brings with `shutting_down`;
    // with NATS gone it may be stuck in a fetch, and is aborted.
    let pull_abort = pull.abort_handle();
    if drain_step(&client, "stop pulling", pull).await.is_none() {
        pull_abort.abort();
    }
    tracker.close();
    let mut cancelled_at_drain = 0;
    if tokio::time::timeout(shared.cfg.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        cancelled_at_drain = metrics.in_flight();
        tracing::warn!(
            jobs = cancelled_at_drain,
            "drain deadline passed; cancelling the remaining jobs"
        );
        shared.drain_cancel.cancel();
        // Cancelled jobs answer `shutting_down` right away; give them a moment to publish.
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    if let Some(Err(e)) = drain_step(&client, "flush", client.flush()).await {
        tracing::warn!(error = %e, "flushing replies to NATS failed");
    }
    let report = ServeReport {
        completed: metrics.completed(),
        failed: metrics.failed(),
        cancelled_at_drain,
    };
    tracing::info!(?report, "worker drained");
    if unexpected_end {
        return Err(ServeError::SubscriptionClosed(subjects::work(
            shared.handler.role(),
            &shared.cfg.slot,
        )));
    }
    Ok(report)
}

/// Where a job came from, which decides how it is answered.
pub(crate) enum Origin {
    /// A request on the slot's subject (queue group): answered through the micro
    /// service, so `$SRV.STATS` counts it.
    Micro(service::Request),
    /// A message pulled from the `ORCH_WORK` queue: answered on its `Orch-Reply-To` inbox.
    Queued {
        /// The message (headers and payload).
        message: async_nats::Message,
        /// The coordinator's inbox.
        reply: async_nats::Subject,
        /// When JetStream received it: the budget counts from then.
        published: Instant,
    },
}

/// A concurrency slot that wakes the pull loop when it is given back, however
/// its job ends: run to the end, refused at admission, dropped at shutdown.
/// (A bare permit freed on a refusal left the loop waiting for its 50 ms tick.)
pub(crate) struct SlotPermit {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<tokio::sync::Notify>,
}

impl SlotPermit {
    /// A free slot of `permits`, if there is one; `freed` is woken when it is given back.
    pub(crate) fn try_take(
        permits: &Arc<Semaphore>,
        freed: &Arc<tokio::sync::Notify>,
    ) -> Option<SlotPermit> {
        let permit = permits.clone().try_acquire_owned().ok()?;
        Some(SlotPermit::holding(permit, freed))
    }

    /// Waits for a free slot; `None` once the semaphore is closed.
    async fn acquire(shared: &Shared) -> Option<SlotPermit> {
        let permit = shared.permits.clone().acquire_owned().await.ok()?;
        Some(SlotPermit::holding(permit, &shared.permit_freed))
    }

    fn holding(permit: OwnedSemaphorePermit, freed: &Arc<tokio::sync::Notify>) -> SlotPermit {
        SlotPermit {
            permit: Some(permit),
            freed: freed.clone(),
        }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        // Free first, so a woken pull loop sees the slot.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// One unit of work and how to answer it.
pub(crate) struct Job {
    pub(crate) origin: Origin,
    /// A concurrency slot taken when the job was pulled, so the pull loop
    /// never asks for more than the worker's free slots (else it holds the
    /// job from elsewhere).
    pub(crate) permit: Option<SlotPermit>,
}

impl Job {
    pub(crate) fn message(&self) -> &async_nats::Message {
        match &self.origin {
            Origin::Micro(r) => &r.message,
            Origin::Queued { message, .. } => message,
        }
    }

    fn reply(&self) -> Option<async_nats::Subject> {
        match &self.origin {
            Origin::Micro(r) => r.message.reply.clone(),
            Origin::Queued { reply, .. } => Some(reply.clone()),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.message()
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// When the budget started counting.
    fn received(&self, now: Instant) -> Instant {
        match &self.origin {
            Origin::Micro(_) => now,
            Origin::Queued { published, .. } => *published,
        }
    }

    fn queued(&self) -> bool {
        matches!(self.origin, Origin::Queued { .. })
    }

    async fn send(&self, shared: &Shared, outcome: Result<Bytes, WorkError>, h: HeaderMap) -> bool {
        // A reply the server would refuse (over its max payload) becomes an error
        // reply that fits, so the caller hears at once instead of at its timeout.
        let max_payload = shared.client.server_info().max_payload;
        let outcome = match outcome {
            Ok(payload) if payload.len() + REPLY_HEADER_ROOM > max_payload => {
                let err = WorkError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the reply is {} bytes, over the server's max payload of {max_payload} bytes",
                        payload.len()
                    ),
                );
                tracing::warn!(error = %err, "reply replaced by an error");
                Err(err)
            }
            other => other,
        };
        let was_ok = outcome.is_ok();
        if let Err(e) = self.publish(shared, outcome, h.clone()).await {
            tracing::warn!(error = %e, "publishing a reply failed");
            if was_ok {
                // Tell the caller why rather than leave it waiting.
                let err = WorkError::internal(format!("the reply could not be published: {e}"));
                if let Err(e) = self.publish(shared, Err(err), h).await {
                    tracing::warn!(error = %e, "publishing the error reply failed too");
                }
            }
            return false;
        }
        was_ok
    }

    /// Publishes a result, or an error reply: the `Orch-Error` and NATS micro
    /// error headers plus the same `{"error": {code, message}}` body (in the
    /// request's encoding) as the coordinator's errors. async-nats' own error
    /// responses have an empty body, so errors are published as payloads; the
    /// worker's `$SRV` stats count them in `failed` and `errors_by_code`.
    async fn publish(
        &self,
        shared: &Shared,
        outcome: Result<Bytes, WorkError>,
        mut h: HeaderMap,
    ) -> Result<(), String> {
        let payload = match outcome {
            Ok(p) => p,
            Err(err) => {
                let enc = Encoding::from_headers(Some(&h)).unwrap_or_default();
                let body = ErrorBody::new(err.code, err.message);
                let (eh, payload) = error_reply(enc, &body);
                for (name, values) in eh.iter() {
                    for v in values {
                        h.insert(name.clone(), v.clone());
                    }
                }
                payload
            }
        };
        match &self.origin {
            Origin::Micro(r) => r
                .respond_with_headers(Ok(payload), h)
                .await
                .map_err(|e| e.to_string()),
            Origin::Queued { reply, .. } => shared
                .client
                .publish_with_headers(reply.clone(), h, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Room kept for a reply's headers (encoding, worker id, trace context) when
/// its payload is checked against the server's max payload.
const REPLY_HEADER_ROOM: usize = 1024;

/// Admission: refuse at once when the queue is full, otherwise hand the job to a task.
pub(crate) async fn accept(shared: &Arc<Shared>, tracker: &TaskTracker, job: Job) {
    let enc = match Encoding::from_headers(job.message().headers.as_ref()) {
        Ok(enc) => enc,
        Err(e) => {
            let err = WorkError::new(e.code, e.message);
            respond_err(shared, &job, Encoding::Json, &err, true).await;
            return;
        }
    };
    if job.reply().is_none() {
        tracing::warn!(
            subject = %job.message().subject,
            "work request without a reply subject dropped (use request/reply)"
        );
        shared.metrics.record_err(ErrorCode::InvalidRequest, true);
        return;
    }
    let limit = shared.cfg.concurrency + shared.cfg.max_queue;
    if shared.metrics.accepted.load(Ordering::Relaxed) >= limit {
        let err = WorkError::new(
            ErrorCode::Overloaded,
            format!("worker at capacity ({limit} jobs accepted)"),
        );
        respond_err(shared, &job, enc, &err, true).await;
        return;
    }
    shared.metrics.accepted.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    let role = shared.handler.role();
    let span = crate::telemetry::job_span(
        job.message(),
        role,
        &shared.cfg.slot,
        job.queued(),
        &shared.worker_id,
    );
    let job_span = span.clone();
    // The job is boxed before spawning: the task holds it for the job's life.
    tracker.spawn(serve_job(shared, Box::new(job), enc, job_span).instrument(span));
}

/// Runs one accepted job and answers it. This future is what a worker holds
/// per job in flight (thousands at once on a worker calling a remote model),
/// so its arguments come boxed and every large step is boxed.
async fn serve_job(shared: Arc<Shared>, mut job: Box<Job>, enc: Encoding, job_span: Span) {
    let role = shared.handler.role();
    let in_flight = crate::telemetry::InFlight::enter(role, &shared.cfg.slot);
    // A pulled job's slot stays here (run_job does not take another)
    // and is given back below, in order with the next pull.
    let pulled = job.permit.take();
    let received = job.received(Instant::now());
    let result = Box::pin(run_job(&shared, &job, enc, received, pulled.is_some())).await;
    in_flight.finished(
        &job_span,
        received.elapsed(),
        result
            .as_ref()
            .err()
            .map(|e| (e.code.as_str(), e.message.as_str())),
    );
    if let Some(slot) = pulled {
        // Free again: let the pull loop ask for more before this reply goes out.
        let issued = shared.pull_issued.notified();
        drop(slot);
        let _ = tokio::time::timeout(Duration::from_millis(50), issued).await;
    }
    match result {
        Ok(reply) => Box::pin(respond_ok(&shared, &job, enc, &reply)).await,
        Err(err) => Box::pin(respond_err(&shared, &job, enc, &err, false)).await,
    }
    shared.metrics.accepted.fetch_sub(1, Ordering::Relaxed);
}

/// Decrements `running` however the job ends.
struct RunningGuard<'a>(&'a WorkerMetrics);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes the job's cancel registration however the job ends.
struct CancelRegistration<'a> {
    shared: &'a Shared,
    id: Option<String>,
}

impl Drop for CancelRegistration<'_> {
    fn drop(&mut self) {
        if let (Some(id), Ok(mut map)) = (self.id.take(), self.shared.cancels.lock()) {
            map.remove(&id);
        }
    }
}

async fn run_job(
    shared: &Shared,
    job: &Job,
    enc: Encoding,
    received: Instant,
    holds_slot: bool,
) -> Result<WorkReply, WorkError> {
    let budget = job_budget(job.header(headers::ORCH_BUDGET_MS), &shared.cfg)?;
    // A budget beyond what `Instant` can represent is as good as none.
    let deadline = received
        .checked_add(budget)
        .unwrap_or_else(|| received + Duration::from_secs(86_400 * 365));
    if deadline <= Instant::now() {
        return Err(WorkError::timed_out(
            "the budget ran out while the job was queued",
        ));
    }
    let work = Box::new(decode_work(
        enc,
        &job.message().payload,
        shared.handler.role(),
        &shared.cfg.slot,
    )?);

    let token = shared.drain_cancel.child_token();
    let request_id = job.header(headers::ORCH_REQUEST_ID).map(str::to_string);
    let _registration = CancelRegistration {
        shared,
        id: request_id.clone(),
    };
    if let (Some(id), Ok(mut map)) = (request_id, shared.cancels.lock()) {
        map.insert(id, token.clone());
    }

    let task_id = work.task_id.clone();
    // Boxed: an async fn keeps a by-value argument twice in its state, and
    // this one lives as long as the model call.
    let work = Box::pin(do_work(shared, work, holds_slot, deadline, token.clone()));
    let output = with_heartbeats(shared, job, work, deadline, &token).await;
    let elapsed_ms = received.elapsed().as_secs_f64() * 1000.0;
    match &output {
        Ok(_) => tracing::debug!(%task_id, elapsed_ms, "job done"),
        Err(e) => {
            tracing::info!(%task_id, elapsed_ms, code = %e.code, error = %e.message, "job failed")
        }
    }
    let out = output?;
    Ok(WorkReply {
        provider: out.provider,
        model: out.model,
        content: out.content,
        usage: out.usage,
        worker_id: shared.worker_id.clone(),
        elapsed_ms,
    })
}

/// The job's budget: the `Orch-Budget-Ms` header, else the configured default.
///
/// # Errors
/// `invalid_request` when the header is not an integer, `deadline_too_short`
/// when the budget is below this worker's minimum.
pub(crate) fn job_budget(header: Option<&str>, cfg: &ServeConfig) -> Result<Duration, WorkError> {
    let budget = match header {
        None => cfg.default_budget,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| {
                WorkError::invalid_request(format!(
                    "{} header must be an integer, got `{}`",
                    headers::ORCH_BUDGET_MS,
                    header_safe(v)
                ))
            })?,
    };
    if budget < cfg.min_budget {
        return Err(WorkError::new(
            ErrorCode::DeadlineTooShort,
            format!(
                "budget {} ms is below this worker's minimum of {} ms",
                budget.as_millis(),
                cfg.min_budget.as_millis()
            ),
        ));
    }
    Ok(budget)
}

/// Decodes a work request and checks that it is for this worker's role and slot.
///
/// # Errors
/// The decode error's code (`malformed`, `invalid_request`), or
/// `invalid_request` for a request meant for another role or slot.
pub(crate) fn decode_work(
    enc: Encoding,
    payload: &[u8],
    role: Role,
    slot: &Slot,
) -> Result<WorkRequest, WorkError> {
    let work: WorkRequest = enc
        .decode(payload)
        .map_err(|e| WorkError::new(e.code, e.message))?;
    if work.role != role || work.slot != *slot {
        return Err(WorkError::invalid_request(format!(
            "request for {}/{} reached a {}/{} worker",
            work.role, work.slot, role, slot
        )));
    }
    Ok(work)
}

/// Largest screenshot fetched from the object store.
const MAX_REF_BYTES: usize = 64 * 1024 * 1024;

/// Reads a screenshot uploaded to the object store (large screenshots do not
/// travel inline; see `orch_shared::wire::ObjectRef`).
async fn fetch_screenshot(shared: &Shared, r: &ObjectRef) -> Result<Vec<u8>, WorkError> {
    use tokio::io::AsyncReadExt as _;
    if r.bucket != subjects::OBJ_SCREENSHOTS {
        return Err(WorkError::invalid_request(format!(
            "screenshot_ref bucket must be {}",
            subjects::OBJ_SCREENSHOTS
        )));
    }
    let js = async_nats::jetstream::new(shared.client.clone());
    let store = js.get_object_store(&r.bucket).await.map_err(|e| {
        WorkError::new(
            ErrorCode::Unavailable,
            format!("opening object store {}: {e}", r.bucket),
        )
    })?;
    let object = store
        .get(&r.name)
        .await
        .map_err(|e| WorkError::invalid_input(format!("screenshot `{}` not found: {e}", r.name)))?;
    let mut out = Vec::new();
    object
        .take(MAX_REF_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| {
            WorkError::new(
                ErrorCode::Unavailable,
                format!("reading screenshot `{}`: {e}", r.name),
            )
        })?;
    if out.len() > MAX_REF_BYTES {
        return Err(WorkError::new(
            ErrorCode::PayloadTooLarge,
            format!("screenshot `{}` exceeds {MAX_REF_BYTES} bytes", r.name),
        ));
    }
    Ok(out)
}

/// The job itself: a concurrency slot (unless it came with one), the
/// referenced screenshot, the handler.
async fn do_work(
    shared: &Shared,
    mut work: Box<WorkRequest>,
    holds_slot: bool,
    deadline: Instant,
    cancel: CancellationToken,
) -> Result<Output, WorkError> {
    // Request/reply jobs wait here for a slot; a pulled job came with one.
    let _permit = if holds_slot {
        None
    } else {
        let slot = SlotPermit::acquire(shared).await;
        Some(
            slot.ok_or_else(|| WorkError::new(ErrorCode::ShuttingDown, "worker is shutting down"))?,
        )
    };
    shared.metrics.running.fetch_add(1, Ordering::Relaxed);
    let _running = RunningGuard(&shared.metrics);
    if work.screenshot.is_none()
        && let Some(r) = work.screenshot_ref.take()
    {
        // Boxed: the object store's futures are large, and a job future
        // lives as long as its model call (thousands at once on a busy worker).
        let fetch = Box::pin(fetch_screenshot(shared, &r));
        let bytes = tokio::time::timeout_at(deadline.into(), fetch)
            .await
            .map_err(|_| {
                WorkError::timed_out("the budget ran out while fetching the screenshot")
            })??;
        work.screenshot = Some(bytes.into());
    }
    let handle_started = Instant::now();
    let ctx = JobContext { deadline, cancel };
    let out = shared.handler.handle(*work, ctx).await;
    if out.is_ok() {
        shared.metrics.record_latency(handle_started.elapsed());
    }
    out
}

/// Runs `job` to completion, deadline or cancellation, publishing a heartbeat
/// to the reply inbox every interval meanwhile (the coordinator treats silence
/// longer than a few intervals as a dead worker). A queued job announces
/// itself at once, so the coordinator knows a worker took it.
async fn with_heartbeats<F>(
    shared: &Shared,
    job: &Job,
    work: F,
    deadline: Instant,
    token: &CancellationToken,
) -> Result<Output, WorkError>
where
    F: std::future::Future<Output = Result<Output, WorkError>>,
{
    let interval = shared.cfg.heartbeat_interval;
    let first = if job.queued() {
        Instant::now()
    } else {
        Instant::now() + interval
    };
    let mut ticker = tokio::time::interval_at(first.into(), interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reply = job.reply();
    let mut hb_headers = HeaderMap::new();
    hb_headers.insert(headers::ORCH_KIND, headers::KIND_HEARTBEAT);
    hb_headers.insert(headers::ORCH_WORKER_ID, shared.worker_id.as_str());
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = token.cancelled() => {
                return Err(if shared.drain_cancel.is_cancelled() {
                    WorkError::new(ErrorCode::ShuttingDown, "worker shut down before the job finished")
                } else {
                    WorkError::new(ErrorCode::Cancelled, "cancelled by the coordinator")
                });
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(WorkError::timed_out("the job's budget ran out"));
            }
            _ = ticker.tick() => {
                if let Some(reply) = &reply
                    && let Err(e) = Box::pin(shared.client.publish_with_headers(
                        reply.clone(),
                        hb_headers.clone(),
                        Bytes::new(),
                    ))
                    .await
                {
                    tracing::debug!(error = %e, "heartbeat publish failed");
                }
            }
        }
    }
}

async fn respond_ok(shared: &Shared, job: &Job, enc: Encoding, reply: &WorkReply) {
    let payload = match enc.encode(reply) {
        Ok(p) => p,
        Err(e) => {
            let err = WorkError::internal(format!("encoding the reply: {e}"));
            respond_err(shared, job, enc, &err, false).await;
            return;
        }
    };
    let mut h = enc.headers();
    h.insert(headers::ORCH_WORKER_ID, shared.worker_id.as_str());
    if job.send(shared, Ok(payload), h).await {
        shared.metrics.record_ok();
    } else {
        shared.metrics.record_err(ErrorCode::PayloadTooLarge, false);
    }
}

pub(crate) async fn respond_err(
    shared: &Shared,
    job: &Job,
    enc: Encoding,
    err: &WorkError,
    rejected: bool,
) {
    shared.metrics.record_err(err.code, rejected);
    if job.reply().is_none() {
        return;
    }
    let mut h = enc.headers();
    h.insert(headers::ORCH_ERROR, err.code.as_str());
    h.insert(headers::ORCH_WORKER_ID, shared.worker_id.as_str());
    job.send(shared, Err(err.clone()), h).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn giving_back_a_slot_frees_it_and_wakes_the_pull_loop() {
        let permits = Arc::new(Semaphore::new(1));
        let freed = Arc::new(tokio::sync::Notify::new());
        let slot = SlotPermit::try_take(&permits, &freed).expect("a free slot");
        assert!(SlotPermit::try_take(&permits, &freed).is_none());
        let woken = freed.notified();
        // E.g. a pulled job refused at admission: dropped with its slot.
        drop(slot);
        assert_eq!(permits.available_permits(), 1);
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the pull loop's waiter is woken");
    }

    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A worker holds these futures for every job in flight (a remote model
    /// call can take a minute): by-value arguments are stored twice and large
    /// sub-futures (the object store's, a publish) inline their whole state,
    /// which once made a job 14 KB. Fails if a change like that comes back.
    #[test]
    fn a_job_in_flight_stays_small() {
        type S = &'static Shared;
        let job = future_size(|(s, j): (Arc<Shared>, Box<Job>)| {
            serve_job(s, j, Encoding::Json, Span::none())
        });
        let run = future_size(|(s, j): (S, &'static Job)| {
            run_job(s, j, Encoding::Json, Instant::now(), false)
        });
        let work = future_size(|(s, w): (S, Box<WorkRequest>)| {
            do_work(s, w, false, Instant::now(), CancellationToken::new())
        });
        eprintln!("serve_job {job} B, run_job {run} B, do_work {work} B");
        assert!(job <= 1024, "serve_job future is {job} bytes");
        assert!(run <= 1280, "run_job future is {run} bytes");
        assert!(work <= 640, "do_work future is {work} bytes");
    }
}
