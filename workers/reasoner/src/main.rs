//! `orch-reasoner`: Planning worker (Kimi K2, OpenAI, local models) for one fallback slot.
//!
//! flags → telemetry → build the handler → connect → serve until SIGTERM → drain → flush.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use orch_shared::config::{Problems, exit_config, parse_args};
use orch_shared::{Role, telemetry};
use orch_worker::sim::{SimArgs, SimHandler};
use orch_worker::{Handler, WorkerArgs};

const NAME: &str = "orch-reasoner";

/// Backends this worker can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Provider {
    /// The documented simulator (tests, benchmarks); never for real use.
    Sim,
}

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Planning worker (Kimi K2, OpenAI, local models) for one fallback slot")]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Backend to use.
    #[arg(long, env = "ORCH_PROVIDER", value_enum)]
    provider: Provider,
    #[command(flatten)]
    sim: SimArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_args();
    let telemetry = telemetry::init(NAME, &cli.worker.log);
    let mut problems = Problems::default();
    let handler: Arc<dyn Handler> = match cli.provider {
        Provider::Sim => {
            cli.sim.check(&mut problems);
            Arc::new(SimHandler::new(Role::Reasoner, cli.sim.clone()))
        }
    };
    let serve_cfg = match cli.worker.serve_config("kimi_k2", 8, problems) {
        Ok(c) => c,
        Err(e) => exit_config(NAME, &e),
    };
    let code = orch_worker::run::run(&cli.worker, handler, serve_cfg).await;
    telemetry.shutdown().await;
    code
}
