//! `orch-verifier`: Verification worker: a second model's verdict on the primary answer.
//!
//! flags → telemetry → build the handler → connect → serve until SIGTERM → drain → flush.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use orch_providers::cli::ModelArgs;
use orch_shared::config::{ConfigError, Problems, exit_config, parse_args};
use orch_shared::{Role, telemetry};
use orch_worker::sim::{SimArgs, SimHandler};
use orch_worker::{Handler, WorkerArgs};

const NAME: &str = "orch-verifier";
const ROLE: Role = Role::Verifier;

/// Backends this worker can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Provider {
    /// An OpenAI-compatible Chat Completions API: Kimi K2 on Moonshot, OpenAI,
    /// OpenRouter, vLLM (--base-url, --model, --api-key-env).
    Openai,
    /// Ollama's native API (--ollama-model).
    Ollama,
    // The local GGUF backend goes here (and becomes the default).
    /// The documented simulator (tests, benchmarks); never for real use.
    Sim,
}

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Verification worker: a second model's verdict on the primary answer")]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Backend to use.
    #[arg(long, env = "ORCH_PROVIDER", value_enum)]
    provider: Provider,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    sim: SimArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_args();
    let telemetry = telemetry::init(NAME, &cli.worker.log);
    let mut problems = Problems::default();
    let handler: Option<Arc<dyn Handler>> = match cli.provider {
        Provider::Openai => cli.models.openai(ROLE, &mut problems),
        Provider::Ollama => cli.models.ollama(ROLE, &mut problems),
        // Provider::Local => ... (the local GGUF backend)
        Provider::Sim => {
            cli.sim.check(&mut problems);
            Some(Arc::new(SimHandler::new(ROLE, cli.sim.clone())))
        }
    };
    let serve_cfg = match cli.worker.serve_config("chatgpt", 8, problems) {
        Ok(c) => c,
        Err(e) => exit_config(NAME, &e),
    };
    // A handler is missing only together with a problem, which serve_config reported.
    let Some(handler) = handler else {
        exit_config(NAME, &ConfigError(vec!["no backend could be built".into()]))
    };
    let code = orch_worker::run::run(&cli.worker, handler, serve_cfg).await;
    telemetry.shutdown().await;
    code
}
