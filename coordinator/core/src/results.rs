//! Results in the `orch_results` bucket, keyed by task id, written so a task
//! finishes **exactly once** even when two coordinators run it (a redelivery
//! after a crash, or a slow coordinator whose ack deadline passed):
//!
//! 1. at start, a `pending` marker is *created* (or the existing one read);
//! 2. at the end, the result replaces the marker with a compare-and-set on the
//!    marker's revision (or a create when there was none).
//!
//! Only one writer can win step 2; the loser sees the stored result and does
//! not publish a second `action_complete`. Winners announce the result on
//! `orch.v1.results.<task_id>`.

use async_nats::Client;
use async_nats::jetstream::kv;
use bytes::Bytes;
use orch_shared::codec::Encoding;
use orch_shared::wire::{OrchestratedResult, now_rfc3339};
use orch_shared::{TaskId, subjects};
use serde::{Deserialize, Serialize};

/// The marker stored while a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Always `pending`.
    pub status: String,
    /// The task.
    pub task_id: String,
    /// When the marker was written.
    pub since: String,
    /// Which coordinator wrote it.
    pub coordinator: String,
}

/// What the bucket holds for a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Nothing.
    Missing,
    /// A run started; `revision` is the marker's.
    Pending {
        /// KV revision of the marker.
        revision: u64,
        /// The marker.
        marker: Pending,
    },
    /// Finished.
    Done(Box<OrchestratedResult>),
}

/// The outcome of trying to store a final result.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// This run's result is the stored one.
    Stored,
    /// Another run stored its result first (this is it).
    AlreadyDone(Box<OrchestratedResult>),
}

/// A result encoded once, as the JSON the bucket stores: the same bytes are
/// stored, announced and (to a JSON client) sent as the reply.
#[derive(Debug, Clone)]
pub struct EncodedResult {
    id: TaskId,
    json: Bytes,
}

impl EncodedResult {
    /// Encodes `result`.
    ///
    /// # Errors
    /// When its task id is invalid or it cannot be encoded.
    pub fn new(result: &OrchestratedResult) -> Result<EncodedResult, StoreError> {
        let id = result
            .task_id
            .parse()
            .map_err(|e| StoreError(format!("{e}")))?;
        let json = Encoding::Json
            .encode(result)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(EncodedResult { id, json })
    }

    /// The task.
    pub fn task_id(&self) -> &TaskId {
        &self.id
    }

    /// The result as JSON.
    pub fn json(&self) -> &Bytes {
        &self.json
    }
}

/// A results bucket failure.
#[derive(Debug, thiserror::Error)]
#[error("results store: {0}")]
pub struct StoreError(pub String);

/// Access to the results bucket.
#[derive(Clone)]
pub struct ResultStore {
    kv: kv::Store,
    /// The JetStream context the bucket was opened with (see
    /// [`ResultStore::create_if_absent`]).
    js: async_nats::jetstream::Context,
    client: Client,
    coordinator: String,
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Result<OrchestratedResult, Pending>, StoreError> {
    if let Ok(p) = serde_json::from_slice::<Pending>(bytes)
        && p.status == "pending"
    {
        return Ok(Err(p));
    }
    serde_json::from_slice::<OrchestratedResult>(bytes)
        .map(Ok)
        .map_err(|e| StoreError(format!("undecodable entry: {e}")))
}

impl ResultStore {
    /// Wraps the bucket, opened through `js`.
    pub fn new(
        kv: kv::Store,
        js: async_nats::jetstream::Context,
        client: Client,
        coordinator: &str,
    ) -> ResultStore {
        ResultStore {
            kv,
            js,
            client,
            coordinator: coordinator.to_string(),
        }
    }

    /// What is stored for `id`.
    ///
    /// # Errors
    /// When the bucket cannot be read.
    pub async fn lookup(&self, id: &TaskId) -> Result<Stored, StoreError> {
        Self::stored(self.entry(id).await?)
    }

    /// The bucket's entry for `id`, unless there is none or it was deleted.
    async fn entry(&self, id: &TaskId) -> Result<Option<kv::Entry>, StoreError> {
        let entry = self
            .kv
            .entry(id.as_str())
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(entry.filter(|e| !matches!(e.operation, kv::Operation::Delete | kv::Operation::Purge)))
    }

    fn stored(entry: Option<kv::Entry>) -> Result<Stored, StoreError> {
        let Some(entry) = entry else {
            return Ok(Stored::Missing);
        };
        Ok(match decode(&entry.value)? {
            Ok(result) => Stored::Done(Box::new(result)),
            Err(marker) => Stored::Pending {
                revision: entry.revision,
                marker,
            },
        })
    }

    /// Records that a run of `id` started, unless something is already stored.
    /// Returns what was there before (or the new marker).
    ///
    /// # Errors
    /// When the bucket cannot be written or read.
    pub async fn start(&self, id: &TaskId) -> Result<Stored, StoreError> {
        let marker = Pending {
            status: "pending".into(),
            task_id: id.to_string(),
            since: now_rfc3339(),
            coordinator: self.coordinator.clone(),
        };
        let bytes =
            Bytes::from(serde_json::to_vec(&marker).map_err(|e| StoreError(e.to_string()))?);
        // Written only if the key has no entry, as `create` does first. Every
        // task starts with this future alive beside it until the stream
        // acknowledges; `create` (2.4 KB with the read of an existing entry it
        // falls back to) and even `update` (1.1 KB) would make the thousands
        // alive during a burst of submits a large part of what the allocator
        // keeps. The rare cases, an entry that exists or existed (deleted or
        // purged) or a failed write, go through `create`, boxed.
        if let Some(revision) = self.create_if_absent(id.as_str(), bytes.clone()).await {
            return Ok(Stored::Pending { revision, marker });
        }
        match Box::pin(self.kv.create(id.as_str(), bytes)).await {
            Ok(revision) => Ok(Stored::Pending { revision, marker }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Box::pin(self.lookup(id)).await
            }
            Err(e) => Err(StoreError(e.to_string())),
        }
    }

    /// Writes `value` under `key` if the key has no entry, returning the
    /// entry's revision: `kv::Store::update(key, value, 0)`, as the JetStream
    /// publish it is (to the bucket's put subject, expecting no earlier
    /// message on it) with only the sending step boxed. A bucket reached
    /// through a JetStream API prefix or domain goes through `update` itself.
    /// `None` when the entry exists or the write failed.
    async fn create_if_absent(&self, key: &str, value: Bytes) -> Option<u64> {
        if self.kv.use_jetstream_prefix {
            return Box::pin(self.kv.update(key, value, 0)).await.ok();
        }
        let prefix = self.kv.put_prefix.as_deref().unwrap_or(&self.kv.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        let ack = Box::pin(
            self.js
                .publish_with_headers(format!("{prefix}{key}"), headers, value),
        )
        .await
        .ok()?;
        ack.await.ok().map(|ack| ack.sequence)
    }

    /// Stores the final result unless another run already did.
    ///
    /// # Errors
    /// When the bucket cannot be written or read.
    pub async fn finish(
        &self,
        result: &EncodedResult,
        pending_revision: Option<u64>,
    ) -> Result<Finish, StoreError> {
        let (id, bytes) = (result.task_id(), result.json().clone());
        let written = match pending_revision {
            Some(rev) => self
                .kv
                .update(id.as_str(), bytes, rev)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => self
                .kv
                .create(id.as_str(), bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        let Err(write_err) = written else {
            return Ok(Finish::Stored);
        };
        let entry = self.entry(id).await?;
        // Our own write whose answer was lost (a reconnect, a stream leader
        // lost mid-write), found by its retry: the entry holds exactly our
        // bytes. Another run's result differs (its times at least); were it
        // the very same bytes (two cache hits), it is the same result, and its
        // final event is deduplicated by id.
        if entry.as_ref().is_some_and(|e| e.value == *result.json()) {
            return Ok(Finish::Stored);
        }
        match Self::stored(entry)? {
            Stored::Done(other) => Ok(Finish::AlreadyDone(other)),
            // Another run re-marked it (its marker replaced ours): we lost the race
            // for the marker but nobody finished; store ours over the newer marker.
            Stored::Pending { revision, .. } if Some(revision) != pending_revision => {
                Box::pin(self.finish(result, Some(revision))).await
            }
            _ => Err(StoreError(write_err)),
        }
    }

    /// Announces `result` (stored by another run) again: [`ResultStore::announce`].
    pub async fn announce_again(&self, result: &OrchestratedResult) {
        match EncodedResult::new(result) {
            Ok(encoded) => self.announce(&encoded).await,
            Err(e) => {
                tracing::warn!(task_id = %result.task_id, error = %e, "encoding a result failed");
            }
        }
    }

    /// Announces a stored result on `orch.v1.results.<task_id>` (best effort:
    /// waiters also poll `orch.v1.results.get`).
    pub async fn announce(&self, result: &EncodedResult) {
        let id = result.task_id();
        if let Err(e) = self
            .client
            .publish_with_headers(
                subjects::result(id),
                Encoding::Json.headers(),
                result.json().clone(),
            )
            .await
        {
            tracing::warn!(task_id = %id, error = %e, "announcing a result failed");
        }
    }
}
