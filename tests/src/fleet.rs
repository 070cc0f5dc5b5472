//! Coordinator and simulated workers in-process, each on its own NATS
//! connection (so queue groups spread work exactly as between processes).

use std::sync::Arc;
use std::time::Duration;

use orch_client::{Orchestrator, discover};
use orch_coordinator::{Coordinator, CoordinatorConfig};
use orch_shared::{Role, Slot};
use orch_worker::serve::{ServeConfig, ServeReport, serve};
use orch_worker::sim::{SimArgs, SimHandler};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::Proc;
use crate::wait::{eventually, within};

/// One worker to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Role.
    pub role: Role,
    /// Slot served.
    pub slot: String,
    /// Simulator behaviour.
    pub sim: SimArgs,
    /// Concurrency.
    pub concurrency: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
}

impl WorkerSpec {
    /// A zero-latency simulated worker of `role` on `slot`.
    pub fn sim(role: Role, slot: &str) -> WorkerSpec {
        WorkerSpec {
            role,
            slot: slot.to_string(),
            sim: SimArgs::default(),
            concurrency: 8,
            heartbeat: Duration::from_secs(1),
        }
    }

    /// Changes the simulator settings.
    pub fn with(mut self, f: impl FnOnce(&mut SimArgs)) -> WorkerSpec {
        f(&mut self.sim);
        self
    }
}

/// The default four roles on the default chains' first slots.
pub fn standard_workers() -> Vec<WorkerSpec> {
    vec![
        WorkerSpec::sim(Role::Vision, "default"),
        WorkerSpec::sim(Role::Web, "default"),
        WorkerSpec::sim(Role::Reasoner, "kimi_k2"),
        WorkerSpec::sim(Role::Verifier, "chatgpt"),
    ]
}

/// A running in-process worker.
pub struct WorkerHandle {
    /// Cancel to start its drain.
    pub shutdown: CancellationToken,
    join: Option<JoinHandle<ServeReport>>,
}

impl WorkerHandle {
    /// Drains the worker and returns its report.
    pub async fn stop(mut self) -> ServeReport {
        self.shutdown.cancel();
        let join = self.join.take();
        within(Duration::from_secs(60), "worker drain", async move {
            match join {
                Some(j) => j.await.unwrap_or_else(|e| panic!("worker task: {e}")),
                None => panic!("worker already stopped"),
            }
        })
        .await
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts one in-process worker and waits until discovery sees it.
pub async fn start_worker(url: &str, spec: WorkerSpec) -> WorkerHandle {
    let client = within(
        Duration::from_secs(10),
        "worker connect",
        async_nats::connect(url),
    )
    .await
    .unwrap_or_else(|e| panic!("worker connect: {e}"));
    let slot: Slot = spec.slot.parse().unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = ServeConfig::new(slot.clone());
    cfg.concurrency = spec.concurrency;
    cfg.heartbeat_interval = spec.heartbeat;
    cfg.drain_timeout = Duration::from_secs(10);
    let handler = Arc::new(SimHandler::new(spec.role, spec.sim.clone()));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let before = count_instances(url, spec.role, &spec.slot).await;
    let join = tokio::spawn(async move {
        serve(client, handler, cfg, token)
            .await
            .unwrap_or_else(|e| panic!("worker serve: {e}"))
    });
    let (role, slot_name) = (spec.role, spec.slot.clone());
    eventually(
        Duration::from_secs(10),
        &format!("worker {role}/{slot_name} visible in $SRV.INFO"),
        || {
            let slot_name = slot_name.clone();
            async move { (count_instances(url, role, &slot_name).await > before).then_some(()) }
        },
    )
    .await;
    WorkerHandle {
        shutdown,
        join: Some(join),
    }
}

async fn count_instances(url: &str, role: Role, slot: &str) -> usize {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let found = discover(&client, Duration::from_millis(150))
        .await
        .unwrap_or_default();
    found
        .iter()
        .filter(|s| s.meta("role") == role.as_str() && s.meta("slot") == slot)
        .count()
}

/// Waits until the pull consumer `name` exists on the `ORCH_WORK` stream
/// (its workers create it once a coordinator has made the stream).
pub async fn wait_for_queue_consumer(
    js: &async_nats::jetstream::Context,
    name: &str,
    limit: Duration,
) {
    eventually(limit, &format!("queue consumer {name}"), || async move {
        let stream = js
            .get_stream(orch_shared::subjects::STREAM_WORK)
            .await
            .ok()?;
        stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// One of each fleet binary, as [`wait_for_services`] wants them.
pub const FLEET: [(&str, usize); 5] = [
    ("orch-coordinator", 1),
    ("orch-vision", 1),
    ("orch-web", 1),
    ("orch-reasoner", 1),
    ("orch-verifier", 1),
];

/// Waits until discovery shows at least `count` instances of each service
/// `name` (`orch-coordinator`, `orch-reasoner`, ...), in-process or not. On
/// timeout it panics with the output of `procs` (the processes expected to
/// come up; none for in-process services).
pub async fn wait_for_services<'a>(
    orch: &Orchestrator,
    wanted: &[(&str, usize)],
    limit: Duration,
    procs: impl IntoIterator<Item = &'a Proc>,
) {
    let visible = async {
        let mut delay = Duration::from_millis(20);
        loop {
            if let Ok(found) = orch.workers(Duration::from_millis(300)).await
                && wanted
                    .iter()
                    .all(|(name, count)| found.iter().filter(|s| s.name == *name).count() >= *count)
            {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    };
    if tokio::time::timeout(limit, visible).await.is_err() {
        panic!(
            "services {wanted:?} not visible within {limit:?}\n{}",
            crate::process::describe_all(procs)
        );
    }
}

/// A coordinator and workers, in-process, plus a client.
pub struct Fleet {
    /// SDK handle for submitting.
    pub orch: Orchestrator,
    /// The coordinator (for in-process calls and stats).
    pub coordinator: Arc<Coordinator>,
    /// Cancel to drain the coordinator.
    pub coordinator_shutdown: CancellationToken,
    coordinator_join: Option<JoinHandle<()>>,
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    url: String,
}

impl Fleet {
    /// Starts a coordinator with `config` and the given workers, and waits until all are discoverable.
    pub async fn start(url: &str, config: CoordinatorConfig, workers: Vec<WorkerSpec>) -> Fleet {
        crate::init_logs();
        let pulled: Vec<(Role, String)> = workers
            .iter()
            .filter(|w| config.pull_dispatch.contains(w.role))
            .map(|w| (w.role, w.slot.clone()))
            .collect();
        let mut handles = Vec::new();
        for w in workers {
            handles.push(start_worker(url, w).await);
        }
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("coordinator connect: {e}"));
        let coordinator = Arc::new(
            Coordinator::start(client, config)
                .await
                .unwrap_or_else(|e| panic!("coordinator start: {e}")),
        );
        let shutdown = CancellationToken::new();
        let (c, t) = (coordinator.clone(), shutdown.clone());
        let join = tokio::spawn(async move {
            orch_coordinator::serve(c, t)
                .await
                .unwrap_or_else(|e| panic!("coordinator serve: {e}"));
        });
        let orch = Orchestrator::connect(url)
            .await
            .unwrap_or_else(|e| panic!("client connect: {e}"));
        // Pull-dispatched workers are ready once their queue consumer exists.
        for (role, slot) in pulled {
            let slot: Slot = slot.parse().unwrap_or_else(|e| panic!("{e}"));
            let name = orch_shared::subjects::queue_consumer(role, &slot);
            wait_for_queue_consumer(&orch.jetstream(), &name, Duration::from_secs(15)).await;
        }
        let probe = orch.clone();
        eventually(
            Duration::from_secs(10),
            "coordinator answering stats",
            || {
                let probe = probe.clone();
                async move { probe.stats().await.ok().map(|_| ()) }
            },
        )
        .await;
        Fleet {
            orch,
            coordinator,
            coordinator_shutdown: shutdown,
            coordinator_join: Some(join),
            workers: handles,
            url: url.to_string(),
        }
    }

    /// The NATS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts one more worker.
    pub async fn add_worker(&mut self, spec: WorkerSpec) -> usize {
        self.workers.push(start_worker(&self.url, spec).await);
        self.workers.len() - 1
    }

    /// Drains the coordinator.
    pub async fn stop_coordinator(&mut self) {
        self.coordinator_shutdown.cancel();
        if let Some(j) = self.coordinator_join.take() {
            within(Duration::from_secs(60), "coordinator drain", j)
                .await
                .unwrap_or_else(|e| panic!("coordinator task: {e}"));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.coordinator_shutdown.cancel();
    }
}
