//! P5: resident memory of a coordinator process holding 10,000 tasks in
//! flight (workers that take a minute to answer).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use orch_client::SubmitRequest;
use orch_shared::Role;
use orch_shared::codec::Encoding;
use orch_shared::subjects;
use orch_worker::sim::SimArgs;
use tokio_util::sync::CancellationToken;

use super::{Report, spawn_worker, wait_for_workers};

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// Runs P5.
pub async fn run(url: &str, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let n: usize = std::env::var("ORCH_BENCH_P5_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1000 } else { 10_000 });
    eprintln!("orch bench: p5 (coordinator RSS with {n} tasks in flight)");
    let bin = crate::up::sibling("orch-coordinator")?;
    let stop = CancellationToken::new();
    // One worker holding every job for a minute; few heartbeats.
    let sim = SimArgs {
        latency: Duration::from_secs(60),
        ..SimArgs::default()
    };
    spawn_worker(
        url,
        Role::Reasoner,
        "p5",
        sim,
        n + 100,
        0,
        Duration::from_secs(30),
        stop.clone(),
    )
    .await?;
    let client = async_nats::connect(url).await?;
    wait_for_workers(&client, Role::Reasoner, "p5", 1).await?;
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--nats-url",
            url,
            "--reasoner-chain",
            "p5",
            "--max-in-flight",
            &(n * 2).to_string(),
            "--heartbeat-timeout",
            "0",
            "--reasoning-timeout",
            "120s",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("coordinator pid")?;
    let orch = orch_client::Orchestrator::from_client(client.clone());
    let start = Instant::now();
    while orch.stats().await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the coordinator did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle = rss_mb(pid)?;
    let req = SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        available_tools: vec![
            "playwright_navigate".into(),
            "playwright_extract_entities".into(),
        ],
        ..SubmitRequest::new("find python developers on linkedin and summarise their profiles")
    };
    let payload = Encoding::Json.encode(&req)?;
    // A copy of every work request the coordinator sends: the figure is taken
    // once all tasks are parked on the worker, not while requests queue inside
    // the coordinator.
    let mut dispatched = client
        .subscribe(subjects::work(Role::Reasoner, &"p5".parse()?))
        .await?;
    client.flush().await?;
    let inbox = client.new_inbox();
    let _replies = client.subscribe(format!("{inbox}.*")).await?;
    // In chunks, each admitted before the next: a burst larger than the
    // coordinator's subscription buffer would be dropped as a slow consumer
    // (counted in its stats), and this measures holding tasks, not bursts.
    const CHUNK: usize = 1000;
    for first in (0..n).step_by(CHUNK) {
        let last = (first + CHUNK).min(n);
        for i in first..last {
            client
                .publish_with_reply(subjects::SUBMIT, format!("{inbox}.{i}"), payload.clone())
                .await?;
        }
        client.flush().await?;
        let start = Instant::now();
        while (orch.stats().await?.in_flight as usize) < last {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("tasks {first}..{last} were not admitted within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let start = Instant::now();
    let in_flight = loop {
        let s = orch.stats().await?;
        if s.in_flight as usize >= n {
            break s.in_flight;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("only {} of {n} tasks in flight after 60 s", s.in_flight);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen = 0usize;
    let start = Instant::now();
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(5), dispatched.next()).await {
            Ok(Some(_)) => seen += 1,
            _ if start.elapsed() > Duration::from_secs(60) => {
                bail!("only {seen} of {n} work requests reached the worker after 60 s")
            }
            _ => {}
        }
    }
    eprintln!(
        "orch bench: p5: {seen} work requests dispatched after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Let allocations settle (every task parked on its worker).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss_mb(pid)?;
    let _ = child.kill().await;
    stop.cancel();
    report.row(
        "p5: coordinator RSS idle (MB)".to_string(),
        None,
        None,
        Some(idle),
        "",
    );
    report.row(
        format!("p5: coordinator RSS with {in_flight} tasks in flight (MB)"),
        None,
        None,
        Some(loaded),
        "",
    );
    report.figure("p5_coordinator_rss_mb", loaded, "target <= 50");
    Ok(())
}
