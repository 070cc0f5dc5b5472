//! `orch-web`: the web search and page fetch worker.
//!
//! flags → telemetry → check config (exit 64 listing every problem) → build
//! the handler (start Chromium for `--browser`; exit 69 if it cannot) →
//! connect → serve until SIGTERM → drain → close the browser → flush.

use std::process::ExitCode;

use clap::Parser;
use orch_shared::config::{ConfigError, EXIT_UNAVAILABLE, Problems, exit_config, parse_args};
use orch_shared::telemetry;
use orch_web::{WebArgs, WebWorker};
use orch_worker::WorkerArgs;

const NAME: &str = "orch-web";

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Web search and page fetch worker")]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    web: WebArgs,
}

#[global_allocator]
static ALLOC: orch_shared::Allocator = orch_shared::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_args();
    let telemetry = telemetry::init(NAME, &cli.worker.log);
    if let Some(handler) = orch_worker::run::not_configured(orch_shared::Role::Web, &cli.worker) {
        let code = orch_worker::run::run_checked(
            NAME,
            &cli.worker,
            Some(handler),
            ("default", 8),
            Problems::default(),
        )
        .await;
        telemetry.shutdown().await;
        return code;
    }
    let mut problems = Problems::default();
    let web_cfg = cli
        .web
        .config(&|var| std::env::var(var).ok(), &mut problems);
    let serve_cfg = match cli.worker.serve_config("default", 8, problems) {
        Ok(c) => c,
        Err(e) => exit_config(NAME, &e),
    };
    let Some(web_cfg) = web_cfg else {
        exit_config(NAME, &ConfigError(vec!["invalid web configuration".into()]))
    };
    let worker = match WebWorker::start(web_cfg).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{NAME}: {e}");
            telemetry.shutdown().await;
            return ExitCode::from(EXIT_UNAVAILABLE as u8);
        }
    };
    let code = orch_worker::run::run(&cli.worker, worker.handler(), serve_cfg).await;
    worker.shutdown().await;
    telemetry.shutdown().await;
    code
}
