//! `orch-vision`: Screenshot analysis worker (Ollama / OpenAI-compatible vision models).
//!
//! flags → telemetry → build the handler → connect → serve until SIGTERM → drain → flush.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use orch_providers::cli::ModelArgs;
use orch_shared::config::{Problems, parse_args};
use orch_shared::{Role, telemetry};
use orch_worker::run::run_checked;
use orch_worker::sim::{SimArgs, SimHandler};
use orch_worker::{Handler, WorkerArgs};

const NAME: &str = "orch-vision";
const ROLE: Role = Role::Vision;

/// Backends this worker can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Provider {
    /// Ollama's native API (default; model minicpm-v unless --ollama-model).
    Ollama,
    /// An OpenAI-compatible Chat Completions API with a vision model (--base-url, --model).
    Openai,
    /// The documented simulator (tests, benchmarks); never for real use.
    Sim,
}

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Screenshot analysis worker (Ollama / OpenAI-compatible vision models)")]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Backend to use.
    #[arg(long, env = "ORCH_PROVIDER", value_enum, default_value_t = Provider::Ollama)]
    provider: Provider,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    sim: SimArgs,
}

#[global_allocator]
static ALLOC: orch_shared::Allocator = orch_shared::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_args();
    let telemetry = telemetry::init(NAME, &cli.worker.log);
    let mut problems = Problems::default();
    let unconfigured = orch_worker::run::not_configured(ROLE, &cli.worker);
    let handler: Option<Arc<dyn Handler>> = match cli.provider {
        _ if unconfigured.is_some() => unconfigured,
        Provider::Ollama => cli.models.ollama(ROLE, &mut problems),
        Provider::Openai => cli.models.openai(ROLE, &mut problems),
        Provider::Sim => {
            cli.sim.check(&mut problems);
            Some(Arc::new(SimHandler::new(ROLE, cli.sim.clone())))
        }
    };
    // One GPU, one image at a time unless --concurrency says otherwise.
    let code = run_checked(NAME, &cli.worker, handler, ("default", 1), problems).await;
    telemetry.shutdown().await;
    code
}
