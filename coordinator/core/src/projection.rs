//! Shared, durable statistics: every coordinator folds the final events
//! (`action_complete`, `action_failed`) of the `ORCH_EVENTS` stream into its
//! [`Stats`], so any coordinator answers `orch.v1.stats` with the same
//! numbers, before and after restarts. Final events are published once per
//! task (deduplicated by `Nats-Msg-Id`), so nothing is counted twice.
//!
//! Each final kind is read by its own ordered consumer (see [`FINAL_KINDS`]).
//! Replaying a long stream at startup would be slow, so whoever is ahead
//! writes a snapshot (totals + histograms + the stream sequence each kind is
//! read to) to the `orch_stats` bucket every few seconds with compare-and-set;
//! a starting coordinator loads it and replays only what came after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Key of the snapshot in the stats bucket (a sequence per final kind).
pub const SNAPSHOT_KEY: &str = "projection.by-kind";
/// Key of the snapshot earlier versions wrote (one sequence for both kinds):
/// read when there is no [`SNAPSHOT_KEY`] yet, never written.
pub const LEGACY_SNAPSHOT_KEY: &str = "projection";
/// How often a coordinator that is ahead refreshes the snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// JetStream API timeout of the projection's consumers. When the client
/// reconnects, async-nats checks a consumer with up to six `info` requests
/// (15 s of backoff between them) before it pulls again; when the consumer
/// was on a node that died, each request waits for this timeout. With the
/// default 10 s the shared stats stalled for ~75 s in the 3-node cluster
/// drill, with 3 s for ~33 s. Creating a consumer takes well under a second.
const API_TIMEOUT: Duration = Duration::from_secs(3);

/// The final event kinds, each read by its own consumer; an index into this
/// is how [`Progress`] and the snapshot tell them apart.
///
/// One consumer per kind, each with a single filter subject, because a
/// consumer filtering on both goes through the server's multi-filter path,
/// which is slow on a stream with a subject per task and kind (nats-server
/// 2.15): catching up on 16,000 final events took 13-14 s that way and
/// 0.36 s this way, and under load the one consumer fell behind and kept the
/// server busy after the tasks were done (the benchmark's NATS floor, measured
/// right after its p2 run, was 24-28k chains/s with it and 42-48k without).
pub const FINAL_KINDS: [EventKind; 2] = [EventKind::ActionComplete, EventKind::ActionFailed];

/// `kind`'s index in [`FINAL_KINDS`], if it is a final kind.
pub fn final_kind_index(kind: EventKind) -> Option<usize> {
    FINAL_KINDS.iter().position(|k| *k == kind)
}

/// Filter subject of one final kind's events.
pub fn final_event_subject(kind: EventKind) -> String {
    format!(
        "{}.events.*.{}",
        orch_shared::subjects::PREFIX,
        kind.as_str()
    )
}

/// How far the projection has read, for read-your-writes stats.
#[derive(Debug, Default)]
pub struct Progress {
    /// Per final kind: the last `ORCH_EVENTS` sequence of that kind folded in.
    applied: [AtomicU64; FINAL_KINDS.len()],
    /// Notified whenever the projection moves.
    pub changed: tokio::sync::Notify,
}

impl Progress {
    fn advance(&self, kind: usize, seq: u64) {
        self.applied[kind].fetch_max(seq, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Whether the final event of kind `kind` (an index into [`FINAL_KINDS`])
    /// stored at `seq` is folded in (each kind is read in stream order).
    pub fn covers(&self, kind: usize, seq: u64) -> bool {
        self.applied[kind].load(Ordering::SeqCst) >= seq
    }
}

/// Stats and, per final kind, the last `ORCH_EVENTS` sequence folded into them.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    seqs: [u64; FINAL_KINDS.len()],
    stats: StatsState,
}

/// What earlier versions stored: every final event up to `seq` folded in.
#[derive(Debug, Deserialize)]
struct LegacySnapshot {
    seq: u64,
    stats: StatsState,
}

async fn load_snapshot(store: &kv::Store) -> Option<(u64, Snapshot)> {
    let entry = store.entry(SNAPSHOT_KEY).await.ok()??;
    let snap: Snapshot = serde_json::from_slice(&entry.value).ok()?;
    Some((entry.revision, snap))
}

/// The snapshot to start from: ours, else one an earlier version wrote.
async fn starting_snapshot(store: &kv::Store) -> Option<Snapshot> {
    if let Some((_, snap)) = load_snapshot(store).await {
        return Some(snap);
    }
    let entry = store.entry(LEGACY_SNAPSHOT_KEY).await.ok()??;
    let old: LegacySnapshot = serde_json::from_slice(&entry.value).ok()?;
    Some(Snapshot {
        seqs: [old.seq; FINAL_KINDS.len()],
        stats: old.stats,
    })
}

async fn save_snapshot(store: &kv::Store, stats: &Stats, seqs: [u64; FINAL_KINDS.len()]) {
    let bytes = match serde_json::to_vec(&Snapshot {
        seqs,
        stats: stats.state(),
    }) {
        Ok(b) => Bytes::from(b),
        Err(_) => return,
    };
    let outcome = match load_snapshot(store).await {
        // Only over a snapshot ours covers and goes beyond: never over one
        // that read some kind further (another coordinator's, a moment ahead).
        Some((_, current))
            if current.seqs == seqs || current.seqs.iter().zip(seqs).any(|(c, s)| *c > s) =>
        {
            return;
        }
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
/// When a consumer cannot be created.
pub async fn start(
    durable: &Durable,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    tracker: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut seqs = [0; FINAL_KINDS.len()];
    if let Some(snap) = starting_snapshot(&durable.stats).await {
        stats.restore(&snap.stats);
        seqs = snap.seqs;
        for (kind, seq) in seqs.iter().enumerate() {
            progress.advance(kind, *seq);
        }
    }
    let from = seqs;
    // The stream exists (set up with the rest); only the timeout differs, so
    // no stream info is fetched again.
    let mut js = durable.js.clone();
    js.set_timeout(API_TIMEOUT);
    let events = js
        .get_stream_no_info(orch_shared::subjects::STREAM_EVENTS)
        .await
        .map_err(|e| format!("opening the event stream for the stats projection: {e}"))?;
    // Per kind: its consumer's messages, tagged with the kind's index, and
    // how many there are to catch up on (so the first stats answer is complete).
    let mut streams = Vec::with_capacity(FINAL_KINDS.len());
    let mut backlog = [0; FINAL_KINDS.len()];
    for (i, kind) in FINAL_KINDS.into_iter().enumerate() {
        let mut consumer = events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: final_event_subject(kind),
                max_expires: orch_shared::subjects::FOLLOW_MAX_EXPIRES,
                // At most this many ~1.2 KB events in flight while catching up.
                max_batch: 64,
                deliver_policy: match seqs[i] {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the stats projection consumer: {e}"))?;
        backlog[i] = consumer
            .info()
            .await
            .map(|info| info.num_pending)
            .map_err(|e| format!("reading the stats projection consumer: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| format!("following the event stream: {e}"))?;
        streams.push(messages.map(move |m| (i, m)));
    }
    let mut messages = futures::stream::select_all(streams);
    let started = Instant::now();
    let mut folded = [0; FINAL_KINDS.len()];
    while folded.iter().zip(backlog).any(|(f, b)| *f < b)
        && started.elapsed() < Duration::from_secs(60)
    {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some((kind, Ok(m)))) => {
                fold_into(&stats, &progress, &mut seqs, kind, &m);
                folded[kind] += 1;
            }
            Ok(Some((_, Err(e)))) => {
                tracing::warn!(error = %e, "stats projection: stream error during catch-up")
            }
            Err(_) | Ok(None) => break,
        }
    }
    tracing::info!(?from, to = ?seqs, "stats projection caught up");

    let store = durable.stats.clone();
    tracker.spawn(async move {
        let mut last_saved = seqs;
        let mut ticker = tokio::time::interval(SNAPSHOT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {
                    if seqs != last_saved {
                        save_snapshot(&store, &stats, seqs).await;
                        last_saved = seqs;
                    }
                }
                m = messages.next() => match m {
                    Some((kind, Ok(m))) => fold_into(&stats, &progress, &mut seqs, kind, &m),
                    Some((_, Err(e))) => tracing::warn!(error = %e, "stats projection: stream error"),
                    None => break,
                },
            }
        }
        if seqs != last_saved {
            save_snapshot(&store, &stats, seqs).await;
        }
    });
    Ok(())
}

/// Folds a final event of kind `kind` (an index into [`FINAL_KINDS`]) into
/// `stats` and moves that kind's sequence and the progress on.
fn fold_into(
    stats: &Stats,
    progress: &Progress,
    seqs: &mut [u64; FINAL_KINDS.len()],
    kind: usize,
    m: &async_nats::jetstream::Message,
) {
    seqs[kind] = fold(stats, m).unwrap_or(seqs[kind]).max(seqs[kind]);
    progress.advance(kind, seqs[kind]);
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
