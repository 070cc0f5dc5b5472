//! The seed's `get_stats()` numbers plus latency percentiles for the task and
//! for every role/slot.
//!
//! Every finished task yields a [`StatsDelta`]; it travels inside the task's
//! final event (`action_complete` / `action_failed`). With JetStream, every
//! coordinator folds the final events of the `ORCH_EVENTS` stream into its
//! [`Stats`] (see [`crate::projection`]), so all coordinators report the same
//! numbers, and they survive restarts. Without JetStream each coordinator
//! applies its own deltas.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use orch_shared::wire::{LatencySummary, OrchestratedResult, StatsReport};
use serde::{Deserialize, Serialize};

/// Histogram range: 1 µs .. 1 hour.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant digits of a latency series: percentiles within 1 %. Three
/// digits cost 188 KB of counters per series (every role/slot pair this
/// coordinator has seen, kept for its life), two 27 KB.
const HIST_DIGITS: u8 = 2;

/// One task's contribution to the stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsDelta {
    /// Whether the task produced a primary answer.
    pub succeeded: bool,
    /// Its confidence.
    pub confidence: f64,
    /// Its wall time.
    pub execution_time_ms: f64,
    /// Conflicts found.
    pub conflicts: u64,
    /// Failed attempts.
    pub fallbacks: u64,
    /// Successful results per model id.
    pub model_usage: BTreeMap<String, u64>,
    /// Latencies: `task` and `role/slot` of every successful attempt.
    pub latency_ms: Vec<(String, f64)>,
    /// Served from the cache.
    pub cached: bool,
}

impl StatsDelta {
    /// The contribution of `r`.
    pub fn of(r: &OrchestratedResult) -> StatsDelta {
        let mut model_usage = BTreeMap::new();
        for m in r
            .model_results
            .values()
            .filter(|m| m.success && !m.model.is_empty())
        {
            *model_usage.entry(m.model.clone()).or_default() += 1;
        }
        let mut latency_ms = vec![("task".to_string(), r.execution_time_ms)];
        if !r.cached {
            latency_ms.extend(
                r.attempts
                    .iter()
                    .filter(|a| a.outcome == "ok")
                    .map(|a| (format!("{}/{}", a.role, a.slot), a.latency_ms)),
            );
        }
        StatsDelta {
            succeeded: r.succeeded(),
            confidence: r.confidence,
            execution_time_ms: r.execution_time_ms,
            conflicts: r.conflicts.len() as u64,
            fallbacks: if r.cached {
                0
            } else {
                r.fallback_chain.len() as u64
            },
            model_usage: if r.cached {
                BTreeMap::new()
            } else {
                model_usage
            },
            latency_ms,
            cached: r.cached,
        }
    }
}

/// Serializable totals (for snapshots).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsState {
    /// Tasks.
    pub total: u64,
    /// Tasks with a primary answer.
    pub successes: u64,
    /// Sum of confidences, in millionths (integers, so every coordinator adds up
    /// to exactly the same number whatever the order).
    pub confidence_sum_ppm: u64,
    /// Sum of wall times, in microseconds.
    pub time_sum_us: u64,
    /// Conflicts.
    pub conflicts: u64,
    /// Failed attempts.
    pub fallbacks: u64,
    /// Cache hits.
    pub cache_hits: u64,
    /// Per model.
    pub model_usage: BTreeMap<String, u64>,
    /// Histograms as (value in µs, count) pairs.
    pub latency: BTreeMap<String, Vec<(u64, u64)>>,
}

#[derive(Default)]
struct Inner {
    total: u64,
    successes: u64,
    confidence_sum_ppm: u64,
    time_sum_us: u64,
    conflicts: u64,
    fallbacks: u64,
    cache_hits: u64,
    model_usage: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram<u64>>,
}

fn new_hist() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_DIGITS).ok()
}

fn record(h: &mut BTreeMap<String, Histogram<u64>>, key: &str, us: u64, count: u64) {
    if !h.contains_key(key) {
        let Some(hist) = new_hist() else { return };
        h.insert(key.to_string(), hist);
    }
    if let Some(hist) = h.get_mut(key) {
        let _ = hist.record_n(us.clamp(1, HIST_MAX_US), count);
    }
}

/// Summarises a histogram recorded in microseconds.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// Running totals.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

impl Stats {
    /// Adds one finished task.
    pub fn apply(&self, d: &StatsDelta) {
        let Ok(mut s) = self.inner.lock() else { return };
        // Deltas are decoded from the events stream: counters saturate rather
        // than overflow on absurd values (a panic in debug builds, wrapped
        // totals in release).
        s.total = s.total.saturating_add(1);
        if d.succeeded {
            s.successes = s.successes.saturating_add(1);
        }
        if d.cached {
            s.cache_hits = s.cache_hits.saturating_add(1);
        }
        let ppm = (d.confidence.clamp(0.0, 1.0) * 1e6).round() as u64;
        s.confidence_sum_ppm = s.confidence_sum_ppm.saturating_add(ppm);
        let us = (d.execution_time_ms.max(0.0) * 1000.0).round() as u64;
        s.time_sum_us = s.time_sum_us.saturating_add(us);
        s.conflicts = s.conflicts.saturating_add(d.conflicts);
        s.fallbacks = s.fallbacks.saturating_add(d.fallbacks);
        for (m, n) in &d.model_usage {
            let count = s.model_usage.entry(m.clone()).or_default();
            *count = count.saturating_add(*n);
        }
        for (series, ms) in &d.latency_ms {
            record(&mut s.latency, series, (ms * 1000.0).max(1.0) as u64, 1);
        }
    }

    /// The totals, for a snapshot.
    pub fn state(&self) -> StatsState {
        let Ok(s) = self.inner.lock() else {
            return StatsState::default();
        };
        StatsState {
            total: s.total,
            successes: s.successes,
            confidence_sum_ppm: s.confidence_sum_ppm,
            time_sum_us: s.time_sum_us,
            conflicts: s.conflicts,
            fallbacks: s.fallbacks,
            cache_hits: s.cache_hits,
            model_usage: s.model_usage.clone(),
            latency: s
                .latency
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        h.iter_recorded()
                            .map(|v| (v.value_iterated_to(), v.count_at_value()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// Replaces the totals with a snapshot.
    pub fn restore(&self, st: &StatsState) {
        let Ok(mut s) = self.inner.lock() else { return };
        let mut latency = BTreeMap::new();
        for (k, pairs) in &st.latency {
            for (us, n) in pairs {
                record(&mut latency, k, *us, *n);
            }
        }
        *s = Inner {
            total: st.total,
            successes: st.successes,
            confidence_sum_ppm: st.confidence_sum_ppm,
            time_sum_us: st.time_sum_us,
            conflicts: st.conflicts,
            fallbacks: st.fallbacks,
            cache_hits: st.cache_hits,
            model_usage: st.model_usage.clone(),
            latency,
        };
    }

    /// The current numbers.
    pub fn report(&self, in_flight: u64, scope: &str) -> StatsReport {
        let Ok(s) = self.inner.lock() else {
            return StatsReport::default();
        };
        let n = s.total.max(1) as f64;
        let avg = |x: f64| if s.total == 0 { 0.0 } else { x / n };
        StatsReport {
            total_executions: s.total,
            success_rate: avg(s.successes as f64),
            avg_confidence: avg(s.confidence_sum_ppm as f64 / 1e6),
            avg_execution_time_ms: avg(s.time_sum_us as f64 / 1000.0),
            conflicts_detected: s.conflicts,
            fallbacks_triggered: s.fallbacks,
            model_usage: s.model_usage.clone(),
            cache_hits: s.cache_hits,
            latency: s
                .latency
                .iter()
                .map(|(k, h)| (k.clone(), summarize(h)))
                .collect(),
            in_flight,
            scope: scope.to_string(),
            // Per process, not per fleet: filled in by the coordinator.
            slow_consumer_events: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_series_is_small_and_its_percentiles_within_one_percent() {
        let mut h = new_hist().expect("histogram bounds are valid");
        // Counters kept per role/slot series for the coordinator's life.
        let bytes = h.distinct_values() * std::mem::size_of::<u64>();
        assert!(bytes <= 32 * 1024, "{bytes} bytes per series");
        for us in [1_437_u64, 52_000, 2_300_000, 1_200_000_000] {
            h.reset();
            h.record(us).expect("in range");
            let p50 = h.value_at_quantile(0.5) as f64;
            assert!(
                (p50 - us as f64).abs() / us as f64 <= 0.01,
                "{us} µs read as {p50}"
            );
        }
    }

    #[test]
    fn absurd_deltas_saturate_instead_of_overflowing() {
        // Found by the `coordinator.stored` fuzz target: an event whose
        // `execution_time_ms` was 18446744073709551615, folded twice.
        let d = StatsDelta {
            succeeded: true,
            confidence: f64::MAX,
            execution_time_ms: 1.8e19,
            conflicts: u64::MAX,
            fallbacks: u64::MAX,
            model_usage: [("m".to_string(), u64::MAX)].into_iter().collect(),
            latency_ms: vec![("task".into(), f64::MAX)],
            cached: false,
        };
        let stats = Stats::default();
        stats.apply(&d);
        stats.apply(&d);
        let st = stats.state();
        assert_eq!(
            (st.total, st.conflicts, st.fallbacks),
            (2, u64::MAX, u64::MAX)
        );
        assert_eq!((st.time_sum_us, st.model_usage["m"]), (u64::MAX, u64::MAX));
        let r = stats.report(0, "shared");
        assert!((0.0..=1.0).contains(&r.avg_confidence));
    }

    fn delta(ok: bool, ms: f64) -> StatsDelta {
        StatsDelta {
            succeeded: ok,
            confidence: if ok { 0.8 } else { 0.0 },
            execution_time_ms: ms,
            conflicts: 1,
            fallbacks: 2,
            model_usage: [("m".to_string(), 2)].into_iter().collect(),
            latency_ms: vec![("task".into(), ms), ("reasoner/local".into(), ms / 2.0)],
            cached: false,
        }
    }

    #[test]
    fn deltas_add_up() {
        let s = Stats::default();
        s.apply(&delta(true, 10.0));
        s.apply(&delta(false, 30.0));
        let r = s.report(0, "t");
        assert_eq!(r.total_executions, 2);
        assert_eq!(r.success_rate, 0.5);
        assert!((r.avg_confidence - 0.4).abs() < 1e-9);
        assert!((r.avg_execution_time_ms - 20.0).abs() < 1e-9);
        assert_eq!(r.conflicts_detected, 2);
        assert_eq!(r.fallbacks_triggered, 4);
        assert_eq!(r.model_usage["m"], 4);
        assert_eq!(r.latency["task"].count, 2);
        assert!((r.latency["task"].max_ms - 30.0).abs() < 0.1);
    }

    #[test]
    fn snapshots_round_trip() {
        let s = Stats::default();
        for i in 0..100 {
            s.apply(&delta(i % 3 != 0, f64::from(i) + 1.0));
        }
        let state = s.state();
        let json = serde_json::to_string(&state).unwrap();
        let t = Stats::default();
        t.restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(s.report(0, "x"), t.report(0, "x"));
    }
}
