//! The coordinator as a NATS micro service (`orch-coordinator`): endpoints
//! `orch.v1.submit` and `orch.v1.stats` in the `orch-coordinator` queue group,
//! so any number of coordinators share the load.
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
use std::time::Duration;

use async_nats::Client;
use async_nats::service::{self, ServiceExt as _};
use futures::StreamExt as _;
use orch_shared::codec::{Encoding, error_reply};
use orch_shared::config::NatsHealth;
use orch_shared::wire::{OrchestratedResult, StatsReport, SubmitRequest};
use orch_shared::{ErrorBody, ErrorCode, Role, subjects};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CoordinatorConfig;
use crate::dispatch::Dispatcher;
use crate::events::EventSink;
use crate::pipeline::{Pipeline, TaskSpec};
use crate::stats::Stats;

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
}

/// A running coordinator (library form: tests and the benchmark drive it in-process).
pub struct Coordinator {
    client: Client,
    config: Arc<CoordinatorConfig>,
    pipeline: Pipeline,
    dispatcher: Dispatcher,
    stats: Stats,
    permits: Arc<Semaphore>,
    background: TaskTracker,
    stop_background: CancellationToken,
    hard_stop: CancellationToken,
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
        let events = if config.events {
            EventSink::new(client.clone())
        } else {
            EventSink::disabled()
        };
        let hard_stop = CancellationToken::new();
        let pipeline = Pipeline::new(
            dispatcher.clone(),
            events,
            config.clone(),
            hard_stop.clone(),
        );
        Ok(Coordinator {
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            client,
            config,
            pipeline,
            dispatcher,
            stats: Stats::default(),
            background,
            stop_background,
            hard_stop,
            health: None,
        })
    }

    /// Attaches connection health counters (slow consumers show up in stats logs).
    pub fn with_health(mut self, health: Arc<NatsHealth>) -> Coordinator {
        self.health = Some(health);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Validates and runs one task in-process (no NATS round trip for the submit itself).
    ///
    /// # Errors
    /// The error body a submit would get for an invalid request.
    pub async fn execute(&self, request: SubmitRequest) -> Result<OrchestratedResult, ErrorBody> {
        let spec = TaskSpec::from_request(request, &self.config)?;
        let result = self.pipeline.run(spec).await;
        self.stats.record(&result);
        Ok(result)
    }

    /// This coordinator's statistics.
    pub fn stats(&self) -> StatsReport {
        let in_flight = (self.config.max_in_flight - self.permits.available_permits()) as u64;
        let report = self.stats.report(
            in_flight,
            &format!("coordinator:{}", self.dispatcher.instance()),
        );
        if let Some(h) = &self.health {
            let slow = h.slow_consumers();
            if slow > 0 {
                tracing::warn!(
                    slow_consumer_events = slow,
                    "NATS slow-consumer drops so far"
                );
            }
        }
        report
    }

    async fn handle_submit(&self, request: service::Request, _permit: OwnedSemaphorePermit) {
        let msg = &request.message;
        let enc = Encoding::from_headers(msg.headers.as_ref());
        let decoded = enc
            .clone()
            .and_then(|enc| enc.decode::<SubmitRequest>(&msg.payload));
        let enc = enc.unwrap_or_default();
        let outcome = match decoded {
            Ok(req) => self.execute(req).await,
            Err(e) => Err(e.to_body()),
        };
        match outcome {
            Ok(result) => match enc.encode(&result) {
                Ok(payload) => respond(&request, enc.headers(), payload).await,
                Err(e) => {
                    let body =
                        ErrorBody::new(ErrorCode::Internal, format!("encoding the result: {e}"));
                    reply_error(&request, enc, &body).await;
                }
            },
            Err(body) => {
                tracing::warn!(
                    code = %body.error.code, error = %body.error.message,
                    bytes = msg.payload.len(), "submit refused"
                );
                reply_error(&request, enc, &body).await;
            }
        }
    }

    async fn handle_stats(&self, request: service::Request) {
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
    tracing::info!(
        subject = subjects::SUBMIT,
        max_in_flight = coord.config.max_in_flight,
        "coordinator serving"
    );

    let tasks = TaskTracker::new();
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
        }
    }

    tracing::info!(running = tasks.len(), "coordinator draining");
    let _ = submit.stop().await;
    let _ = stats.stop().await;
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
    let _ = service.stop().await;
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
        coord.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    if let Err(e) = client.flush().await {
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
            tasks.spawn(async move { coord.handle_submit(request, permit).await });
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
            reply_error(&request, enc, &body).await;
        }
    }
}
