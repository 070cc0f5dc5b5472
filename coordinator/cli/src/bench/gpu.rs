//! P3: GPU-bound workers (one job at a time, 50 ms each) — how close the fleet
//! gets to N × 20 tasks/s as N grows, and what one 5× slower copy does to the
//! p99, with plain queue groups ("push") and with least-loaded pull dispatch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orch_client::SubmitRequest;
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::Role;
use orch_shared::role::RoleSet;
use orch_worker::sim::SimArgs;
use tokio_util::sync::CancellationToken;

use super::{Report, hist, ms, spawn_worker, wait_for_workers};

/// Service time of a simulated GPU job.
const JOB: Duration = Duration::from_millis(50);

struct Run {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn vision_task(i: usize) -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["vision".into()]),
        screenshot: Some(
            vec![
                0x89,
                b'P',
                b'N',
                b'G',
                0x0d,
                0x0a,
                0x1a,
                0x0a,
                (i % 251) as u8,
            ]
            .into(),
        ),
        ..SubmitRequest::new("what is on the screen")
    }
}

/// One fleet of vision workers with the given job times, driven closed-loop.
async fn fleet_run(
    url: &str,
    jobs: &[Duration],
    pull: bool,
    concurrency: usize,
    tasks: usize,
) -> anyhow::Result<Run> {
    static NONCE: AtomicUsize = AtomicUsize::new(0);
    let slot = format!(
        "p3-{}-{}",
        if pull { "pull" } else { "push" },
        NONCE.fetch_add(1, Ordering::Relaxed)
    );
    let stop = CancellationToken::new();
    for job in jobs {
        let sim = SimArgs {
            latency: *job,
            ..SimArgs::default()
        };
        // Push mode must be able to queue at the worker, as a GPU server would.
        spawn_worker(
            url,
            Role::Vision,
            &slot,
            sim,
            1,
            4096,
            Duration::from_secs(1),
            stop.clone(),
        )
        .await?;
    }
    let probe = async_nats::connect(url).await?;
    wait_for_workers(&probe, Role::Vision, &slot, jobs.len()).await?;
    let mut config = CoordinatorConfig {
        events: false,
        max_in_flight: 100_000,
        ..CoordinatorConfig::default()
    };
    config.chains.insert(Role::Vision, vec![slot.parse()?]);
    if pull {
        config.pull_dispatch = [Role::Vision].into_iter().collect::<RoleSet>();
    }
    let coordinator = Arc::new(Coordinator::start(async_nats::connect(url).await?, config).await?);
    if pull {
        // Workers find the queue stream within a second of the coordinator creating it.
        let js = async_nats::jetstream::new(probe.clone());
        let name = orch_shared::subjects::queue_consumer(Role::Vision, &slot.parse()?);
        let start = Instant::now();
        loop {
            let ok = match js.get_stream(orch_shared::subjects::STREAM_WORK).await {
                Ok(s) => s
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if ok {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(15),
                "queue consumer {name} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let every worker register its first pull.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Warm-up: every copy measures itself before the clock starts.
    for i in 0..jobs.len() * 3 {
        coordinator
            .execute(vision_task(i))
            .await
            .ok()
            .context("warm-up task")?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..concurrency {
        let (c, next) = (coordinator.clone(), next.clone());
        joins.push(tokio::spawn(async move {
            let mut h = hist();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                match c.execute(vision_task(i)).await {
                    // The task's own wall time (storing its result afterwards is not dispatch).
                    Ok(r)
                        if r.model_results
                            .get(&Role::Vision)
                            .is_some_and(|m| m.success) =>
                    {
                        h.saturating_record((r.execution_time_ms * 1000.0) as u64);
                    }
                    _ => failed += 1,
                }
            }
            (h, failed)
        }));
    }
    let mut all = hist();
    let mut failed = 0;
    for j in joins {
        let (h, f) = j.await?;
        let _ = all.add(h);
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.cancel();
    coordinator.shutdown();
    anyhow::ensure!(failed == 0, "{failed} of {tasks} P3 tasks failed");
    Ok(Run {
        per_s: all.len() as f64 / elapsed,
        p50_ms: ms(&all, 0.5),
        p99_ms: ms(&all, 0.99),
    })
}

/// Runs P3 in both dispatch modes.
pub async fn run(url: &str, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    eprintln!(
        "orch bench: p3 (GPU-bound vision workers, 1 job at a time, {} ms each)",
        JOB.as_millis()
    );
    let sizes: &[usize] = if quick { &[1, 4] } else { &[1, 2, 4, 8, 16] };
    let mut chart = crate::plot::Chart {
        title: format!(
            "p3: efficiency of N GPU-bound workers (1 job at a time, {} ms)",
            JOB.as_millis()
        ),
        x_label: "vision workers".into(),
        y_label: "tasks/s ÷ (N × ideal)".into(),
        log2_x: true,
        series: Vec::new(),
        target: Some((0.95, "target 0.95".into())),
    };
    for pull in [false, true] {
        let mode = if pull { "pull" } else { "push" };
        let mut min_eff = f64::MAX;
        let mut points = Vec::new();
        for &n in sizes {
            let ideal = n as f64 * 1000.0 / JOB.as_millis() as f64;
            let tasks = if quick { n * 20 } else { (n * 60).max(120) };
            let r = fleet_run(url, &vec![JOB; n], pull, 2 * n, tasks).await?;
            let eff = r.per_s / ideal;
            min_eff = min_eff.min(eff);
            points.push((n as f64, eff));
            report.row(
                format!("p3 {mode}: {n} GPU workers (ideal {ideal:.0}/s)"),
                Some(r.p50_ms),
                Some(r.p99_ms),
                Some(r.per_s),
                format!("efficiency {eff:.3}"),
            );
        }
        let key = if pull {
            "p3_efficiency".to_string()
        } else {
            "p3_efficiency_push".to_string()
        };
        report.figure(&key, min_eff, "target >= 0.95 (least-loaded dispatch)");
        chart.series.push(crate::plot::Series {
            name: if pull {
                "pull dispatch".into()
            } else {
                "queue groups (push)".into()
            },
            points,
        });

        // One of four copies is 5x slower; load below the fast copies' capacity.
        let jobs = [JOB * 5, JOB, JOB, JOB];
        let tasks = if quick { 60 } else { 400 };
        let r = fleet_run(url, &jobs, pull, 2, tasks).await?;
        let ratio = r.p99_ms / (JOB.as_secs_f64() * 1000.0);
        report.row(
            format!("p3 {mode}: 4 workers, one 5x slower, concurrency 2"),
            Some(r.p50_ms),
            Some(r.p99_ms),
            Some(r.per_s),
            format!("p99/fast {ratio:.2}"),
        );
        let key = if pull {
            "p3_slow_worker_p99_ratio"
        } else {
            "p3_slow_worker_p99_ratio_push"
        };
        report.figure(key, ratio, "target <= 1.2 (least-loaded dispatch)");
    }
    report.charts.push(chart);
    Ok(())
}
