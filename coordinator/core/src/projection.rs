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

use async_nats::jetstream::consumer;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use orch_shared::reconnect::{self, ReconnectWatch};
use orch_shared::wire::EventKind;
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
/// JetStream API timeout of the projection's requests (creating its
/// consumers): while a cluster elects a new leader for the event stream
/// after losing a node, requests go unanswered, and each waits this long
/// before [`start`]'s follow loop tries again. Creating a consumer takes well
/// under a second. (It also bounds async-nats' own check of a consumer after a
/// reconnect, six requests: ~75 s of stalled stats with the default 10 s, when
/// that check was what recovered the projection.)
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

/// Every final kind's messages, tagged with the kind's index.
type Merged = futures::stream::SelectAll<
    futures::stream::BoxStream<
        'static,
        (
            usize,
            Result<async_nats::jetstream::Message, consumer::pull::OrderedError>,
        ),
    >,
>;

/// Opens one ordered consumer per final kind, each from the event after
/// `seqs[kind]`. Returns their merged messages and, per kind, how many there
/// are to catch up on.
async fn open(
    events: &async_nats::jetstream::stream::Stream<()>,
    seqs: [u64; FINAL_KINDS.len()],
) -> Result<(Merged, [u64; FINAL_KINDS.len()]), String> {
    let mut streams = Vec::with_capacity(FINAL_KINDS.len());
    let mut backlog = [0; FINAL_KINDS.len()];
    for (i, kind) in FINAL_KINDS.into_iter().enumerate() {
        let consumer = events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: final_event_subject(kind),
                max_expires: orch_shared::subjects::FOLLOW_MAX_EXPIRES,
                // At most this many ~1.2 KB events in flight while catching up.
                max_batch: 64,
                deliver_policy: reconnect::resume_after(seqs[i]),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the stats projection consumer: {e}"))?;
        // As the server answered the creation: no request of its own.
        backlog[i] = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| format!("following the event stream: {e}"))?;
        streams.push(messages.map(move |m| (i, m)).boxed());
    }
    Ok((futures::stream::select_all(streams), backlog))
}

/// Opens the consumers again (see [`open`]) until that works or `stop`;
/// `None` on `stop`. While a cluster elects a new leader for the stream,
/// creating a consumer fails: retried as [`reconnect::retry`] does.
async fn reopen(
    events: &async_nats::jetstream::stream::Stream<()>,
    seqs: [u64; FINAL_KINDS.len()],
    stop: &CancellationToken,
) -> Option<Merged> {
    let opened = reconnect::retry("stats projection", || open(events, seqs));
    tokio::select! {
        () = stop.cancelled() => None,
        (messages, _) = opened => {
            tracing::info!(?seqs, "stats projection: following the event stream again");
            Some(messages)
        }
    }
}

/// Loads the snapshot into `stats` and follows the event stream until `stop`.
/// Returns once the initial catch-up is done (the follow loop runs on `tracker`).
///
/// The follow loop recovers on its own instead of leaving it to async-nats'
/// ordered consumers: after the connection is re-established (a server
/// restart, or the NATS node this coordinator was connected to lost) and
/// after any error of a consumer (its node lost: missed heartbeats), it
/// creates both consumers again from the last sequence folded in, retrying
/// every 0.5 to 4 s. async-nats would first check the old consumer with six
/// `info` requests and 15 s of backoff (after a server restart that lost
/// it, or a node loss, none answer), and recreate with backoff of up to 10 s.
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
    let mut watch = ReconnectWatch::new(&js.client());
    // The backlog per kind makes the first stats answer complete.
    let (mut messages, backlog) = open(&events, seqs).await?;
    let started = Instant::now();
    let mut folded = [0; FINAL_KINDS.len()];
    while folded.iter().zip(backlog).any(|(f, b)| *f < b)
        && started.elapsed() < Duration::from_secs(60)
    {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some((kind, Ok(m)))) => {
                if fold_into(&stats, &progress, &mut seqs, kind, &m) {
                    folded[kind] += 1;
                }
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
            let why = tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {
                    if seqs != last_saved {
                        save_snapshot(&store, &stats, seqs).await;
                        last_saved = seqs;
                    }
                    continue;
                }
                () = watch.reconnected() => "reconnected to NATS".to_string(),
                m = messages.next() => match m {
                    Some((kind, Ok(m))) => {
                        fold_into(&stats, &progress, &mut seqs, kind, &m);
                        continue;
                    }
                    Some((_, Err(e))) => format!("stream error: {e}"),
                    None => "the consumers ended".to_string(),
                },
            };
            tracing::warn!(reason = %why, ?seqs, "stats projection: creating its consumers again");
            // The old consumers go (async-nats stops their pulls on drop; the
            // server removes them once inactive).
            drop(std::mem::take(&mut messages));
            // Before reopening: a reconnect while it runs means once more.
            watch.mark();
            match reopen(&events, seqs, &stop).await {
                Some(m) => messages = m,
                None => break,
            }
        }
        if seqs != last_saved {
            save_snapshot(&store, &stats, seqs).await;
        }
    });
    Ok(())
}

/// Folds a final event of kind `kind` (an index into [`FINAL_KINDS`]) into
/// `stats` and moves that kind's sequence and the progress on. An event at or
/// before the kind's sequence is already in (a consumer created again from a
/// sequence cannot deliver one, but a count must never double): skipped.
/// Returns whether it was folded in.
fn fold_into(
    stats: &Stats,
    progress: &Progress,
    seqs: &mut [u64; FINAL_KINDS.len()],
    kind: usize,
    m: &async_nats::jetstream::Message,
) -> bool {
    let Ok(info) = m.info() else {
        tracing::warn!(subject = %m.subject, "final event without JetStream metadata");
        return false;
    };
    let seq = info.stream_sequence;
    if seq <= seqs[kind] {
        return false;
    }
    fold(stats, m);
    seqs[kind] = seq;
    progress.advance(kind, seq);
    true
}

/// Applies one final event.
fn fold(stats: &Stats, m: &async_nats::jetstream::Message) {
    match final_event_delta(&m.payload) {
        Ok(delta) => stats.apply(&delta),
        Err(err) => tracing::warn!(subject = %m.subject, error = %err, "undecodable final event"),
    }
}

/// The stats contribution a final event carries (`details.stats`), read
/// without building the rest of the event.
///
/// # Errors
/// When `payload` is not a final event with stats.
pub(crate) fn final_event_delta(payload: &[u8]) -> Result<StatsDelta, serde_json::Error> {
    #[derive(Deserialize)]
    struct Final {
        details: Details,
    }
    #[derive(Deserialize)]
    struct Details {
        stats: StatsDelta,
    }
    serde_json::from_slice::<Final>(payload).map(|f| f.details.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::Event;

    #[test]
    fn a_final_event_gives_back_the_delta_it_was_built_from() {
        let result = orch_shared::wire::OrchestratedResult {
            task_id: "t-1".into(),
            task: "t".into(),
            primary_answer: None,
            model_results: Default::default(),
            confidence: 0.75,
            conflicts: vec!["vision saw an error page".into()],
            execution_time_ms: 12.5,
            models_used: vec![],
            fallback_chain: vec!["reasoner/kimi_k2: timed_out".into()],
            attempts: vec![],
            trace_id: None,
            cached: false,
        };
        let delta = StatsDelta::of(&result);
        assert_eq!((delta.conflicts, delta.fallbacks), (1, 1));
        let (kind, details) = crate::events::final_event(&result, &delta);
        let event = Event {
            task_id: "t-1".into(),
            kind,
            ts: "2026-01-01T00:00:00.000Z".into(),
            trace_id: None,
            details,
        };
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(final_event_delta(&bytes).unwrap(), delta);

        let without = serde_json::to_vec(&Event {
            details: serde_json::json!({"confidence": 0.5}),
            ..event
        })
        .unwrap();
        assert!(final_event_delta(&without).is_err());
        assert!(final_event_delta(b"not json").is_err());
    }
}
