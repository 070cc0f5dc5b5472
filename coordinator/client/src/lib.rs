//! Rust SDK for the orch fleet, mirroring the seed's Python API:
//!
//! ```no_run
//! # async fn demo() -> Result<(), orch_client::ClientError> {
//! use orch_client::{Orchestrator, SubmitRequest};
//! let orch = Orchestrator::connect("nats://127.0.0.1:4222").await?;
//! let mut req = SubmitRequest::new("Find Python developers on LinkedIn");
//! req.tools = Some(vec!["kimi_k2".into(), "vision".into()]);
//! req.available_tools = vec!["playwright_navigate".into()];
//! let result = orch.execute(&req).await?;
//! println!("confidence {:.0}%, models {:?}", result.confidence * 100.0, result.models_used);
//! orch.close().await?;
//! # Ok(()) }
//! ```
//!
//! Any other language can do the same with a plain NATS request on
//! `orch.v1.submit` (see the JSON Schemas in `shared/schemas/`).
#![forbid(unsafe_code)]

pub mod discovery;
pub mod durable;

use std::time::Duration;
use tracing::Instrument as _;

use async_nats::{Client, RequestErrorKind};
use futures::{Stream, StreamExt as _};
use orch_shared::codec::{Encoding, error_from_reply};
use orch_shared::subjects;
pub use orch_shared::wire::{
    Event, EventKind, OrchestratedResult, StatsReport, SubmitRequest, Timeouts,
};
pub use orch_shared::{ErrorBody, ErrorCode, Role, TaskId};
use tokio::sync::OnceCell;

pub use discovery::{ServiceInstance, discover};
pub use durable::{EventReplay, ReplayFrom};

/// Extra time a client waits beyond the task's phase budgets (submit, synthesis, network).
pub const REPLY_MARGIN: Duration = Duration::from_secs(5);
/// Phase budgets assumed when a request sets none (the coordinator's defaults: 30 + 60 + 20 s).
pub const DEFAULT_TASK_BUDGET: Duration = Duration::from_secs(110);

/// What can go wrong talking to the fleet.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// NATS could not be reached.
    #[error("connecting to NATS: {0}")]
    Connect(String),
    /// No coordinator is listening on `orch.v1.submit`.
    #[error("no coordinator is running (no responders on {0})")]
    NoCoordinator(&'static str),
    /// No reply in time.
    #[error("no reply within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The coordinator refused the request.
    #[error("refused: {0}")]
    Rejected(ErrorBody),
    /// The reply could not be decoded.
    #[error("undecodable reply: {0}")]
    Decode(String),
    /// Any other NATS failure.
    #[error("NATS: {0}")]
    Nats(String),
}

impl ClientError {
    /// The coordinator's error code, when it refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected(b) => Some(b.error.code),
            _ => None,
        }
    }
}

/// A connection to the fleet. Cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    client: Client,
    encoding: Encoding,
}

impl Orchestrator {
    /// Connects to NATS at `url` (comma-separated for a cluster: the client
    /// fails over between them).
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub async fn connect(url: &str) -> Result<Orchestrator, ClientError> {
        // A cluster's comma-separated list goes to async-nats as a list.
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = async_nats::ConnectOptions::new()
            .name("orch-client")
            .connect(urls.as_slice())
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Orchestrator::from_client(client))
    }

    /// Uses an existing NATS connection.
    pub fn from_client(client: Client) -> Orchestrator {
        Orchestrator {
            client,
            encoding: Encoding::Json,
        }
    }

    /// Sends requests as MessagePack (screenshots travel as raw bytes, not base64).
    pub fn with_msgpack(mut self) -> Orchestrator {
        self.encoding = Encoding::MsgPack;
        self
    }

    /// The underlying NATS client.
    pub fn nats(&self) -> &Client {
        &self.client
    }

    /// Runs a task and waits for its result (the seed's `execute`).
    ///
    /// The wait is bounded by the task's phase budgets plus [`REPLY_MARGIN`].
    ///
    /// # Errors
    /// See [`ClientError`]; an invalid request is [`ClientError::Rejected`].
    pub async fn execute(
        &self,
        request: &SubmitRequest,
    ) -> Result<OrchestratedResult, ClientError> {
        let t = request.timeouts.unwrap_or_default();
        let budget = match (t.parallel_ms, t.reasoning_ms, t.verification_ms) {
            (None, None, None) => DEFAULT_TASK_BUDGET,
            (p, r, v) => Duration::from_millis(
                p.unwrap_or(30_000) + r.unwrap_or(60_000) + v.unwrap_or(20_000),
            ),
        };
        let request = self.prepare(request).await?;
        self.request(subjects::SUBMIT, &*request, budget + REPLY_MARGIN)
            .await
    }

    /// This coordinator's statistics (the seed's `get_stats()`).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn stats(&self) -> Result<StatsReport, ClientError> {
        self.request(
            subjects::STATS,
            &serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
    }

    /// Live workers and coordinators, via NATS micro discovery (`$SRV.INFO` + `$SRV.STATS`).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn workers(&self, wait: Duration) -> Result<Vec<ServiceInstance>, ClientError> {
        discover(&self.client, wait).await
    }

    /// Follows the events of one task (or of all tasks with `None`), live.
    ///
    /// # Errors
    /// When the subscription fails.
    pub async fn events(&self, task_id: Option<&TaskId>) -> Result<EventStream, ClientError> {
        let subject = match task_id {
            Some(id) => subjects::task_events(id),
            None => subjects::EVENTS_ALL.to_string(),
        };
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        Ok(EventStream { sub })
    }

    /// Flushes and closes the connection (the seed's `close()`).
    ///
    /// # Errors
    /// When the flush fails.
    pub async fn close(self) -> Result<(), ClientError> {
        self.client
            .drain()
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))
    }

    pub(crate) async fn request<
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    >(
        &self,
        subject: &'static str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let payload = self
            .encoding
            .encode(body)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        // A client span (exported when the application sets up OpenTelemetry,
        // e.g. with `orch_shared::telemetry::init`); its context travels in
        // the request's `traceparent`, so the coordinator's work joins the
        // caller's trace.
        let span = tracing::info_span!(
            "orch.request",
            otel.name = %format_args!("send {subject}"),
            otel.kind = "client",
            messaging.system = "nats",
            messaging.destination.name = subject,
            messaging.operation.type = "send",
        );
        let mut headers = self.encoding.headers();
        orch_shared::trace::inject_span(&span, &mut headers);
        let req = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(timeout));
        let msg = self
            .client
            .send_request(subject, req)
            .instrument(span)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoCoordinator(subject),
                RequestErrorKind::TimedOut => ClientError::TimedOut(timeout),
                RequestErrorKind::MaxPayloadExceeded => ClientError::Rejected(ErrorBody::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request exceeds the NATS server's max_payload: {e}"),
                )),
                RequestErrorKind::InvalidSubject | RequestErrorKind::Other => {
                    ClientError::Nats(e.to_string())
                }
            })?;
        if let Some(err) = error_from_reply(msg.headers.as_ref(), &msg.payload) {
            return Err(ClientError::Rejected(err));
        }
        let enc = Encoding::from_headers(msg.headers.as_ref())
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        enc.decode(&msg.payload)
            .map_err(|e| ClientError::Decode(e.message))
    }
}

/// Live task events, decoded (undecodable messages are skipped and logged).
pub struct EventStream {
    sub: async_nats::Subscriber,
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        use std::task::Poll;
        loop {
            match self.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(m)) => match serde_json::from_slice::<Event>(&m.payload) {
                    Ok(e) => return Poll::Ready(Some(e)),
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, error = %e, "skipping undecodable event");
                    }
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

static SHARED: OnceCell<Orchestrator> = OnceCell::const_new();

/// The process-wide shared handle, like the seed's `get_orchestrator()`: the
/// first call connects to `url`; every later call returns the same handle
/// (and ignores `url`).
///
/// # Errors
/// When the first connection fails (a later call tries again).
pub async fn get_orchestrator(url: &str) -> Result<&'static Orchestrator, ClientError> {
    SHARED
        .get_or_try_init(|| async { Orchestrator::connect(url).await })
        .await
}
