//! The seed's `get_stats()` numbers for this coordinator, plus latency
//! percentiles for the task and for every role/slot.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use orch_shared::wire::{LatencySummary, OrchestratedResult, StatsReport};

/// Histogram range: 1 µs .. 1 hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

#[derive(Default)]
struct Inner {
    total: u64,
    successes: u64,
    confidence_sum: f64,
    time_sum_ms: f64,
    conflicts: u64,
    fallbacks: u64,
    model_usage: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram<u64>>,
}

/// Running totals for one coordinator process.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

fn record(h: &mut BTreeMap<String, Histogram<u64>>, key: &str, ms: f64) {
    let us = (ms * 1000.0).clamp(1.0, HIST_MAX_US as f64) as u64;
    if !h.contains_key(key) {
        match Histogram::new_with_bounds(1, HIST_MAX_US, 3) {
            Ok(hist) => {
                h.insert(key.to_string(), hist);
            }
            Err(_) => return,
        }
    }
    if let Some(hist) = h.get_mut(key) {
        hist.saturating_record(us);
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

impl Stats {
    /// Adds one finished task.
    pub fn record(&self, r: &OrchestratedResult) {
        let Ok(mut s) = self.inner.lock() else { return };
        s.total += 1;
        if r.succeeded() {
            s.successes += 1;
        }
        s.confidence_sum += r.confidence;
        s.time_sum_ms += r.execution_time_ms;
        s.conflicts += r.conflicts.len() as u64;
        s.fallbacks += r.fallback_chain.len() as u64;
        for m in r.model_results.values().filter(|m| m.success) {
            *s.model_usage.entry(m.model.clone()).or_default() += 1;
        }
        record(&mut s.latency, "task", r.execution_time_ms);
        for a in r.attempts.iter().filter(|a| a.outcome == "ok") {
            record(
                &mut s.latency,
                &format!("{}/{}", a.role, a.slot),
                a.latency_ms,
            );
        }
    }

    /// The current numbers.
    pub fn report(&self, in_flight: u64, scope: &str) -> StatsReport {
        let Ok(s) = self.inner.lock() else {
            return StatsReport::default();
        };
        let n = s.total.max(1) as f64;
        StatsReport {
            total_executions: s.total,
            success_rate: if s.total == 0 {
                0.0
            } else {
                s.successes as f64 / n
            },
            avg_confidence: if s.total == 0 {
                0.0
            } else {
                s.confidence_sum / n
            },
            avg_execution_time_ms: if s.total == 0 { 0.0 } else { s.time_sum_ms / n },
            conflicts_detected: s.conflicts,
            fallbacks_triggered: s.fallbacks,
            model_usage: s.model_usage.clone(),
            latency: s
                .latency
                .iter()
                .map(|(k, h)| (k.clone(), summarize(h)))
                .collect(),
            in_flight,
            scope: scope.to_string(),
        }
    }
}
