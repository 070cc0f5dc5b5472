//! Coordinator configuration: flags (each also an env var), defaults with
//! their reasons, and validation that reports every problem at once.

use std::collections::BTreeMap;
use std::time::Duration;

use orch_shared::config::{NatsArgs, Problems, parse_duration};
use orch_shared::role::RoleSet;
use orch_shared::telemetry::LogArgs;
use orch_shared::wire::Limits;
use orch_shared::{Role, Slot};

/// Phase 1 budget: the seed's `parallel_timeout` (30 s).
pub const DEFAULT_PARALLEL_TIMEOUT: Duration = Duration::from_secs(30);
/// Phase 2 budget across the whole reasoner chain: the seed's `reasoning_timeout` (60 s).
pub const DEFAULT_REASONING_TIMEOUT: Duration = Duration::from_secs(60);
/// Phase 3 budget across the whole verifier chain: the seed's `verification_timeout` (20 s).
pub const DEFAULT_VERIFICATION_TIMEOUT: Duration = Duration::from_secs(20);
/// The seed's reasoner fallback order: Kimi K2, then ChatGPT, then a local model.
pub const DEFAULT_REASONER_CHAIN: &str = "kimi_k2,chatgpt,local";
/// The seed's verifier order: ChatGPT, then a local model.
pub const DEFAULT_VERIFIER_CHAIN: &str = "chatgpt,local";
/// Vision and web have one slot unless configured otherwise.
pub const DEFAULT_SINGLE_CHAIN: &str = "default";
/// Roles used when a request names no `tools` (vision only runs with a screenshot).
pub const DEFAULT_TOOLS: &str = "vision,web,reasoner";
/// Tasks one coordinator runs at once. A task in flight costs a few KiB while it
/// waits on workers, so this bounds memory, not CPU; beyond it submits get `overloaded`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Silence after which a worker is presumed dead. Workers heartbeat every second
/// by default, so three missed beats.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long running tasks may continue after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// JetStream settings: durable intake, results, events, stats, cache, screenshots.
#[derive(Debug, Clone, PartialEq)]
pub struct DurableConfig {
    /// Stream/bucket replicas (1 standalone, 3 in a cluster).
    pub replicas: usize,
    /// Window in which a republished task id is dropped as a duplicate.
    pub dedup_window: Duration,
    /// How long an unprocessed durable task is kept.
    pub task_max_age: Duration,
    /// Redelivery timer for a task whose coordinator stopped acknowledging it
    /// (running tasks send progress acks every third of it).
    pub ack_wait: Duration,
    /// Deliveries before a task is dead-lettered.
    pub max_deliver: i64,
    /// Durable tasks in flight across all coordinators.
    pub max_ack_pending: i64,
    /// How long results are kept.
    pub results_ttl: Duration,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// Size cap of the event stream.
    pub events_max_bytes: i64,
    /// Result cache TTL (`None`: cache off).
    pub cache_ttl: Option<Duration>,
    /// How long uploaded screenshots are kept.
    pub screenshots_ttl: Duration,
    /// How long dead-lettered tasks are kept.
    pub dead_max_age: Duration,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            replicas: 1,
            // Two minutes, JetStream's default: covers client retries after a lost PubAck.
            dedup_window: Duration::from_secs(120),
            task_max_age: Duration::from_secs(24 * 3600),
            // Three progress acks (one every 2 s): a coordinator that dies hands
            // its tasks on within 6 s; a reconnect (about 0.3 s) never costs one.
            // Should it ever run out, the result store's create/CAS still keeps
            // each outcome exactly once.
            ack_wait: Duration::from_secs(6),
            max_deliver: 5,
            max_ack_pending: 4096,
            results_ttl: Duration::from_secs(24 * 3600),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 1 << 30,
            cache_ttl: None,
            screenshots_ttl: Duration::from_secs(3600),
            dead_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Per-phase time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseTimeouts {
    /// Phase 1.
    pub parallel: Duration,
    /// Phase 2.
    pub reasoning: Duration,
    /// Phase 3.
    pub verification: Duration,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        PhaseTimeouts {
            parallel: DEFAULT_PARALLEL_TIMEOUT,
            reasoning: DEFAULT_REASONING_TIMEOUT,
            verification: DEFAULT_VERIFICATION_TIMEOUT,
        }
    }
}

/// Everything the coordinator needs to run, already validated.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Ordered fallback chain of slots per role.
    pub chains: BTreeMap<Role, Vec<Slot>>,
    /// Default per-phase limits.
    pub timeouts: PhaseTimeouts,
    /// Roles used when a request omits `tools`.
    pub default_tools: RoleSet,
    /// Whether verification runs when a request says nothing (the seed's `enable_verification`).
    pub enable_verification: bool,
    /// Request size limits.
    pub limits: Limits,
    /// Tasks run at once before submits are refused with `overloaded`.
    pub max_in_flight: usize,
    /// Worker silence that counts as a dead worker (`None`: wait for the attempt deadline).
    pub heartbeat_timeout: Option<Duration>,
    /// How long running tasks may continue after shutdown starts.
    pub drain_timeout: Duration,
    /// Publish task events.
    pub events: bool,
    /// Publish the progress events too (`phase_started`, `phase_completed`,
    /// `model_attempt`); off, a task publishes its `action_start`, its final
    /// event and any `fallback` or `conflict` (shared stats and replay of
    /// outcomes stay, at a fraction of the event stream's cost).
    pub progress_events: bool,
    /// Roles dispatched through the `ORCH_WORK` queue, where workers pull only
    /// when they have a free slot (least-loaded; meant for GPU-bound roles).
    /// Other roles use core request/reply to a queue group (lowest latency).
    pub pull_dispatch: RoleSet,
    /// Slots whose attempts are hedged: when an attempt outlasts the slot's
    /// rolling p95, the next slot of the chain is tried at the same time, the
    /// first good answer wins and the other attempt is cancelled.
    pub hedge: std::collections::BTreeSet<(Role, Slot)>,
    /// JetStream features (`None`: core NATS only — no durable intake, results,
    /// shared stats). On by default, as with the binary.
    pub durable: Option<DurableConfig>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        let chain = |s: &str| parse_chain(s).unwrap_or_default();
        CoordinatorConfig {
            chains: [
                (Role::Vision, chain(DEFAULT_SINGLE_CHAIN)),
                (Role::Web, chain(DEFAULT_SINGLE_CHAIN)),
                (Role::Reasoner, chain(DEFAULT_REASONER_CHAIN)),
                (Role::Verifier, chain(DEFAULT_VERIFIER_CHAIN)),
            ]
            .into_iter()
            .collect(),
            timeouts: PhaseTimeouts::default(),
            default_tools: parse_tools(DEFAULT_TOOLS).unwrap_or_default(),
            enable_verification: false,
            limits: Limits::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            heartbeat_timeout: Some(DEFAULT_HEARTBEAT_TIMEOUT),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            events: true,
            progress_events: true,
            pull_dispatch: RoleSet::EMPTY,
            hedge: std::collections::BTreeSet::new(),
            durable: Some(DurableConfig::default()),
        }
    }
}

impl CoordinatorConfig {
    /// The fallback chain of `role` (never empty after validation).
    pub fn chain(&self, role: Role) -> &[Slot] {
        self.chains.get(&role).map_or(&[], Vec::as_slice)
    }
}

/// Parses a comma-separated list of slot names.
///
/// # Errors
/// The first invalid name, or an empty list.
pub fn parse_chain(s: &str) -> Result<Vec<Slot>, String> {
    let slots = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<Slot>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if slots.is_empty() {
        return Err("the chain is empty".into());
    }
    Ok(slots)
}

/// Parses `role/slot,role/slot`.
///
/// # Errors
/// The first malformed entry.
pub fn parse_hedge(s: &str) -> Result<std::collections::BTreeSet<(Role, Slot)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (role, slot) = p
                .split_once('/')
                .ok_or_else(|| format!("`{p}` is not role/slot"))?;
            let role: Role = role
                .parse()
                .map_err(|e: orch_shared::role::UnknownRole| e.to_string())?;
            let slot: Slot = slot
                .parse()
                .map_err(|e: orch_shared::ids::InvalidId| e.to_string())?;
            Ok((role, slot))
        })
        .collect()
}

/// Parses a comma-separated list of tool names into roles.
///
/// # Errors
/// The first unknown name.
pub fn parse_tools(s: &str) -> Result<RoleSet, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Role::from_tool(p).ok_or_else(|| format!("unknown tool `{p}`")))
        .collect()
}

/// Coordinator flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "orch-coordinator",
    version,
    about = "Runs orch tasks: phase 1 (vision ‖ web), reasoning, optional verification, synthesis — over NATS workers."
)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub nats: NatsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
    /// Reasoner fallback chain: slots tried in order.
    #[arg(long, env = "ORCH_REASONER_CHAIN", default_value = DEFAULT_REASONER_CHAIN)]
    pub reasoner_chain: String,
    /// Verifier fallback chain: slots tried in order.
    #[arg(long, env = "ORCH_VERIFIER_CHAIN", default_value = DEFAULT_VERIFIER_CHAIN)]
    pub verifier_chain: String,
    /// Vision slots tried in order.
    #[arg(long, env = "ORCH_VISION_CHAIN", default_value = DEFAULT_SINGLE_CHAIN)]
    pub vision_chain: String,
    /// Web slots tried in order.
    #[arg(long, env = "ORCH_WEB_CHAIN", default_value = DEFAULT_SINGLE_CHAIN)]
    pub web_chain: String,
    /// Phase 1 (vision ‖ web) time limit.
    #[arg(long, env = "ORCH_PARALLEL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub parallel_timeout: Duration,
    /// Phase 2 (reasoning) time limit across the whole chain.
    #[arg(long, env = "ORCH_REASONING_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub reasoning_timeout: Duration,
    /// Phase 3 (verification) time limit across the whole chain.
    #[arg(long, env = "ORCH_VERIFICATION_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub verification_timeout: Duration,
    /// Verify answers when a request does not say (the seed's `enable_verification`).
    #[arg(long = "verify", env = "ORCH_VERIFY")]
    pub enable_verification: bool,
    /// Roles used when a request names no `tools`.
    #[arg(long, env = "ORCH_DEFAULT_TOOLS", default_value = DEFAULT_TOOLS)]
    pub default_tools: String,
    /// Tasks run at once; more submits are refused with `overloaded`.
    #[arg(long, env = "ORCH_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Worker silence (no heartbeat) after which an attempt is abandoned; `0` waits for the deadline.
    #[arg(long, env = "ORCH_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// After SIGTERM, how long running tasks may continue.
    #[arg(long, env = "ORCH_DRAIN_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Largest accepted screenshot, in bytes.
    #[arg(long, env = "ORCH_MAX_SCREENSHOT_BYTES", default_value_t = Limits::default().max_screenshot_bytes)]
    pub max_screenshot_bytes: usize,
    /// Largest accepted `task`, in bytes.
    #[arg(long, env = "ORCH_MAX_TASK_BYTES", default_value_t = Limits::default().max_task_bytes)]
    pub max_task_bytes: usize,
    /// Do not publish task events.
    #[arg(long, env = "ORCH_NO_EVENTS")]
    pub no_events: bool,
    /// Publish only a task's `action_start`, final event and any `fallback` or
    /// `conflict`: no `phase_started`, `phase_completed` or `model_attempt`
    /// (no live per-phase progress; shared stats and replay of outcomes stay).
    #[arg(long, env = "ORCH_NO_PROGRESS_EVENTS")]
    pub no_progress_events: bool,
    /// Roles dispatched least-loaded through the JetStream work queue (workers pull
    /// when free), e.g. `vision`; others use core request/reply.
    #[arg(long, env = "ORCH_PULL_DISPATCH", default_value = "")]
    pub pull_dispatch: String,
    /// Hedged slots, `role/slot` comma-separated (e.g. `reasoner/kimi_k2`): an attempt
    /// slower than the slot's rolling p95 also starts the next slot; the first good
    /// answer wins and the other is cancelled.
    #[arg(long, env = "ORCH_HEDGE", default_value = "")]
    pub hedge: String,
    /// Core NATS only: no durable intake, stored results, event stream or shared stats.
    #[arg(long, env = "ORCH_NO_JETSTREAM")]
    pub no_jetstream: bool,
    /// Replicas of every stream and bucket (3 in a 3-node cluster).
    #[arg(long, env = "ORCH_JS_REPLICAS", default_value_t = 1)]
    pub js_replicas: usize,
    /// Duplicate window of the task stream (a republished task id inside it is dropped).
    #[arg(long, env = "ORCH_DEDUP_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub dedup_window: Duration,
    /// Redelivery timer for durable tasks whose coordinator stopped acknowledging them.
    #[arg(long, env = "ORCH_ACK_WAIT", default_value = "6s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of a durable task before it goes to the dead-letter stream.
    #[arg(long, env = "ORCH_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: i64,
    /// Durable tasks in flight across all coordinators.
    #[arg(long, env = "ORCH_MAX_ACK_PENDING", default_value_t = 4096)]
    pub max_ack_pending: i64,
    /// How long results are kept.
    #[arg(long, env = "ORCH_RESULTS_TTL", default_value = "24h", value_parser = parse_duration)]
    pub results_ttl: Duration,
    /// How long events are kept.
    #[arg(long, env = "ORCH_EVENTS_MAX_AGE", default_value = "168h", value_parser = parse_duration)]
    pub events_max_age: Duration,
    /// Size cap of the event stream, in bytes.
    #[arg(long, env = "ORCH_EVENTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub events_max_bytes: i64,
    /// Cache results of identical requests for this long (off when absent).
    #[arg(long, env = "ORCH_CACHE_TTL", value_parser = parse_duration)]
    pub cache_ttl: Option<Duration>,
    /// How long uploaded screenshots are kept.
    #[arg(long, env = "ORCH_SCREENSHOTS_TTL", default_value = "1h", value_parser = parse_duration)]
    pub screenshots_ttl: Duration,
}

impl CoordinatorArgs {
    /// Validates every flag and builds the configuration.
    ///
    /// # Errors
    /// Every problem found.
    pub fn to_config(&self) -> Result<CoordinatorConfig, orch_shared::config::ConfigError> {
        let mut p = Problems::default();
        self.nats.check(&mut p);
        let mut chains = BTreeMap::new();
        for (role, flag, value) in [
            (Role::Vision, "--vision-chain", &self.vision_chain),
            (Role::Web, "--web-chain", &self.web_chain),
            (Role::Reasoner, "--reasoner-chain", &self.reasoner_chain),
            (Role::Verifier, "--verifier-chain", &self.verifier_chain),
        ] {
            match parse_chain(value) {
                Ok(c) => {
                    chains.insert(role, c);
                }
                Err(e) => p.push(format!("{flag}: {e}")),
            }
        }
        let pull_dispatch = parse_tools(&self.pull_dispatch).unwrap_or_else(|e| {
            p.push(format!("--pull-dispatch: {e}"));
            RoleSet::EMPTY
        });
        p.require(
            pull_dispatch.is_empty() || !self.no_jetstream,
            "--pull-dispatch needs JetStream (drop --no-jetstream)",
        );
        let hedge = parse_hedge(&self.hedge).unwrap_or_else(|e| {
            p.push(format!("--hedge: {e}"));
            Default::default()
        });
        let default_tools = parse_tools(&self.default_tools).unwrap_or_else(|e| {
            p.push(format!("--default-tools: {e}"));
            RoleSet::EMPTY
        });
        for (flag, d) in [
            ("--parallel-timeout", self.parallel_timeout),
            ("--reasoning-timeout", self.reasoning_timeout),
            ("--verification-timeout", self.verification_timeout),
        ] {
            p.require(!d.is_zero(), format!("{flag} must be positive"));
        }
        p.require(
            (1..=1_000_000).contains(&self.max_in_flight),
            format!(
                "--max-in-flight must be 1..=1000000, got {}",
                self.max_in_flight
            ),
        );
        p.require(self.max_task_bytes > 0, "--max-task-bytes must be positive");
        p.require(
            (1..=5).contains(&self.js_replicas),
            format!("--js-replicas must be 1..=5, got {}", self.js_replicas),
        );
        p.require(
            self.ack_wait >= Duration::from_secs(1),
            "--ack-wait must be at least 1s",
        );
        p.require(self.max_deliver >= 1, "--max-deliver must be at least 1");
        p.require(
            self.max_ack_pending >= 1,
            "--max-ack-pending must be at least 1",
        );
        p.require(
            !self.dedup_window.is_zero() && self.dedup_window <= Duration::from_secs(24 * 3600),
            "--dedup-window must be within 1ms..=24h",
        );
        if let Some(ttl) = self.cache_ttl {
            p.require(!ttl.is_zero(), "--cache-ttl must be positive");
        }
        p.finish()?;
        let durable = (!self.no_jetstream).then(|| DurableConfig {
            replicas: self.js_replicas,
            dedup_window: self.dedup_window,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            results_ttl: self.results_ttl,
            events_max_age: self.events_max_age,
            events_max_bytes: self.events_max_bytes,
            cache_ttl: self.cache_ttl,
            screenshots_ttl: self.screenshots_ttl,
            ..DurableConfig::default()
        });
        let limits = Limits {
            max_screenshot_bytes: self.max_screenshot_bytes,
            max_task_bytes: self.max_task_bytes,
            ..Limits::default()
        };
        Ok(CoordinatorConfig {
            chains,
            timeouts: PhaseTimeouts {
                parallel: self.parallel_timeout,
                reasoning: self.reasoning_timeout,
                verification: self.verification_timeout,
            },
            default_tools,
            enable_verification: self.enable_verification,
            limits,
            max_in_flight: self.max_in_flight,
            heartbeat_timeout: (!self.heartbeat_timeout.is_zero())
                .then_some(self.heartbeat_timeout),
            drain_timeout: self.drain_timeout,
            events: !self.no_events,
            progress_events: !self.no_progress_events,
            pull_dispatch,
            hedge,
            durable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults_follow_the_seed() {
        let c = CoordinatorConfig::default();
        let names = |r| c.chain(r).iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(Role::Reasoner), ["kimi_k2", "chatgpt", "local"]);
        assert_eq!(names(Role::Verifier), ["chatgpt", "local"]);
        assert_eq!(c.timeouts.parallel, Duration::from_secs(30));
        assert_eq!(c.timeouts.reasoning, Duration::from_secs(60));
        assert_eq!(c.timeouts.verification, Duration::from_secs(20));
        assert!(!c.enable_verification);
    }

    #[test]
    fn every_problem_is_reported() {
        let args = CoordinatorArgs::try_parse_from([
            "orch-coordinator",
            "--reasoner-chain",
            "a.b",
            "--default-tools",
            "vision,telepathy",
            "--max-in-flight",
            "0",
            "--reasoning-timeout",
            "0s",
        ])
        .unwrap();
        let e = args.to_config().unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
    }

    #[test]
    fn flags_build_a_config() {
        let args = CoordinatorArgs::try_parse_from([
            "orch-coordinator",
            "--reasoner-chain",
            "fast, slow",
            "--verify",
            "--heartbeat-timeout",
            "0",
            "--no-progress-events",
        ])
        .unwrap();
        let c = args.to_config().unwrap();
        assert_eq!(c.chain(Role::Reasoner).len(), 2);
        assert!(c.enable_verification);
        assert_eq!(c.heartbeat_timeout, None);
        assert!(c.events && !c.progress_events);
        let plain = CoordinatorArgs::try_parse_from(["orch-coordinator"]).unwrap();
        let c = plain.to_config().unwrap();
        assert!(c.events && c.progress_events, "both on by default");
    }
}
