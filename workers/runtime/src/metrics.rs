//! Counters a worker exposes through NATS micro `$SRV.STATS` (the endpoint's
//! `data` field) and in its logs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use orch_shared::ErrorCode;
use serde_json::{Value, json};

/// Live counters of one worker process.
#[derive(Debug)]
pub struct WorkerMetrics {
    capacity: usize,
    /// Jobs accepted and not yet answered (queued for a permit or running).
    pub(crate) accepted: AtomicUsize,
    /// Jobs holding a concurrency permit.
    pub(crate) running: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    by_code: Mutex<BTreeMap<&'static str, u64>>,
    /// Exponentially weighted mean handler latency, µs (0 until the first job).
    ewma_us: AtomicU64,
    samples: AtomicU64,
}

impl WorkerMetrics {
    /// Counters for a worker with `capacity` concurrent jobs.
    pub fn new(capacity: usize) -> WorkerMetrics {
        WorkerMetrics {
            capacity,
            accepted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            by_code: Mutex::new(BTreeMap::new()),
            ewma_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
        }
    }

    /// Folds one successful job's handler time into the moving average (α = 0.2).
    pub(crate) fn record_latency(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let n = self.samples.fetch_add(1, Ordering::Relaxed);
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if n == 0 { us } else { (old * 4 + us) / 5 };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// Mean handler latency, when at least `min_samples` jobs finished.
    pub fn typical_latency(&self, min_samples: u64) -> Option<std::time::Duration> {
        (self.samples.load(Ordering::Relaxed) >= min_samples)
            .then(|| std::time::Duration::from_micros(self.ewma_us.load(Ordering::Relaxed)))
    }

    pub(crate) fn record_ok(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_err(&self, code: ErrorCode, rejected: bool) {
        if rejected {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut m) = self.by_code.lock() {
            *m.entry(code.as_str()).or_default() += 1;
        }
    }

    /// Jobs currently holding a permit.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Jobs accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Jobs answered successfully.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Jobs answered with an error after being accepted.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The JSON put into `$SRV.STATS` endpoint `data`.
    pub fn snapshot(&self) -> Value {
        let errors = self.by_code.lock().map(|m| m.clone()).unwrap_or_default();
        let running = self.running();
        json!({
            "capacity": self.capacity,
            "in_flight": self.in_flight(),
            "running": running,
            "free": self.capacity.saturating_sub(running),
            "completed": self.completed(),
            "failed": self.failed(),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "errors_by_code": errors,
            "typical_latency_ms": self.ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            // NATS messages this process dropped (subscription buffer full).
            "slow_consumer_events": orch_shared::config::slow_consumer_events(),
        })
    }
}
