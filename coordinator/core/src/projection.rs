//! Shared, durable statistics: every coordinator folds the final events
//! (`action_complete`, `action_failed`) of the `ORCH_EVENTS` stream into its
//! [`Stats`], so any coordinator answers `orch.v1.stats` with the same
//! numbers, before and after restarts. Final events are published once per
//! task (deduplicated by `Nats-Msg-Id`), so nothing is counted twice.
//!
//! Replaying a long stream at startup would be slow, so whoever is ahead
//! writes a snapshot (totals + histograms + the stream sequence it covers)
//! to the `orch_stats` bucket every few seconds with compare-and-set; a
//! starting coordinator loads it and replays only what came after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use orch_shared::wire::{Event, EventKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::durable::Durable;
use crate::stats::{Stats, StatsDelta, StatsState};

/// Key of the snapshot in the stats bucket.
pub const SNAPSHOT_KEY: &str = "projection";
/// How often a coordinator that is ahead refreshes the snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// How far the projection has read, for read-your-writes stats.
#[derive(Debug, Default)]
pub struct Progress {
    /// Last `ORCH_EVENTS` sequence folded in.
    pub applied: std::sync::atomic::AtomicU64,
    /// Notified whenever `applied` moves.
    pub changed: tokio::sync::Notify,
}

impl Progress {
    fn advance(&self, seq: u64) {
        self.applied
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    /// Last `ORCH_EVENTS` sequence folded in.
    seq: u64,
    stats: StatsState,
}

/// Filter subjects of the final events.
pub fn final_event_subjects() -> Vec<String> {
    [EventKind::ActionComplete, EventKind::ActionFailed]
        .iter()
        .map(|k| format!("{}.events.*.{}", orch_shared::subjects::PREFIX, k.as_str()))
        .collect()
}

async fn load_snapshot(store: &kv::Store) -> Option<(u64, Snapshot)> {
    let entry = store.entry(SNAPSHOT_KEY).await.ok()??;
    let snap: Snapshot = serde_json::from_slice(&entry.value).ok()?;
    Some((entry.revision, snap))
}

async fn save_snapshot(store: &kv::Store, stats: &Stats, seq: u64) {
    let bytes = match serde_json::to_vec(&Snapshot {
        seq,
        stats: stats.state(),
    }) {
        Ok(b) => Bytes::from(b),
        Err(_) => return,
    };
    let outcome = match load_snapshot(store).await {
        Some((_, current)) if current.seq >= seq => return,
        Some((revision, _)) => store
            .update(SNAPSHOT_KEY, bytes, revision)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => store
            .create(SNAPSHOT_KEY, bytes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = outcome {
        // Another coordinator wrote a snapshot at the same moment: fine, theirs is as good.
        tracing::debug!(error = %e, "stats snapshot not written");
    }
}

/// Loads the snapshot into `stats` and follows the event stream until `stop`.
/// Returns once the initial catch-up is done (the follow loop runs on `tracker`).
///
/// # Errors
/// When the consumer cannot be created.
pub async fn start(
    durable: &Durable,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    tracker: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> Result<(), String> {
    let start_seq = match load_snapshot(&durable.stats).await {
        Some((_, snap)) => {
            stats.restore(&snap.stats);
            progress.advance(snap.seq);
            snap.seq
        }
        None => 0,
    };
    let mut consumer = durable
        .events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: final_event_subjects(),
            max_expires: orch_shared::subjects::FOLLOW_MAX_EXPIRES,
            max_batch: 64,
            deliver_policy: if start_seq == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start_seq + 1,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the stats projection consumer: {e}"))?;
    // How many final events there are to catch up on, so the first stats answer is complete.
    let backlog = consumer
        .info()
        .await
        .map(|i| i.num_pending)
        .map_err(|e| format!("reading the stats projection consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("following the event stream: {e}"))?;
    let mut seq = start_seq;
    let started = Instant::now();
    let mut folded = 0;
    while folded < backlog && started.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => {
                seq = fold(&stats, &m).unwrap_or(seq).max(seq);
                progress.advance(seq);
                folded += 1;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "stats projection: stream error during catch-up")
            }
            Err(_) | Ok(None) => break,
        }
    }
    tracing::info!(from = start_seq, to = seq, "stats projection caught up");

    let store = durable.stats.clone();
    tracker.spawn(async move {
        let mut last_saved = seq;
        let mut ticker = tokio::time::interval(SNAPSHOT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {
                    if seq > last_saved {
                        save_snapshot(&store, &stats, seq).await;
                        last_saved = seq;
                    }
                }
                m = messages.next() => match m {
                    Some(Ok(m)) => {
                        seq = fold(&stats, &m).unwrap_or(seq).max(seq);
                        progress.advance(seq);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "stats projection: stream error"),
                    None => break,
                },
            }
        }
        if seq > last_saved {
            save_snapshot(&store, &stats, seq).await;
        }
    });
    Ok(())
}

/// Applies one final event; returns its stream sequence.
fn fold(stats: &Stats, m: &async_nats::jetstream::Message) -> Option<u64> {
    let seq = m.info().ok()?.stream_sequence;
    match serde_json::from_slice::<Event>(&m.payload) {
        Ok(e) => match serde_json::from_value::<StatsDelta>(e.details["stats"].clone()) {
            Ok(delta) => stats.apply(&delta),
            Err(err) => {
                tracing::warn!(task_id = %e.task_id, error = %err, "final event without stats")
            }
        },
        Err(err) => tracing::warn!(subject = %m.subject, error = %err, "undecodable final event"),
    }
    Some(seq)
}
