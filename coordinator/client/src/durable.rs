//! The JetStream side of the SDK: durable submission (survives coordinator
//! crashes and server restarts, answered exactly once), stored results,
//! event replay, and uploads of screenshots too large to send inline.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{Stream, StreamExt as _};
use orch_shared::codec::Encoding;
use orch_shared::reconnect::{self, ReconnectWatch};
use orch_shared::wire::{
    Event, EventKind, ObjectRef, OrchestratedResult, ResultQuery, SubmitRequest,
};
use orch_shared::{ErrorBody, ErrorCode, TaskId, subjects};
use sha2::{Digest as _, Sha256};

use crate::{ClientError, Orchestrator};

/// Screenshots above this size are uploaded to the `orch_screenshots` object
/// store and sent by reference (NATS' default max payload is 1 MiB).
pub const INLINE_SCREENSHOT_LIMIT: usize = 512 * 1024;

/// Where an event replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The oldest retained event.
    Start,
    /// Only events published from now on.
    New,
    /// Events at or after this stream sequence.
    Sequence(u64),
    /// Events at or after this time (Unix seconds).
    UnixTime(i64),
}

/// A replayed event with its stream sequence.
pub type Sequenced = (u64, Event);

/// Events from the `ORCH_EVENTS` stream, in order, each once.
///
/// It recovers by itself: after its connection is re-established (a server
/// restart, the loss of the node it was connected to) or an error of its
/// consumer, it creates the consumer again from the event after the last one
/// it gave out, retrying every 0.5 to 4 s (logged at warn) for as long as it
/// is followed. Left to async-nats' ordered consumer, a follow stalled 15 s
/// and more after a server restart and yielded errors that ended `orch
/// events --follow`. Items are `Ok`; the `Result` is kept for callers.
pub struct EventReplay {
    inner: futures::stream::BoxStream<'static, Result<Sequenced, ClientError>>,
}

impl Stream for EventReplay {
    type Item = Result<Sequenced, ClientError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// An ordered consumer on `events` for `filter` from `deliver_policy`, and the
/// stream sequence just before the first event it will deliver (as the
/// server answered the creation).
async fn open_replay(
    events: &jetstream::stream::Stream,
    filter: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<(consumer::pull::Ordered, u64), ClientError> {
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            max_expires: subjects::FOLLOW_MAX_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("creating the replay consumer")(e.to_string()))?;
    let before = consumer.cached_info().delivered.stream_sequence;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| js_err("replaying events")(e.to_string()))?;
    Ok((messages, before))
}

/// What a replay keeps between events (see [`EventReplay`]).
struct Follow {
    events: jetstream::stream::Stream,
    filter: String,
    /// Stream sequence of the last event given out (or just before the first).
    last: u64,
    /// `None` while it has to be created again.
    messages: Option<consumer::pull::Ordered>,
    watch: ReconnectWatch,
}

impl Follow {
    async fn next(&mut self) -> Sequenced {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.reopen().await;
                continue;
            };
            tokio::select! {
                biased;
                m = messages.next() => match m {
                    Some(Ok(m)) => {
                        let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                            tracing::warn!(subject = %m.subject, "skipping an event without JetStream metadata");
                            continue;
                        };
                        if seq <= self.last {
                            continue;
                        }
                        self.last = seq;
                        match serde_json::from_slice::<Event>(&m.payload) {
                            Ok(e) => return (seq, e),
                            Err(e) => tracing::warn!(seq, error = %e, "skipping undecodable event"),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "event replay: consumer error; creating it again");
                        self.messages = None;
                    }
                    None => self.messages = None,
                },
                () = self.watch.reconnected() => {
                    tracing::info!(after = self.last, "event replay: reconnected; creating its consumer again");
                    self.messages = None;
                }
            }
        }
    }

    /// Creates the consumer again from the event after `last`, until that
    /// works (retried as [`reconnect::retry`] does).
    async fn reopen(&mut self) {
        // First: a reconnect while this runs means once more.
        self.watch.mark();
        let policy = reconnect::resume_after(self.last);
        let (events, filter) = (&self.events, &self.filter);
        let (messages, _) =
            reconnect::retry("event replay", || open_replay(events, filter, policy)).await;
        self.messages = Some(messages);
    }
}

fn js_err(what: &str) -> impl Fn(String) -> ClientError + '_ {
    move |e| ClientError::Nats(format!("{what}: {e}"))
}

impl Orchestrator {
    /// The JetStream context of this connection.
    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Uploads a screenshot to the object store (named by its SHA-256, so the
    /// same image is stored once) and returns the reference to send instead.
    ///
    /// # Errors
    /// When the object store is missing (no coordinator with JetStream has
    /// started yet) or the upload fails.
    pub async fn upload_screenshot(&self, bytes: &[u8]) -> Result<ObjectRef, ClientError> {
        let name: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let store = self
            .jetstream()
            .get_object_store(subjects::OBJ_SCREENSHOTS)
            .await
            .map_err(|e| js_err("opening the screenshot object store")(e.to_string()))?;
        if let Ok(info) = store.info(&name).await
            && info.size == bytes.len()
        {
            return Ok(ObjectRef::screenshot(name));
        }
        let mut reader = bytes;
        store
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| js_err("uploading the screenshot")(e.to_string()))?;
        Ok(ObjectRef::screenshot(name))
    }

    /// Moves a large inline screenshot to the object store.
    pub(crate) async fn prepare<'a>(
        &self,
        request: &'a SubmitRequest,
    ) -> Result<Cow<'a, SubmitRequest>, ClientError> {
        match &request.screenshot {
            Some(s) if s.len() > INLINE_SCREENSHOT_LIMIT => {
                let r = self.upload_screenshot(&s.0).await?;
                let mut owned = request.clone();
                owned.screenshot = None;
                owned.screenshot_ref = Some(r);
                Ok(Cow::Owned(owned))
            }
            _ => Ok(Cow::Borrowed(request)),
        }
    }

    /// Submits a task durably: published to `orch.v1.tasks.<task_id>` with
    /// `Nats-Msg-Id: <task_id>` and acknowledged by JetStream. Publishing the
    /// same task id again within the dedup window is dropped. Returns the task id.
    ///
    /// # Errors
    /// When JetStream does not acknowledge the task.
    pub async fn submit_durable(&self, request: &SubmitRequest) -> Result<TaskId, ClientError> {
        let id: TaskId = match &request.task_id {
            Some(id) => id.parse().map_err(|e: orch_shared::ids::InvalidId| {
                ClientError::Rejected(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))
            })?,
            None => TaskId::generate(),
        };
        let mut owned = self.prepare(request).await?.into_owned();
        owned.task_id = Some(id.to_string());
        let payload = self
            .encoding
            .encode(&owned)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut headers = self.encoding.headers();
        headers.insert("Nats-Msg-Id", id.as_str());
        orch_shared::trace::inject(&mut headers);
        let ack = self
            .jetstream()
            .publish_with_headers(subjects::task(&id), headers, payload)
            .await
            .map_err(|e| js_err("publishing the task")(e.to_string()))?
            .await
            .map_err(|e| js_err("waiting for the task's acknowledgement (is a coordinator with JetStream running?)")(e.to_string()))?;
        tracing::debug!(task_id = %id, seq = ack.sequence, duplicate = ack.duplicate, "task stored");
        Ok(id)
    }

    /// The stored result of a task.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] with `not_found` or `pending`, or a transport error.
    pub async fn result(&self, task_id: &TaskId) -> Result<OrchestratedResult, ClientError> {
        let q = ResultQuery {
            task_id: task_id.to_string(),
        };
        self.request(subjects::RESULTS_GET, &q, Duration::from_secs(5))
            .await
    }

    /// Waits until the task's result is stored (announcement or polling), up to `timeout`.
    ///
    /// # Errors
    /// [`ClientError::TimedOut`], or what [`Orchestrator::result`] returns besides `pending`/`not_found`.
    pub async fn wait_result(
        &self,
        task_id: &TaskId,
        timeout: Duration,
    ) -> Result<OrchestratedResult, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut announced = self
            .client
            .subscribe(subjects::result(task_id))
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        let mut poll = Duration::from_millis(200);
        loop {
            match self.result(task_id).await {
                Ok(r) => return Ok(r),
                // Not there yet, no coordinator answering right now (restarting, busy),
                // or the results store briefly unreachable (a cluster electing a
                // new leader): keep waiting until the deadline.
                Err(ClientError::Rejected(e))
                    if matches!(
                        e.error.code,
                        ErrorCode::Pending | ErrorCode::NotFound | ErrorCode::Unavailable
                    ) => {}
                Err(
                    ClientError::NoCoordinator(_) | ClientError::TimedOut(_) | ClientError::Nats(_),
                ) => {}
                Err(e) => return Err(e),
            }
            let wait = poll.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return Err(ClientError::TimedOut(timeout));
            }
            if let Ok(Some(m)) = tokio::time::timeout(wait, announced.next()).await
                && let Ok(r) = Encoding::Json.decode::<OrchestratedResult>(&m.payload)
            {
                return Ok(r);
            }
            poll = (poll * 2).min(Duration::from_secs(2));
        }
    }

    /// Replays events from the `ORCH_EVENTS` stream in order, optionally for one
    /// task and/or one kind, from `from`; the stream then follows new events.
    ///
    /// # Errors
    /// When the stream is missing or the consumer cannot be created.
    pub async fn replay_events(
        &self,
        task_id: Option<&TaskId>,
        kind: Option<EventKind>,
        from: ReplayFrom,
    ) -> Result<EventReplay, ClientError> {
        let filter = format!(
            "{}.events.{}.{}",
            subjects::PREFIX,
            task_id.map_or("*", |t| t.as_str()),
            kind.map_or(">", |k| k.as_str())
        );
        let deliver_policy = match from {
            ReplayFrom::Start => consumer::DeliverPolicy::All,
            ReplayFrom::New => consumer::DeliverPolicy::New,
            ReplayFrom::Sequence(start_sequence) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            ReplayFrom::UnixTime(secs) => consumer::DeliverPolicy::ByStartTime {
                start_time: time_from_unix(secs)?,
            },
        };
        let events = self
            .jetstream()
            .get_stream(subjects::STREAM_EVENTS)
            .await
            .map_err(|e| js_err("opening the event stream")(e.to_string()))?;
        let watch = ReconnectWatch::new(self.nats());
        let (messages, last) = open_replay(&events, &filter, deliver_policy).await?;
        let follow = Follow {
            events,
            filter,
            last,
            messages: Some(messages),
            watch,
        };
        let inner = futures::stream::unfold(follow, |mut f| async move {
            let next = f.next().await;
            Some((Ok(next), f))
        })
        .boxed();
        Ok(EventReplay { inner })
    }
}

fn time_from_unix(secs: i64) -> Result<time::OffsetDateTime, ClientError> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| ClientError::Decode(format!("invalid start time: {e}")))
}
