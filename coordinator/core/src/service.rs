//! The coordinator as a NATS micro service (`orch-coordinator`): endpoints
//! `orch.v1.submit`, `orch.v1.stats` and `orch.v1.results.get` in the
//! `orch-coordinator` queue group, so any number of coordinators share the
//! load; plus, with JetStream, the durable intake (see [`crate::intake`]).
//!
//! Admission is bounded (`--max-in-flight`); beyond it a submit is refused
//! with `overloaded` at once. Every bad request gets a structured error reply
//! and a log line; the loop never stops for one.
//!
//! Shutdown: stop the endpoints, refuse what is still buffered with
//! `shutting_down`, let running tasks finish within the drain deadline, then
//! cancel what is left (those tasks still get a reply, with the failed
//! attempts recorded), flush, stop the reply router.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Client;
use async_nats::service::{self, ServiceExt as _};
use futures::StreamExt as _;
use orch_shared::codec::{Encoding, error_reply};
use orch_shared::config::NatsHealth;
use orch_shared::wire::{OrchestratedResult, ResultQuery, StatsReport, SubmitRequest};
use orch_shared::{ErrorBody, ErrorCode, Role, TaskId, subjects};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CoordinatorConfig;
use crate::dispatch::Dispatcher;
use crate::durable::{Durable, SetupError};
use crate::events::{EventSink, final_event};
use crate::pipeline::{Pipeline, TaskSpec};
use crate::results::{EncodedResult, Finish, ResultStore, Stored};
use crate::stats::{Stats, StatsDelta};
use orch_shared::reconnect::Backoff;

/// Longest a stats request waits for this coordinator's own final events to be folded in.
const STATS_SETTLE: Duration = Duration::from_secs(2);
/// Longest a final event is published again while the event stream does not
/// acknowledge it (a cluster electing a stream leader takes seconds). Also
/// kept within half the stream's duplicate window, so a retry is never stored twice.
const FINAL_EVENT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Pause before the first republish of an unacknowledged final event (doubling to [`RETRY_PAUSE_MAX`]).
const FINAL_EVENT_FIRST_RETRY: Duration = Duration::from_millis(250);

/// Longest a finished task's result is written again while the results
/// bucket fails (a cluster electing a new leader for it after losing a node
/// takes seconds). Writing it again is far cheaper than what giving up costs:
/// a durable task is redelivered and run again, workers and models included
/// (its progress acknowledgements keep it from being redelivered meanwhile);
/// a request/reply task's caller has its reply, but `orch result` would show
/// the task pending until its marker expires. The task keeps its place in
/// flight while it is retried, so an outage slows intake instead of piling up
/// results in memory.
const STORE_RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause before the first retry of a failed result write (doubling to [`RETRY_PAUSE_MAX`]).
const STORE_FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between two writes of a final event or a result.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Stores a finished task's result, writing it again with backoff for up to
/// [`STORE_RETRY_FOR`] while the bucket fails.
async fn finish_retrying(
    store: &ResultStore,
    encoded: &EncodedResult,
    pending_revision: Option<u64>,
) -> Result<Finish, crate::results::StoreError> {
    let id = encoded.task_id();
    let mut backoff = Backoff::new(STORE_FIRST_RETRY, RETRY_PAUSE_MAX).for_at_most(STORE_RETRY_FOR);
    loop {
        match store.finish(encoded, pending_revision).await {
            Ok(f) => {
                if backoff.retries() > 0 {
                    tracing::info!(task_id = %id, retries = backoff.retries(), "task's result stored after retrying");
                }
                return Ok(f);
            }
            Err(e) if backoff.may_retry() => {
                // One warning per task; the retries themselves at debug.
                if backoff.retries() == 0 {
                    tracing::warn!(task_id = %id, error = %e, retry_for = ?STORE_RETRY_FOR, "storing a task's result failed; retrying");
                } else {
                    tracing::debug!(task_id = %id, error = %e, "storing a task's result failed again");
                }
                backoff.pause().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Outstanding final-event acknowledgements.
#[derive(Default)]
struct Finals {
    pending: std::sync::atomic::AtomicUsize,
    /// Per final kind (see [`crate::projection::FINAL_KINDS`]): the highest
    /// sequence of one this coordinator published.
    last_seq: [std::sync::atomic::AtomicU64; crate::projection::FINAL_KINDS.len()],
    changed: tokio::sync::Notify,
}

/// Why the coordinator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A subscription failed.
    #[error("subscribing to {subject}: {message}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// Client error.
        message: String,
    },
    /// An endpoint's subscription ended without a shutdown.
    #[error("the {0} endpoint ended unexpectedly (NATS connection closed?)")]
    EndpointClosed(&'static str),
    /// JetStream could not be set up.
    #[error(transparent)]
    JetStream(#[from] SetupError),
    /// The stats projection could not start.
    #[error("stats projection: {0}")]
    Projection(String),
}

/// A running coordinator (library form: tests and the benchmark drive it in-process).
pub struct Coordinator {
    client: Client,
    config: Arc<CoordinatorConfig>,
    pipeline: Pipeline,
    dispatcher: Dispatcher,
    events: EventSink,
    stats: Arc<Stats>,
    /// Stats come from the event stream (same numbers on every coordinator).
    shared_stats: bool,
    durable: Option<Durable>,
    results: Option<ResultStore>,
    /// Final events this coordinator published whose acknowledgement is outstanding,
    /// and the highest acknowledged sequence: stats wait for both (read-your-writes).
    finals: Arc<Finals>,
    progress: Arc<crate::projection::Progress>,
    permits: Arc<Semaphore>,
    background: TaskTracker,
    stop_background: CancellationToken,
    health: Option<Arc<NatsHealth>>,
}

impl Coordinator {
    /// Starts the reply router; does not serve yet (see [`serve`]).
    ///
    /// # Errors
    /// When the reply inbox cannot be subscribed.
    pub async fn start(
        client: Client,
        config: CoordinatorConfig,
    ) -> Result<Coordinator, ServeError> {
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();
        let dispatcher = Dispatcher::start(client.clone(), &background, stop_background.clone())
            .await
            .map_err(|e| ServeError::Subscribe {
                subject: "_INBOX.*".into(),
                message: e.to_string(),
            })?;
        let config = Arc::new(config);
        let durable = match &config.durable {
            Some(cfg) => Some(Durable::setup(&client, cfg).await?),
            None => None,
        };
        let mut events = match (config.events, config.progress_events) {
            (false, _) => EventSink::disabled(),
            (true, true) => EventSink::new(client.clone()),
            (true, false) => EventSink::new(client.clone()).without_progress(),
        };
        if let Some(d) = &durable {
            events = events.with_jetstream(d.js.clone());
        }
        let pipeline = Pipeline::new(dispatcher.clone(), events.clone(), config.clone());
        let stats = Arc::new(Stats::default());
        let progress = Arc::new(crate::projection::Progress::default());
        let shared_stats = durable.is_some() && config.events;
        if let (true, Some(d)) = (shared_stats, &durable) {
            crate::projection::start(
                d,
                stats.clone(),
                progress.clone(),
                &background,
                stop_background.clone(),
            )
            .await
            .map_err(ServeError::Projection)?;
        }
        let results = durable.as_ref().map(|d| {
            let (kv, js) = (d.results.clone(), d.js.clone());
            ResultStore::new(kv, js, client.clone(), dispatcher.instance())
        });
        Ok(Coordinator {
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            client,
            config,
            pipeline,
            dispatcher,
            events,
            stats,
            shared_stats,
            durable,
            results,
            finals: Arc::new(Finals::default()),
            progress,
            background,
            stop_background,
            health: None,
        })
    }

    /// Attaches connection health counters (its slow-consumer events show up in stats).
    pub fn with_health(mut self, health: Arc<NatsHealth>) -> Coordinator {
        self.health = Some(health);
        self
    }

    /// Stops the background work (reply router, stats projection) of a
    /// coordinator used in-process without [`serve`], which does this itself.
    pub fn shutdown(&self) {
        self.stop_background.cancel();
    }

    /// The configuration in use.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Free task permits (durable intake pulls at most this many).
    pub fn free_permits(&self) -> usize {
        self.permits.available_permits()
    }

    /// Resolves once a task permit is free (at once if one is), without
    /// taking it: durable intake waits here rather than polling.
    pub async fn permit_freed(&self) {
        // The permit goes straight back; a closed semaphore (never closed
        // here) would also end the wait.
        let _ = self.permits.acquire().await;
    }

    /// A task permit, if one is free.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Validates a request and applies defaults.
    ///
    /// # Errors
    /// The error body to reply with.
    pub fn spec(&self, request: SubmitRequest) -> Result<TaskSpec, ErrorBody> {
        TaskSpec::from_request(request, &self.config)
    }

    /// Checks what only the server can check: a referenced screenshot exists and fits.
    async fn check_refs(&self, spec: &TaskSpec) -> Result<(), ErrorBody> {
        let Some(r) = &spec.screenshot_ref else {
            return Ok(());
        };
        let Some(d) = &self.durable else {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`screenshot_ref` needs JetStream, and this coordinator runs without it",
            ));
        };
        match d.screenshots.info(&r.name).await {
            Ok(info) if info.size as u64 > self.config.limits.max_screenshot_ref_bytes => {
                Err(ErrorBody::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "screenshot `{}` is {} bytes; the limit is {}",
                        r.name, info.size, self.config.limits.max_screenshot_ref_bytes
                    ),
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!(
                    "screenshot `{}` not found in `{}`: {e}",
                    r.name,
                    subjects::OBJ_SCREENSHOTS
                ),
            )),
        }
    }

    /// Runs a task (or serves it from the cache) and records its stats when
    /// they are local. Does not publish the final event.
    ///
    /// The spec comes boxed. Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    fn run(&self, spec: Box<TaskSpec>) -> impl Future<Output = OrchestratedResult> + Send {
        async move {
            let started = std::time::Instant::now();
            let cache = self
                .durable
                .as_ref()
                .and_then(|d| d.cache.as_ref())
                .filter(|_| spec.use_cache);
            let key = cache
                .as_ref()
                .map(|_| crate::cache::key(&spec, &self.config));
            if let (Some(store), Some(key)) = (cache, &key)
                && let Some(hit) = Box::pin(self.cached(store, key, &spec, started)).await
            {
                return hit;
            }
            let _in_flight = crate::telemetry::InFlight::enter();
            let result = finished(Box::pin(self.pipeline.run(&spec)).await);
            match cache.zip(key) {
                // The result moves into the store's box: kept here (or borrowed
                // here at all), it would size this state, which every waiting
                // task holds, for its last step.
                Some((store, key)) => Box::pin(cached_too(store, key, result)).await,
                None => result,
            }
        }
    }

    /// The cached result for `key`, made this task's.
    async fn cached(
        &self,
        store: &async_nats::jetstream::kv::Store,
        key: &str,
        spec: &TaskSpec,
        started: std::time::Instant,
    ) -> Option<OrchestratedResult> {
        let mut hit = Box::pin(crate::cache::lookup(store, key)).await?;
        hit.task_id = spec.task_id.to_string();
        hit.task = spec.task.clone();
        hit.cached = true;
        hit.execution_time_ms = started.elapsed().as_secs_f64() * 1000.0;
        hit.trace_id = orch_shared::trace::current_trace_id();
        crate::telemetry::task_finished(&hit);
        Box::pin(self.events.emit(
            &spec.task_id,
            orch_shared::wire::EventKind::ActionStart,
            serde_json::json!({"task": spec.task, "cached": true}),
        ))
        .await;
        Some(hit)
    }

    /// Publishes the task's final event (deduplicated by task id) and, for
    /// local stats, counts it.
    async fn finish_event(&self, result: &OrchestratedResult) {
        let delta = StatsDelta::of(result);
        if !self.shared_stats {
            self.stats.apply(&delta);
        }
        let Ok(id) = result.task_id.parse::<TaskId>() else {
            return;
        };
        let (kind, details) = final_event(result, &delta);
        let Some(event) = self.events.encode_final(&id, kind, details) else {
            return;
        };
        let Some(ack) = Box::pin(self.events.publish_final(&event)).await else {
            return;
        };
        // A clustered event stream electing a new leader answers "no stream"
        // for a few seconds: publish again (the stream drops duplicates by the
        // event's id) for as long as its duplicate window safely allows.
        let retry_for = self
            .config
            .durable
            .as_ref()
            .map_or(Duration::ZERO, |d| d.dedup_window / 2)
            .min(FINAL_EVENT_RETRY_MAX);
        let events = self.events.clone();
        let finals = self.finals.clone();
        finals.pending.fetch_add(1, Ordering::SeqCst);
        self.background.spawn(async move {
            let mut backoff = Backoff::new(FINAL_EVENT_FIRST_RETRY, RETRY_PAUSE_MAX).for_at_most(retry_for);
            let mut ack = Some(ack);
            loop {
                let outcome = match ack.take() {
                    Some(ack) => ack.await.map_err(|e| e.to_string()),
                    None => Err("publish failed".to_string()),
                };
                match outcome {
                    Ok(ack) if !ack.duplicate => {
                        if let Some(k) = crate::projection::final_kind_index(kind) {
                            finals.last_seq[k].fetch_max(ack.sequence, Ordering::SeqCst);
                        }
                    }
                    Ok(_) => tracing::debug!(task_id = %id, "final event was a duplicate; kept the first"),
                    Err(e) if backoff.may_retry() => {
                        if backoff.retries() == 0 {
                            tracing::warn!(task_id = %id, error = %e, "final event not acknowledged by the event stream; publishing it again");
                        } else {
                            tracing::debug!(task_id = %id, error = %e, "final event still not acknowledged; publishing it again");
                        }
                        backoff.pause().await;
                        // The same message: its time, trace context and id.
                        ack = events.publish_final(&event).await;
                        continue;
                    }
                    Err(e) => tracing::error!(task_id = %id, error = %e, "final event not acknowledged by the event stream; giving up (stats and replay miss this task)"),
                }
                break;
            }
            finals.pending.fetch_sub(1, Ordering::SeqCst);
            finals.changed.notify_waiters();
        });
    }

    /// Waits (briefly) until every final event this coordinator published is
    /// folded into the shared stats, so a client sees its own tasks counted.
    async fn settle_stats(&self) {
        if !self.shared_stats {
            return;
        }
        let deadline = tokio::time::Instant::now() + STATS_SETTLE;
        loop {
            let finals_changed = self.finals.changed.notified();
            let applied_changed = self.progress.changed.notified();
            let pending = self.finals.pending.load(Ordering::SeqCst);
            let wanted = self
                .finals
                .last_seq
                .each_ref()
                .map(|s| s.load(Ordering::SeqCst));
            let applied = wanted
                .iter()
                .enumerate()
                .all(|(kind, seq)| self.progress.covers(kind, *seq));
            if pending == 0 && applied {
                return;
            }
            tokio::select! {
                () = finals_changed => {}
                () = applied_changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(pending, ?wanted, "stats answered before the projection caught up");
                    return;
                }
            }
        }
    }

    /// Publishes the final event of a task another run finished, unless it is
    /// already in the event stream.
    async fn ensure_final_event(&self, result: &OrchestratedResult) {
        let Ok(id) = result.task_id.parse::<TaskId>() else {
            return;
        };
        if let Some(d) = &self.durable {
            for kind in [
                orch_shared::wire::EventKind::ActionComplete,
                orch_shared::wire::EventKind::ActionFailed,
            ] {
                if d.events
                    .direct_get_last_for_subject(subjects::event(&id, kind))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        self.finish_event(result).await;
    }

    /// Validates and runs one task in-process, storing its result when
    /// JetStream is on (before returning; a failing bucket is retried for up
    /// to 15 s, as for every task).
    ///
    /// # Errors
    /// The error body a submit would get for an invalid request.
    pub async fn execute(&self, request: SubmitRequest) -> Result<OrchestratedResult, ErrorBody> {
        let trace = crate::telemetry::task_trace("execute", false, None);
        trace.run(self.execute_inner(request)).await
    }

    async fn execute_inner(&self, request: SubmitRequest) -> Result<OrchestratedResult, ErrorBody> {
        let spec = self.spec(request)?;
        self.check_refs(&spec).await?;
        let (result, pending) = Box::pin(self.run_marked(Box::new(spec))).await;
        self.finish_event(&result).await;
        self.store(&result, None, pending).await;
        Ok(result)
    }

    /// Stores a request/reply task's result (when JetStream is on) and
    /// announces it; `encoded` is its JSON when the caller has it already.
    async fn store(
        &self,
        result: &OrchestratedResult,
        encoded: Option<EncodedResult>,
        pending_revision: Option<u64>,
    ) {
        let Some(store) = &self.results else { return };
        let outcome = match encoded.map_or_else(|| EncodedResult::new(result), Ok) {
            Ok(encoded) => {
                (finish_retrying(store, &encoded, pending_revision).await).map(|f| (f, encoded))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((Finish::Stored, encoded)) => store.announce(&encoded).await,
            Ok((Finish::AlreadyDone(_), _)) => {
                tracing::warn!(task_id = %result.task_id, "a result for this task id was already stored; kept the first");
            }
            Err(e) => {
                tracing::error!(task_id = %result.task_id, error = %e, "storing the result failed; giving up (the caller has it, `orch result` does not)")
            }
        }
    }

    /// Runs a durable task exactly once: skips it when a result is stored,
    /// stores with compare-and-set otherwise, and publishes the final event
    /// only for the stored result.
    ///
    /// # Errors
    /// When the result could not be stored (the task is redelivered).
    pub async fn run_durable(&self, spec: Box<TaskSpec>, deliveries: i64) -> Result<(), String> {
        // Every step but the run itself is boxed: this future is what a
        // durable task holds while it waits on workers.
        let store = self
            .results
            .as_ref()
            .ok_or("durable intake without a result store")?;
        let id = spec.task_id.clone();
        let started = Box::pin(store.start(&id)).await;
        let pending_revision = match started.map_err(|e| e.to_string())? {
            Stored::Done(existing) => {
                tracing::info!(task_id = %id, deliveries, "redelivered task already finished; acknowledging");
                Box::pin(self.ensure_final_event(&existing)).await;
                Box::pin(store.announce_again(&existing)).await;
                return Ok(());
            }
            Stored::Pending { revision, marker } => {
                if marker.coordinator != self.dispatcher.instance() || deliveries > 1 {
                    tracing::info!(task_id = %id, previous = %marker.coordinator, deliveries, "taking over an unfinished task");
                }
                Some(revision)
            }
            Stored::Missing => None,
        };
        if let Err(body) = Box::pin(self.check_refs(&spec)).await {
            // The request is fine but its screenshot is not: a result with the error,
            // not a dead letter, so the client learns why.
            tracing::warn!(task_id = %id, error = %body, "durable task refused");
        }
        let result = Box::pin(self.run(spec)).await;
        Box::pin(self.store_durable(store, result, pending_revision)).await
    }

    /// Stores a durable task's result (compare-and-set against its pending
    /// marker), then publishes its final event and announces it.
    async fn store_durable(
        &self,
        store: &ResultStore,
        result: OrchestratedResult,
        pending_revision: Option<u64>,
    ) -> Result<(), String> {
        let encoded = EncodedResult::new(&result).map_err(|e| e.to_string())?;
        let finished = finish_retrying(store, &encoded, pending_revision)
            .await
            .map_err(|e| e.to_string())?;
        match finished {
            Finish::Stored => {
                self.finish_event(&result).await;
                store.announce(&encoded).await;
            }
            Finish::AlreadyDone(existing) => {
                tracing::info!(task_id = %result.task_id, "another coordinator finished this task first; its result stands");
                self.ensure_final_event(&existing).await;
            }
        }
        Ok(())
    }

    /// This coordinator's statistics (shared numbers with JetStream).
    pub fn stats(&self) -> StatsReport {
        let in_flight = (self.config.max_in_flight - self.permits.available_permits()) as u64;
        let scope = if self.shared_stats {
            "shared".to_string()
        } else {
            format!("coordinator:{}", self.dispatcher.instance())
        };
        let mut report = self.stats.report(in_flight, &scope);
        // Its own connection's drops when the binary attached them, else the process's.
        report.slow_consumer_events = self
            .health
            .as_ref()
            .map_or_else(orch_shared::config::slow_consumer_events, |h| {
                h.slow_consumers()
            });
        report
    }

    /// Decodes and validates a submit (no awaiting, so none of this is kept
    /// in the task's state while it waits on workers).
    fn decode_submit(
        &self,
        msg: &async_nats::Message,
    ) -> (Encoding, Result<Box<TaskSpec>, ErrorBody>) {
        let enc = Encoding::from_headers(msg.headers.as_ref());
        let decoded = enc
            .clone()
            .and_then(|enc| enc.decode::<SubmitRequest>(&msg.payload));
        let enc = enc.unwrap_or_default();
        let spec = match decoded {
            Ok(req) => self.spec(req).map(Box::new),
            Err(e) => Err(e.to_body()),
        };
        (enc, spec)
    }

    /// Serves one submit. The request comes boxed and the task's state is
    /// boxed before the long wait: this future, in its tokio task, is what
    /// every task in flight holds. Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    fn handle_submit(
        self: Arc<Self>,
        mut request: Box<service::Request>,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let (enc, spec) = self.decode_submit(&request.message);
            let spec = match spec {
                Ok(spec) => spec,
                Err(body) => return Box::pin(refuse_submit(&request, enc, body)).await,
            };
            if let Err(body) = Box::pin(self.check_refs(&spec)).await {
                return Box::pin(refuse_submit(&request, enc, body)).await;
            }
            // Accepted: the payload would otherwise pin the connection's read
            // buffer it was cut from for as long as the task runs.
            request.message.payload = bytes::Bytes::new();
            request.message.headers = None;
            let (result, pending) = Box::pin(self.run_marked(spec)).await;
            Box::pin(self.answer_submit(&request, enc, result, pending)).await;
            // The task's place in flight, held until it is answered (and, on the
            // refusals above, until this future ends).
            drop(permit);
        }
    }

    /// Runs a request/reply task and, beside it, writes its pending-result
    /// marker (with JetStream), returning the result and the marker's
    /// revision (all the result's compare-and-set needs; the task keeps only
    /// that while it runs).
    async fn run_marked(&self, spec: Box<TaskSpec>) -> (OrchestratedResult, Option<u64>) {
        // The id is moved into the marker's future, freed with it.
        let id = spec.task_id.clone();
        let pending = async move {
            match &self.results {
                Some(store) => match store.start(&id).await {
                    Ok(Stored::Pending { revision, .. }) => Some(revision),
                    _ => None,
                },
                None => None,
            }
        };
        run_beside(Box::pin(self.run(spec)), Box::pin(pending)).await
    }

    /// After a submitted task: its final event, the reply, the stored result.
    async fn answer_submit(
        &self,
        request: &service::Request,
        enc: Encoding,
        result: OrchestratedResult,
        pending_revision: Option<u64>,
    ) {
        Box::pin(self.finish_event(&result)).await;
        // One JSON encoding is the stored entry, the announcement and a JSON reply.
        let json = (self.results.is_some() || enc == Encoding::Json)
            .then(|| EncodedResult::new(&result).ok())
            .flatten();
        let reply = match (&json, enc) {
            (Some(json), Encoding::Json) => Ok(json.json().clone()),
            _ => enc.encode(&result),
        };
        // Reply first: storing the result is for later readers, not this caller.
        match reply {
            Ok(payload) => Box::pin(respond(request, enc.headers(), payload)).await,
            Err(e) => {
                let body = ErrorBody::new(ErrorCode::Internal, format!("encoding the result: {e}"));
                Box::pin(reply_error(request, enc, &body)).await;
            }
        }
        Box::pin(self.store(&result, json, pending_revision)).await;
    }

    async fn handle_results_get(&self, request: service::Request) {
        let enc = Encoding::from_headers(request.message.headers.as_ref());
        let query = enc
            .clone()
            .and_then(|enc| enc.decode::<ResultQuery>(&request.message.payload));
        let enc = enc.unwrap_or_default();
        let outcome: Result<OrchestratedResult, ErrorBody> = async {
            let query = query.map_err(|e| e.to_body())?;
            let id: TaskId = query
                .task_id
                .parse()
                .map_err(|e: orch_shared::ids::InvalidId| {
                    ErrorBody::new(ErrorCode::InvalidRequest, e.to_string())
                })?;
            let store = self.results.as_ref().ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    "results are not stored: this coordinator runs without JetStream",
                )
            })?;
            match store.lookup(&id).await {
                Ok(Stored::Done(r)) => Ok(*r),
                Ok(Stored::Pending { marker, .. }) => Err(ErrorBody::new(
                    ErrorCode::Pending,
                    format!(
                        "task {id} is running (since {}, coordinator {})",
                        marker.since, marker.coordinator
                    ),
                )),
                Ok(Stored::Missing) => {
                    let queued = match &self.durable {
                        Some(d) => d
                            .tasks
                            .get_last_raw_message_by_subject(&subjects::task(&id))
                            .await
                            .is_ok(),
                        None => false,
                    };
                    if queued {
                        Err(ErrorBody::new(
                            ErrorCode::Pending,
                            format!("task {id} is queued"),
                        ))
                    } else {
                        Err(ErrorBody::new(
                            ErrorCode::NotFound,
                            format!("no result for task {id}"),
                        ))
                    }
                }
                // The bucket is unreachable for now (e.g. a JetStream leader
                // election in a cluster): the caller may ask again.
                Err(e) => Err(ErrorBody::new(ErrorCode::Unavailable, e.to_string())),
            }
        }
        .await;
        match outcome {
            Ok(r) => match enc.encode(&r) {
                Ok(p) => respond(&request, enc.headers(), p).await,
                Err(e) => {
                    reply_error(
                        &request,
                        enc,
                        &ErrorBody::new(ErrorCode::Internal, e.to_string()),
                    )
                    .await
                }
            },
            Err(body) => reply_error(&request, enc, &body).await,
        }
    }

    async fn handle_stats(&self, request: service::Request) {
        self.settle_stats().await;
        let enc = Encoding::from_headers(request.message.headers.as_ref()).unwrap_or_default();
        match enc.encode(&self.stats()) {
            Ok(p) => respond(&request, enc.headers(), p).await,
            Err(e) => {
                let body = ErrorBody::new(ErrorCode::Internal, e.to_string());
                reply_error(&request, enc, &body).await;
            }
        }
    }
}

/// Runs `main` and, beside it, the short `side` job (the pending-result marker),
/// freeing the side job's state as soon as it is done: a task waiting on a
/// worker should hold only what it is waiting on (two boxes, or one box and
/// the side job's output).
async fn run_beside<A: Future, B: Future>(
    mut main: std::pin::Pin<Box<A>>,
    side: std::pin::Pin<Box<B>>,
) -> (A::Output, B::Output) {
    enum Side<B: Future> {
        Running(std::pin::Pin<Box<B>>),
        Done(B::Output),
    }
    let mut side = Side::Running(side);
    let main_out = std::future::poll_fn(|cx| {
        if let Side::Running(job) = &mut side
            && let std::task::Poll::Ready(out) = job.as_mut().poll(cx)
        {
            // The side job's box is freed here, while the main job may wait long.
            side = Side::Done(out);
        }
        main.as_mut().poll(cx)
    })
    .await;
    match side {
        Side::Done(out) => (main_out, out),
        Side::Running(job) => {
            // Rare (the side job is short): keep the main output boxed meanwhile.
            let main_out = Box::new(main_out);
            let out = job.await;
            (*main_out, out)
        }
    }
}

/// A task's result, given its trace id and counted in telemetry.
fn finished(mut result: OrchestratedResult) -> OrchestratedResult {
    result.trace_id = orch_shared::trace::current_trace_id();
    crate::telemetry::task_finished(&result);
    result
}

/// `result`, after storing it in the result cache under `key`.
async fn cached_too(
    store: &async_nats::jetstream::kv::Store,
    key: String,
    result: OrchestratedResult,
) -> OrchestratedResult {
    crate::cache::store(store, &key, &result).await;
    result
}

/// Refuses a submit with a structured error (logged and counted).
async fn refuse_submit(request: &service::Request, enc: Encoding, body: ErrorBody) {
    tracing::warn!(
        code = %body.error.code, error = %body.error.message,
        bytes = request.message.payload.len(), "submit refused"
    );
    crate::telemetry::request_refused("submit", body.error.code.as_str());
    reply_error(request, enc, &body).await;
}

async fn respond(
    request: &service::Request,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) {
    if request.message.reply.is_none() {
        return;
    }
    if let Err(e) = request.respond_with_headers(Ok(payload), headers).await {
        tracing::warn!(error = %e, "publishing a reply failed");
    }
}

async fn reply_error(request: &service::Request, enc: Encoding, body: &ErrorBody) {
    let (headers, payload) = error_reply(enc, body);
    respond(request, headers, payload).await;
}

/// What happened during a serve run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// Tasks still running at the drain deadline (they were cancelled and answered).
    pub cancelled_at_drain: usize,
}

/// Serves submits and stats until `shutdown` is cancelled, then drains.
///
/// # Errors
/// When the endpoints cannot be registered or die.
pub async fn serve(
    coord: Arc<Coordinator>,
    shutdown: CancellationToken,
) -> Result<ServeReport, ServeError> {
    let client = coord.client.clone();
    let metadata: HashMap<String, String> = Role::ALL
        .iter()
        .map(|r| {
            let chain = coord
                .config
                .chain(*r)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            (format!("{r}_chain"), chain.join(","))
        })
        .collect();
    let start_err = |e: async_nats::Error| ServeError::Subscribe {
        subject: subjects::SUBMIT.into(),
        message: e.to_string(),
    };
    let service = client
        .service_builder()
        .description("orch coordinator: submit tasks, read stats")
        .metadata(metadata)
        .queue_group(subjects::COORDINATOR_QUEUE)
        .start("orch-coordinator", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(start_err)?;
    let mut submit = service
        .endpoint_builder()
        .name("submit")
        .add(subjects::SUBMIT)
        .await
        .map_err(start_err)?;
    let mut stats = service
        .endpoint_builder()
        .name("stats")
        .add(subjects::STATS)
        .await
        .map_err(start_err)?;
    let mut results = service
        .endpoint_builder()
        .name("results")
        .add(subjects::RESULTS_GET)
        .await
        .map_err(start_err)?;
    tracing::info!(
        subject = subjects::SUBMIT,
        max_in_flight = coord.config.max_in_flight,
        "coordinator serving"
    );

    let tasks = TaskTracker::new();
    let intake_stop = CancellationToken::new();
    let intake = coord.durable.clone().map(|d| {
        coord.background.spawn(crate::intake::run_dead_letter_mover(
            client.clone(),
            d.clone(),
            coord.stop_background.clone(),
        ));
        tokio::spawn(crate::intake::run(
            coord.clone(),
            d,
            tasks.clone(),
            intake_stop.clone(),
        ))
    });
    let mut closed: Option<&'static str> = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            next = submit.next() => match next {
                Some(request) => admit(&coord, &tasks, request).await,
                None => { closed = Some("submit"); break; }
            },
            next = stats.next() => match next {
                Some(request) => coord.handle_stats(request).await,
                None => { closed = Some("stats"); break; }
            },
            next = results.next() => match next {
                Some(request) => {
                    let coord = coord.clone();
                    tasks.spawn(async move { coord.handle_results_get(request).await });
                }
                None => { closed = Some("results"); break; }
            },
        }
    }

    tracing::info!(running = tasks.len(), "coordinator draining");
    intake_stop.cancel();
    if let Some(intake) = intake {
        // Durable work in hand finishes or is handed back within the drain
        // deadline; with NATS gone the intake may wait on the server, so it is bounded.
        let abort = intake.abort_handle();
        let limit = coord.config.drain_timeout + orch_shared::shutdown::DRAIN_STEP_LIMIT;
        if tokio::time::timeout(limit, intake).await.is_err() {
            tracing::warn!("durable intake did not stop within the drain deadline; aborted");
            abort.abort();
        }
    }
    let _ = orch_shared::shutdown::drain_step(&client, "stop submit", submit.stop()).await;
    let _ = orch_shared::shutdown::drain_step(&client, "stop stats", stats.stop()).await;
    let _ = orch_shared::shutdown::drain_step(&client, "stop results", results.stop()).await;
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(100), submit.next()).await
    {
        let enc = Encoding::from_headers(request.message.headers.as_ref()).unwrap_or_default();
        let body = ErrorBody::new(
            ErrorCode::ShuttingDown,
            "coordinator is shutting down; resubmit",
        );
        reply_error(&request, enc, &body).await;
    }
    let _ = orch_shared::shutdown::drain_step(&client, "stop service", service.stop()).await;
    tasks.close();
    let mut cancelled_at_drain = 0;
    if tokio::time::timeout(coord.config.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        cancelled_at_drain = tasks.len();
        tracing::warn!(
            tasks = cancelled_at_drain,
            "drain deadline passed; cancelling running tasks"
        );
        coord.dispatcher.stop_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    if let Some(Err(e)) = orch_shared::shutdown::drain_step(&client, "flush", client.flush()).await
    {
        tracing::warn!(error = %e, "flushing to NATS failed");
    }
    coord.stop_background.cancel();
    coord.background.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), coord.background.wait()).await;
    tracing::info!(cancelled_at_drain, "coordinator stopped");
    match closed {
        Some(name) => Err(ServeError::EndpointClosed(name)),
        None => Ok(ServeReport { cancelled_at_drain }),
    }
}

async fn admit(coord: &Arc<Coordinator>, tasks: &TaskTracker, request: service::Request) {
    match coord.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let coord = coord.clone();
            let trace = crate::telemetry::task_trace(
                subjects::SUBMIT,
                false,
                request.message.headers.as_ref(),
            );
            let request = Box::new(request);
            tasks.spawn(trace.run(coord.handle_submit(request, permit)));
        }
        Err(_) => {
            let enc = Encoding::from_headers(request.message.headers.as_ref()).unwrap_or_default();
            let body = ErrorBody::new(
                ErrorCode::Overloaded,
                format!(
                    "coordinator at capacity ({} tasks in flight); retry later",
                    coord.config.max_in_flight
                ),
            );
            tracing::warn!("submit refused: at capacity");
            crate::telemetry::request_refused("submit", ErrorCode::Overloaded.as_str());
            reply_error(&request, enc, &body).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::trace::TaskTrace;

    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every task in flight holds the submit handler (in its tokio task),
    /// `run_marked` (with `run_beside` in it) and `run` while it waits on a
    /// worker: see the same test
    /// in `pipeline` for the reasons and the rest of the chain.
    #[test]
    fn waiting_task_state_stays_small() {
        type C = &'static Coordinator;
        let handler = future_size(
            |(c, r, p): (
                Arc<Coordinator>,
                Box<service::Request>,
                OwnedSemaphorePermit,
            )| { c.handle_submit(r, p) },
        );
        let run = future_size(|(c, s): (C, Box<TaskSpec>)| c.run(s));
        let durable = future_size(|(c, s): (C, Box<TaskSpec>)| c.run_durable(s, 1));
        type Main = std::pin::Pin<Box<std::future::Ready<OrchestratedResult>>>;
        type Side = std::pin::Pin<Box<std::future::Ready<Option<u64>>>>;
        let beside = future_size(|(a, b): (Main, Side)| run_beside(a, b));
        let marked = future_size(|(c, s): (C, Box<TaskSpec>)| c.run_marked(s));
        // Not kept while the task waits, but alive beside it until the stream
        // acknowledges: 10,000 tasks admitted at once hold this many times
        // over, and the allocator keeps some of it (2,448 B when it was
        // `kv::Store::create`, fallback read included; 1,400 B through
        // `kv::Store::update`).
        let marker = future_size(
            |(s, id): (&'static crate::results::ResultStore, &'static TaskId)| s.start(id),
        );
        // What admit spawns: the handler inside its task trace.
        let traced = future_size(
            |(c, r, p, t): (
                Arc<Coordinator>,
                Box<service::Request>,
                OwnedSemaphorePermit,
                TaskTrace,
            )| { t.run(c.handle_submit(r, p)) },
        );
        eprintln!(
            "submit handler {handler} B, traced {traced} B, run {run} B, \
             run_beside {beside} B, run_marked {marked} B, durable {durable} B, \
             pending marker {marker} B"
        );
        // tokio allocates a task in steps of 128 B: its header, scheduler and
        // trailer (96 B) plus this future, the task tracker's token and the
        // stage's tag. Up to 256 B here, every task in flight holds 384 B;
        // it held 512 while the handler was an async fn and the task trace
        // kept its name and kind.
        assert!(
            traced <= 256,
            "traced submit handler future is {traced} bytes"
        );
        assert!(handler <= 128, "submit handler future is {handler} bytes");
        // It used to keep the result it stores in the cache (328 B), and its
        // arguments twice (112 B).
        assert!(run <= 96, "Coordinator::run future is {run} bytes");
        assert!(beside <= 512, "run_beside future is {beside} bytes");
        assert!(marked <= 128, "run_marked future is {marked} bytes");
        assert!(marker <= 512, "pending marker future is {marker} bytes");
        assert!(durable <= 768, "run_durable future is {durable} bytes");
    }

    #[tokio::test]
    async fn run_beside_returns_both_outputs_whichever_finishes_first() {
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            1
        };
        let fast = || async { 2 };
        assert_eq!(run_beside(Box::pin(slow()), Box::pin(fast())).await, (1, 2));
        assert_eq!(run_beside(Box::pin(fast()), Box::pin(slow())).await, (2, 1));
    }
}
