//! Flags every worker binary shares (each also an environment variable).

use std::time::Duration;

use orch_shared::Slot;
use orch_shared::config::{ConfigError, NatsArgs, Problems, parse_duration};
use orch_shared::telemetry::LogArgs;

use crate::serve::ServeConfig;

/// Common worker flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub nats: NatsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
    /// Slot to serve; the slot picks the subject `orch.v1.work.<role>.<slot>`.
    /// Default: `default` for vision and web; for reasoner and verifier `local`
    /// with the local provider, else the role's primary (`kimi_k2`, `chatgpt`).
    #[arg(long, env = "ORCH_SLOT")]
    pub slot: Option<String>,
    /// Jobs processed at once. Default: 1 for vision (one GPU, one image), 8 otherwise.
    #[arg(long, env = "ORCH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Jobs accepted beyond --concurrency that wait for a free slot; more are refused
    /// with `overloaded` so the coordinator can go elsewhere at once.
    #[arg(long, env = "ORCH_MAX_QUEUE", default_value_t = 32)]
    pub max_queue: usize,
    /// After SIGTERM, how long in-flight jobs may still run before they are cancelled.
    #[arg(long, env = "ORCH_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Interval of progress heartbeats sent to the coordinator during long jobs.
    #[arg(long, env = "ORCH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Budget assumed for requests that carry none (`Orch-Budget-Ms`).
    #[arg(long, env = "ORCH_DEFAULT_BUDGET", default_value = "60s", value_parser = parse_duration)]
    pub default_budget: Duration,
    /// Refuse requests whose remaining budget is below this (`deadline_too_short`).
    #[arg(long, env = "ORCH_MIN_BUDGET", default_value = "1ms", value_parser = parse_duration)]
    pub min_budget: Duration,
    /// Serve the slot without any backend: every job is answered at once with
    /// `not_configured` and this reason (what would enable the role). `orch up`
    /// starts a role this way when it finds no backend for it, so a task says so
    /// once instead of failing on connection errors.
    #[arg(long, value_name = "REASON")]
    pub not_configured: Option<String>,
}

impl WorkerArgs {
    /// Arguments with every default and a plain NATS connection to `url` (tests, benches).
    pub fn for_url(url: &str) -> WorkerArgs {
        WorkerArgs {
            nats: NatsArgs::plain(url),
            log: LogArgs::default(),
            slot: None,
            concurrency: None,
            max_queue: 32,
            drain_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            default_budget: Duration::from_secs(60),
            min_budget: Duration::from_millis(1),
            not_configured: None,
        }
    }

    /// Validates the flags and builds the serve configuration. `problems` holds
    /// what the caller already found (provider flags); all are reported together.
    ///
    /// # Errors
    /// Every problem found, the caller's included.
    pub fn serve_config(
        &self,
        default_slot: &str,
        default_concurrency: usize,
        mut problems: Problems,
    ) -> Result<ServeConfig, ConfigError> {
        let problems = &mut problems;
        self.nats.check(problems);
        let slot = match self.slot.as_deref().unwrap_or(default_slot).parse::<Slot>() {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("--slot: {e}"));
                None
            }
        };
        let concurrency = self.concurrency.unwrap_or(default_concurrency);
        problems.require(
            (1..=4096).contains(&concurrency),
            format!("--concurrency must be 1..=4096, got {concurrency}"),
        );
        problems.require(
            self.max_queue <= 65_536,
            format!("--max-queue must be at most 65536, got {}", self.max_queue),
        );
        problems.require(
            !self.heartbeat_interval.is_zero(),
            "--heartbeat-interval must be positive",
        );
        problems.require(
            !self.default_budget.is_zero(),
            "--default-budget must be positive",
        );
        let (Some(slot), true) = (slot, problems.is_empty()) else {
            return Err(std::mem::take(problems)
                .finish()
                .err()
                .unwrap_or_else(|| ConfigError(vec!["invalid configuration".into()])));
        };
        Ok(ServeConfig {
            slot,
            concurrency,
            max_queue: self.max_queue,
            drain_timeout: self.drain_timeout,
            heartbeat_interval: self.heartbeat_interval,
            default_budget: self.default_budget,
            min_budget: self.min_budget,
        })
    }
}
