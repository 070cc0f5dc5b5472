//! The whole of a model worker binary (`orch-reasoner`, `orch-verifier`):
//! flags → telemetry → build the handler → connect → serve until SIGTERM →
//! drain → flush. The two binaries differ only in name, role, description and
//! the slot a hosted backend serves by default.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory as _, Parser};
use orch_providers::cli::ModelArgs;
use orch_shared::config::{Problems, parse_command};
use orch_shared::{Role, telemetry};
use orch_worker::run::run_checked;
use orch_worker::sim::{SimArgs, SimHandler};
use orch_worker::{Handler, WorkerArgs};

use crate::LocalArgs;

/// What sets one model worker binary apart.
#[derive(Debug, Clone, Copy)]
pub struct ModelWorker {
    /// Binary and service name (`orch-reasoner`).
    pub name: &'static str,
    /// The role it serves.
    pub role: Role,
    /// One line for `--help`.
    pub about: &'static str,
    /// The slot a hosted backend (OpenAI-compatible, Ollama) serves unless
    /// `--slot` says otherwise; the local model serves `local`.
    pub hosted_slot: &'static str,
}

/// Backends a model worker can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Provider {
    /// An OpenAI-compatible Chat Completions API: Kimi K2 on Moonshot, OpenAI,
    /// OpenRouter, vLLM (--base-url, --model, --api-key-env).
    Openai,
    /// Ollama's native API (--ollama-model).
    Ollama,
    /// The embedded GGUF model run with llama.cpp (`deploy/fetch-model.sh --list`
    /// names the choices and the default). Needs no keys and no network.
    Local,
    /// The documented simulator (tests, benchmarks); never for real use.
    Sim,
}

#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Backend to use.
    #[arg(long, env = "ORCH_PROVIDER", value_enum, default_value = "local")]
    provider: Provider,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    local: LocalArgs,
    #[command(flatten)]
    sim: SimArgs,
}

/// The process allocator of model worker binaries (see [`model_worker_main`](crate::model_worker_main)).
pub use orch_shared::Allocator;

/// The whole `main` of a model worker binary: when re-executed as the local
/// model's child process, serve the model (never returns); else run `$worker`
/// on a tokio runtime. Also installs the process allocator.
#[macro_export]
macro_rules! model_worker_main {
    ($worker:expr) => {
        #[global_allocator]
        static ALLOC: $crate::worker::Allocator = $crate::worker::Allocator;

        fn main() -> ::std::process::ExitCode {
            $crate::maybe_run_child();
            $crate::worker::block_on_run($worker)
        }
    };
}

/// [`run`] on a new multi-threaded tokio runtime.
pub fn block_on_run(w: ModelWorker) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(w)),
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", w.name);
            ExitCode::FAILURE
        }
    }
}

/// Runs the worker until SIGTERM and drain; the process's exit code.
pub async fn run(w: ModelWorker) -> ExitCode {
    let cli: Cli = parse_command(Cli::command().name(w.name).bin_name(w.name).about(w.about));
    let telemetry = telemetry::init(w.name, &cli.worker.log);
    let mut problems = Problems::default();
    let unconfigured = orch_worker::run::not_configured(w.role, &cli.worker);
    let handler: Option<Arc<dyn Handler>> = match cli.provider {
        _ if unconfigured.is_some() => unconfigured,
        Provider::Openai => cli.models.openai(w.role, &mut problems),
        Provider::Ollama => cli.models.ollama(w.role, &mut problems),
        Provider::Local => cli
            .local
            .build(&mut problems)
            .and_then(|model| cli.models.handler(w.role, model, &mut problems)),
        Provider::Sim => {
            cli.sim.check(&mut problems);
            Some(Arc::new(SimHandler::new(w.role, cli.sim.clone())))
        }
    };
    // The local model is its own slot; hosted backends default to the role's primary.
    let default_slot = if cli.provider == Provider::Local {
        "local"
    } else {
        w.hosted_slot
    };
    let code = run_checked(w.name, &cli.worker, handler, (default_slot, 8), problems).await;
    telemetry.shutdown().await;
    code
}
