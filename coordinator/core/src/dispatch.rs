//! One attempt to one slot: publish a [`WorkRequest`] to
//! `orch.v1.work.<role>.<slot>` and wait for the outcome, which is always one
//! of a few typed cases the pipeline matches on ([`AttemptError`]).
//!
//! Replies come back through one wildcard inbox subscription per coordinator
//! and are routed to the waiting attempt by token (a reply multiplexer). We do
//! not use `Client::request` because an attempt must see *several* messages:
//! workers send heartbeats to the reply inbox during long jobs, and silence
//! longer than the heartbeat timeout means the worker died, so we fall back
//! long before the attempt's deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message, StatusCode};
use bytes::Bytes;
use futures::StreamExt as _;
use orch_shared::codec::{Encoding, error_from_reply};
use orch_shared::wire::{WorkReply, WorkRequest};
use orch_shared::{ErrorCode, Role, Slot, TaskId, headers, subjects};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the router leaves what arrives for one attempt. Heartbeats only
/// need their time, so they overwrite each other; the final reply is kept.
/// (About a hundred bytes, where a channel would preallocate kilobytes per
/// attempt: with 10,000 tasks in flight that difference is the heap.) The
/// attempt waits on it through [`Inbox::poll_arrived`]: its waker is kept
/// here, so the waiting future holds no notification state of its own.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    last_heartbeat: Option<Instant>,
    /// Boxed: most of an attempt's life is spent without it.
    reply: Option<Box<Message>>,
    /// Why the attempt must give up, when it must: `Cancelled` (drain
    /// deadline, [`Dispatcher::stop_all`]) or `HedgeLost` ([`CallOffHandle`]).
    /// The first reason stands.
    ended: Option<AttemptError>,
    /// Something arrived since the attempt last looked.
    fresh: bool,
    /// The waiting attempt's waker (an inbox has one waiter: its attempt).
    waker: Option<Waker>,
}

/// What an attempt finds in its inbox when woken.
pub(crate) struct Arrived {
    pub(crate) reply: Option<Box<Message>>,
    pub(crate) last_heartbeat: Option<Instant>,
    pub(crate) ended: Option<AttemptError>,
}

impl InboxState {
    /// Marks the state fresh; the waker to wake (outside the lock).
    fn arrived(&mut self) -> Option<Waker> {
        self.fresh = true;
        self.waker.take()
    }

    fn take(&mut self) -> Arrived {
        self.fresh = false;
        Arrived {
            reply: self.reply.take(),
            last_heartbeat: self.last_heartbeat,
            ended: self.ended.clone(),
        }
    }
}

/// What a poisoned inbox lock means to an attempt: give up.
fn poisoned() -> Arrived {
    Arrived {
        reply: None,
        last_heartbeat: None,
        ended: Some(AttemptError::Cancelled),
    }
}

impl Inbox {
    pub(crate) fn deliver(&self, msg: Message) {
        let heartbeat = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::ORCH_KIND))
            .is_some_and(|k| k.as_str() == headers::KIND_HEARTBEAT);
        let waker = self.state.lock().ok().and_then(|mut st| {
            if heartbeat {
                st.last_heartbeat = Some(Instant::now());
            } else if st.reply.is_none() {
                st.reply = Some(Box::new(msg));
            }
            st.arrived()
        });
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Tells the waiting attempt to give up with `why`.
    fn end(&self, why: AttemptError) {
        let waker = self.state.lock().ok().and_then(|mut st| {
            st.ended.get_or_insert(why);
            st.arrived()
        });
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once something arrived since the last look: the final reply if
    /// one came, the time of the latest heartbeat, and why the attempt must
    /// give up, if it must. Otherwise keeps `cx`'s waker for the next arrival.
    pub(crate) fn poll_arrived(&self, cx: &mut Context<'_>) -> Poll<Arrived> {
        let Ok(mut st) = self.state.lock() else {
            return Poll::Ready(poisoned());
        };
        if st.fresh {
            return Poll::Ready(st.take());
        }
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Why an attempt failed. The pipeline decides what to do by matching on this.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttemptError {
    /// No worker listens on the slot's subject (NATS answered 503 at once).
    #[error("no responders")]
    NoResponders,
    /// The attempt's deadline passed.
    #[error("timed out after {} ms", .after.as_millis())]
    TimedOut {
        /// The attempt's budget.
        after: Duration,
    },
    /// The worker stopped heartbeating: presumed dead.
    #[error("worker went silent (no heartbeat for {} ms)", .silent_for.as_millis())]
    WorkerLost {
        /// Silence observed.
        silent_for: Duration,
    },
    /// The worker answered with an error.
    #[error("{code}: {message}")]
    Rejected {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The worker's reply could not be decoded or did not fit the role's schema.
    #[error("invalid_output: {0}")]
    BadReply(String),
    /// The request could not be sent (connection down, payload too large).
    #[error("transport: {0}")]
    Transport(String),
    /// The task was cancelled (coordinator shutting down past its drain deadline).
    #[error("cancelled")]
    Cancelled,
    /// A hedged attempt on another slot answered first; this one was cancelled.
    #[error("cancelled: another slot answered first")]
    HedgeLost,
}

impl AttemptError {
    /// A short code for attempt records and stats.
    pub fn code(&self) -> &'static str {
        match self {
            AttemptError::NoResponders => "no_responders",
            AttemptError::TimedOut { .. } => "timed_out",
            AttemptError::WorkerLost { .. } => "worker_lost",
            AttemptError::Rejected { code, .. } => code.as_str(),
            AttemptError::BadReply(_) => "invalid_output",
            AttemptError::Transport(_) => "transport",
            AttemptError::Cancelled => "cancelled",
            AttemptError::HedgeLost => "hedge_lost",
        }
    }

    /// The error code a [`ModelResult`](orch_shared::wire::ModelResult) reports.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AttemptError::NoResponders | AttemptError::WorkerLost { .. } => ErrorCode::Unavailable,
            AttemptError::TimedOut { .. } => ErrorCode::TimedOut,
            AttemptError::Rejected { code, .. } => *code,
            AttemptError::BadReply(_) => ErrorCode::InvalidOutput,
            AttemptError::Transport(_) => ErrorCode::Internal,
            AttemptError::Cancelled | AttemptError::HedgeLost => ErrorCode::Cancelled,
        }
    }

    /// Whether another copy of the *same* slot may succeed (the failure was
    /// about one worker, not about the slot or the request).
    pub fn worth_retrying_same_slot(&self) -> bool {
        match self {
            AttemptError::WorkerLost { .. } => true,
            AttemptError::Rejected { code, .. } => code.is_retryable_elsewhere(),
            _ => false,
        }
    }
}

/// What one attempt needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    /// The attempt's own budget (its deadline is `now + budget` when sent).
    pub budget: Duration,
    /// Send through the `ORCH_WORK` queue (workers pull when free) instead of
    /// request/reply to the slot's queue group.
    pub queued: bool,
    /// Silence that counts as a dead worker.
    pub heartbeat_timeout: Option<Duration>,
}

/// Why a running attempt was called off by the pipeline. (The drain
/// deadline ends attempts through [`Dispatcher::stop_all`] instead.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOff {
    /// Another attempt (a hedge) answered first.
    HedgeLost,
}

/// One attempt's inbox, made before the attempt so the pipeline can call it
/// off while it runs (a hedge that lost). Calling off wakes the attempt,
/// which tells its worker to cancel; no channel or timer per attempt.
#[derive(Clone, Default)]
pub struct CallOffHandle(Arc<Inbox>);

impl CallOffHandle {
    /// A handle for one attempt (not to be reused: it is that attempt's inbox).
    pub fn new() -> CallOffHandle {
        CallOffHandle::default()
    }

    /// Calls the attempt off (the first reason given stands).
    pub fn call_off(&self, why: CallOff) {
        self.0.end(match why {
            CallOff::HedgeLost => AttemptError::HedgeLost,
        });
    }
}

struct Inner {
    client: Client,
    /// For queued dispatch.
    js: async_nats::jetstream::Context,
    /// Whether a slot's queue consumer exists (workers ever pulled), cached briefly.
    consumers: Mutex<HashMap<String, (Instant, bool)>>,
    prefix: String,
    pending: Mutex<HashMap<u64, Arc<Inbox>>>,
    next: AtomicU64,
    instance: String,
    /// Cancelled by [`Dispatcher::stop_all`]: attempts started later give up
    /// at once, and waits for capacity end.
    stopped: CancellationToken,
}

/// Sends attempts and routes their replies. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

/// Removes an attempt's routing entry however the attempt ends.
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.remove(&self.id);
        }
    }
}

/// The headers of a work request: encoding, budget, request and task ids,
/// and the attempt's trace context (the worker's span becomes its child).
fn request_headers(
    budget: Duration,
    request_id: &str,
    task_id: &TaskId,
    span: &orch_shared::trace::RecordedSpan,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, Encoding::MsgPack.mime());
    h.insert(
        headers::ORCH_BUDGET_MS,
        budget.as_millis().to_string().as_str(),
    );
    h.insert(headers::ORCH_REQUEST_ID, request_id);
    h.insert(headers::ORCH_TASK_ID, task_id.as_str());
    span.inject(&mut h);
    h
}

impl Dispatcher {
    /// Subscribes the reply inbox and starts the router on `tracker`. The
    /// router stops when `stop` is cancelled.
    ///
    /// # Errors
    /// When the inbox subscription fails.
    pub async fn start(
        client: Client,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Dispatcher, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut sub = client.subscribe(subjects::attempt_replies(&prefix)).await?;
        let instance = prefix
            .rsplit('.')
            .next()
            .unwrap_or("coordinator")
            .to_string();
        let inner = Arc::new(Inner {
            js: async_nats::jetstream::new(client.clone()),
            consumers: Mutex::new(HashMap::new()),
            client,
            prefix,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            instance,
            stopped: CancellationToken::new(),
        });
        let router = inner.clone();
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let Some(id) = subjects::parse_attempt_reply(&msg.subject) else {
                    continue;
                };
                let inbox = router.pending.lock().ok().and_then(|p| p.get(&id).cloned());
                if let Some(inbox) = inbox {
                    inbox.deliver(msg);
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(Dispatcher { inner })
    }

    /// The id prefix of request ids this dispatcher sends (for logs).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The request id of attempt `id`, as its worker sees it (written out
    /// when needed: an attempt waiting for its reply keeps only `id`).
    fn request_id(&self, id: u64) -> String {
        format!("{}-{id}", self.inner.instance)
    }

    /// Attempts in flight.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Stops waiting: every attempt in flight, and every attempt started
    /// from now on, ends with [`AttemptError::Cancelled`] (its worker is told
    /// to cancel). For the drain deadline; an attempt holds no timer or
    /// future of its own for this.
    pub fn stop_all(&self) {
        self.inner.stopped.cancel();
        if let Ok(p) = self.inner.pending.lock() {
            for inbox in p.values() {
                inbox.end(AttemptError::Cancelled);
            }
        }
    }

    /// Resolves once [`stop_all`](Self::stop_all) was called.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.stopped.cancelled()
    }

    /// Sends `request` to `role`/`slot` and waits for its outcome. `span`'s
    /// trace context goes into the request's headers (the worker's span
    /// becomes its child).
    ///
    /// Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    ///
    /// # Errors
    /// Every failure, typed: see [`AttemptError`].
    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    pub fn attempt<'a>(
        &'a self,
        task_id: &'a TaskId,
        role: Role,
        slot: &'a Slot,
        payload: Bytes,
        limits: AttemptLimits,
        call_off: CallOffHandle,
        span: &'a orch_shared::trace::RecordedSpan,
    ) -> impl Future<Output = Result<WorkReply, AttemptError>> + Send + 'a {
        async move {
            let inbox = &call_off.0;
            let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut p) = self.inner.pending.lock() {
                p.insert(id, inbox.clone());
            }
            let _guard = PendingGuard {
                inner: &self.inner,
                id,
            };
            // Checked after registering: stop_all either sees this attempt or it sees the flag.
            if self.inner.stopped.is_cancelled() {
                return Err(AttemptError::Cancelled);
            }
            let deadline = Instant::now() + limits.budget;
            {
                let h = request_headers(limits.budget, &self.request_id(id), task_id, span);
                // The role travels in the reply subject so NATS permissions can let a
                // worker answer its own role's attempts only (deploy/nats/permissions.conf).
                let reply = subjects::attempt_reply(&self.inner.prefix, role, id);
                // Boxed: the send path is large and only lives until the request is
                // out, while the attempt itself may wait a long time for its reply.
                Box::pin(self.send(role, slot, reply, h, payload, &limits, deadline)).await?;
            }

            // Queued work may wait at the broker for a free worker: silence only
            // counts once a worker has taken it (its first heartbeat).
            let mut last_heard: Option<Instant> = (!limits.queued).then(Instant::now);
            // In a block: the timer is not kept while the worker is told to cancel.
            let err = {
                let timer = tokio::time::sleep_until(deadline.into());
                tokio::pin!(timer);
                loop {
                    let silence_deadline = match (limits.heartbeat_timeout, last_heard) {
                        (Some(t), Some(heard)) => Some(heard + t).filter(|d| *d < deadline),
                        _ => None,
                    };
                    timer
                        .as_mut()
                        .reset(silence_deadline.unwrap_or(deadline).into());
                    // What arrived wins over a timer that fired at the same time.
                    let arrived = std::future::poll_fn(|cx| match inbox.poll_arrived(cx) {
                        Poll::Ready(arrived) => Poll::Ready(Some(arrived)),
                        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
                    })
                    .await;
                    let Some(arrived) = arrived else {
                        break match (silence_deadline, last_heard) {
                            (Some(_), Some(heard)) => AttemptError::WorkerLost {
                                silent_for: heard.elapsed(),
                            },
                            _ => AttemptError::TimedOut {
                                after: limits.budget,
                            },
                        };
                    };
                    if let Some(err) = arrived.ended {
                        break err;
                    }
                    if arrived.last_heartbeat.is_some() {
                        last_heard = arrived.last_heartbeat;
                    }
                    let Some(msg) = arrived.reply else { continue };
                    if msg.status == Some(StatusCode::NO_RESPONDERS) {
                        return Err(AttemptError::NoResponders);
                    }
                    return match decode_reply(&msg) {
                        // The worker's clock ran out a hair before ours: same event, one wording.
                        Err(AttemptError::Rejected {
                            code: ErrorCode::TimedOut,
                            ..
                        }) => Err(AttemptError::TimedOut {
                            after: limits.budget,
                        }),
                        other => other,
                    };
                }
            };
            // Given up (timed out, silent, called off): stop the worker too, so
            // it aborts its model call.
            Box::pin(self.cancel(role, slot, &self.request_id(id))).await;
            Err(err)
        }
    }

    /// Publishes a work request: core request/reply to the slot's queue group,
    /// or into the `ORCH_WORK` queue (waiting for the stream's acknowledgement).
    /// The queued path is boxed: under a burst many sends wait for room in the
    /// client's outgoing buffer at once, and each holds this future meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        role: Role,
        slot: &Slot,
        reply: String,
        h: HeaderMap,
        payload: Bytes,
        limits: &AttemptLimits,
        deadline: Instant,
    ) -> Result<(), AttemptError> {
        if limits.queued {
            let budget = limits.budget;
            return Box::pin(self.send_queued(role, slot, reply, h, payload, deadline, budget))
                .await;
        }
        self.inner
            .client
            .publish_with_reply_and_headers(subjects::work(role, slot), reply, h, payload)
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))
    }

    /// Publishes a work request into the slot's `ORCH_WORK` queue and waits
    /// for the stream's acknowledgement.
    #[allow(clippy::too_many_arguments)]
    async fn send_queued(
        &self,
        role: Role,
        slot: &Slot,
        reply: String,
        mut h: HeaderMap,
        payload: Bytes,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), AttemptError> {
        if !self.queue_has_workers(role, slot).await {
            return Err(AttemptError::NoResponders);
        }
        h.insert(headers::ORCH_REPLY_TO, reply.as_str());
        let ack = self
            .inner
            .js
            .publish_with_headers(subjects::queue(role, slot), h, payload)
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        tokio::time::timeout_at(deadline.into(), ack)
            .await
            .map_err(|_| AttemptError::TimedOut { after: budget })?
            .map_err(|e| AttemptError::Transport(format!("queueing the work: {e}")))?;
        Ok(())
    }

    /// Whether workers ever pulled from the slot's queue (its consumer exists).
    /// Cached for a second when present, half a second when absent.
    async fn queue_has_workers(&self, role: Role, slot: &Slot) -> bool {
        let name = subjects::queue_consumer(role, slot);
        let now = Instant::now();
        if let Ok(cache) = self.inner.consumers.lock()
            && let Some((at, present)) = cache.get(&name)
        {
            let ttl = if *present {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(500)
            };
            if now.duration_since(*at) < ttl {
                return *present;
            }
        }
        let present = match self.inner.js.get_stream(subjects::STREAM_WORK).await {
            Ok(stream) => stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .is_ok(),
            Err(_) => false,
        };
        if let Ok(mut cache) = self.inner.consumers.lock() {
            cache.insert(name, (now, present));
        }
        present
    }

    /// Best-effort cancellation of an abandoned attempt, so the worker stops
    /// (and aborts its model call) instead of finishing work nobody waits for.
    async fn cancel(&self, role: Role, slot: &Slot, request_id: &str) {
        let subject = subjects::cancel(role, slot);
        if let Err(e) = self
            .inner
            .client
            .publish(subject, Bytes::copy_from_slice(request_id.as_bytes()))
            .await
        {
            tracing::debug!(error = %e, "cancel publish failed");
        }
    }
}

pub(crate) fn decode_reply(msg: &Message) -> Result<WorkReply, AttemptError> {
    if let Some(err) = error_from_reply(msg.headers.as_ref(), &msg.payload) {
        return Err(AttemptError::Rejected {
            code: err.error.code,
            message: err.error.message,
        });
    }
    if let Some(status) = msg.status
        && status != StatusCode::OK
    {
        return Err(AttemptError::Transport(format!(
            "NATS status {status}: {}",
            msg.description.as_deref().unwrap_or("")
        )));
    }
    let enc = Encoding::from_headers(msg.headers.as_ref())
        .map_err(|e| AttemptError::BadReply(e.message))?;
    enc.decode::<WorkReply>(&msg.payload)
        .map_err(|e| AttemptError::BadReply(e.message))
}

/// Encodes a work request for the wire (MessagePack: compact, binary screenshots).
///
/// # Errors
/// Only for unencodable values.
pub fn encode_request(req: &WorkRequest) -> Result<Bytes, AttemptError> {
    Encoding::MsgPack
        .encode(req)
        .map_err(|e| AttemptError::Transport(e.to_string()))
}
