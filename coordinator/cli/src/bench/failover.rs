//! P4: how fast the fleet fails over.
//!
//! - `p4_no_responders_ms`: the failed attempt on a slot that has no worker at
//!   all (NATS answers "no responders"), p50 over many tasks.
//! - `p4_dead_worker_detect_ms`: a worker dies mid-request (its whole runtime
//!   and connection vanish, as with kill -9 but without a clean TCP close
//!   racing the heartbeat logic); time from the death to the attempt being
//!   abandoned and the next slot tried. Target: within two heartbeat intervals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_client::SubmitRequest;
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::Role;
use orch_worker::serve::{ServeConfig, serve};
use orch_worker::sim::{SimArgs, SimHandler};
use tokio_util::sync::CancellationToken;

use super::{Report, hist, ms, spawn_worker, wait_for_workers};

/// Heartbeat interval used by the dead-worker drill (the coordinator gives up after two).
const BEAT: Duration = Duration::from_millis(250);

fn reasoner_task() -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        ..SubmitRequest::new("plan something")
    }
}

/// A worker on its own runtime, so it can be killed outright.
struct Doomed {
    rt: Option<tokio::runtime::Runtime>,
}

impl Doomed {
    fn start(url: &str, slot: &str, job: Duration) -> anyhow::Result<Doomed> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (url, slot) = (url.to_string(), slot.to_string());
        rt.spawn(async move {
            let Ok(client) = async_nats::connect(url).await else {
                return;
            };
            let Ok(slot) = slot.parse() else { return };
            let mut cfg = ServeConfig::new(slot);
            cfg.heartbeat_interval = BEAT;
            let handler = Arc::new(SimHandler::new(
                Role::Reasoner,
                SimArgs {
                    latency: job,
                    ..SimArgs::default()
                },
            ));
            let _ = serve(client, handler, cfg, CancellationToken::new()).await;
        });
        Ok(Doomed { rt: Some(rt) })
    }

    /// Stops every task of the worker at once: no reply, no heartbeat, no drain.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs P4.
pub async fn run(url: &str, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("orch bench: p4 (failover)");
    let stop = CancellationToken::new();
    let probe = async_nats::connect(url).await?;

    // No responders: chain [p4-nobody, p4-ok].
    spawn_worker(
        url,
        Role::Reasoner,
        "p4-ok",
        SimArgs::default(),
        64,
        64,
        Duration::from_secs(1),
        stop.clone(),
    )
    .await?;
    wait_for_workers(&probe, Role::Reasoner, "p4-ok", 1).await?;
    let mut config = CoordinatorConfig {
        events: false,
        ..CoordinatorConfig::default()
    };
    config
        .chains
        .insert(Role::Reasoner, vec!["p4-nobody".parse()?, "p4-ok".parse()?]);
    let coordinator = Coordinator::start(async_nats::connect(url).await?, config).await?;
    let mut h = hist();
    let n = if quick { 50 } else { 500 };
    for _ in 0..n {
        let r = coordinator
            .execute(reasoner_task())
            .await
            .map_err(anyhow::Error::msg)?;
        let first = r
            .attempts
            .first()
            .ok_or_else(|| anyhow::anyhow!("no attempts"))?;
        anyhow::ensure!(
            first.outcome == "no_responders",
            "unexpected first outcome {}",
            first.outcome
        );
        h.saturating_record((first.latency_ms * 1000.0) as u64);
    }
    coordinator.shutdown();
    report.row(
        format!("p4: attempt on a slot with no workers ({n} tasks)"),
        Some(ms(&h, 0.5)),
        Some(ms(&h, 0.99)),
        None,
        "",
    );
    report.figure("p4_no_responders_ms", ms(&h, 0.5), "target <= 1");

    // Dead worker: chain [p4-victim, p4-ok]; the victim dies while working.
    let mut config = CoordinatorConfig {
        events: false,
        heartbeat_timeout: Some(BEAT * 2),
        ..CoordinatorConfig::default()
    };
    config
        .chains
        .insert(Role::Reasoner, vec!["p4-victim".parse()?, "p4-ok".parse()?]);
    let coordinator = Arc::new(Coordinator::start(async_nats::connect(url).await?, config).await?);
    let mut detect = hist();
    let trials = if quick { 2 } else { 8 };
    for trial in 0..trials {
        let mut victim = Doomed::start(url, "p4-victim", Duration::from_secs(30))?;
        wait_for_workers(&probe, Role::Reasoner, "p4-victim", 1).await?;
        let c = coordinator.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move { c.execute(reasoner_task()).await });
        // Die at a different point between two heartbeats each time.
        tokio::time::sleep(Duration::from_millis(300) + BEAT * trial / trials).await;
        let killed = Instant::now();
        victim.kill();
        let r = task.await?.map_err(anyhow::Error::msg)?;
        let first = r
            .attempts
            .first()
            .ok_or_else(|| anyhow::anyhow!("no attempts"))?;
        anyhow::ensure!(
            first.outcome == "worker_lost",
            "expected worker_lost, got {}",
            first.outcome
        );
        anyhow::ensure!(r.succeeded(), "the fallback slot should answer");
        let abandoned = started + Duration::from_secs_f64(first.latency_ms / 1000.0);
        detect.saturating_record(abandoned.saturating_duration_since(killed).as_micros() as u64);
        // The victim's old subscription must be gone before the next trial.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    coordinator.shutdown();
    stop.cancel();
    let p50 = ms(&detect, 0.5);
    report.row(
        format!("p4: worker killed mid-request → fallback ({trials} trials)"),
        Some(p50),
        Some(ms(&detect, 0.99)),
        None,
        format!("heartbeat every {} ms", BEAT.as_millis()),
    );
    report.figure(
        "p4_dead_worker_detect_ms",
        p50,
        "target <= 2 heartbeat intervals",
    );
    report.figure(
        "p4_dead_worker_detect_intervals",
        p50 / (BEAT.as_secs_f64() * 1000.0),
        "target <= 2",
    );
    Ok(())
}
