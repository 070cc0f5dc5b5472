//! The life of a worker process after its flags are parsed: connect, serve
//! until SIGTERM/SIGINT, drain, report. Binaries call [`run`] and stay thin.

use std::process::ExitCode;
use std::sync::Arc;

use orch_shared::config::EXIT_UNAVAILABLE;
use orch_shared::shutdown;

use crate::args::WorkerArgs;
use crate::handler::Handler;
use crate::serve::{ServeConfig, serve};

/// Connects to NATS and serves `handler` until a shutdown signal, then drains.
///
/// Returns the process exit code: 0 after a clean drain, 69 when NATS is
/// unreachable at startup, 1 when serving failed.
pub async fn run(args: &WorkerArgs, handler: Arc<dyn Handler>, cfg: ServeConfig) -> ExitCode {
    let name = format!("orch-{}-{}", handler.role(), cfg.slot);
    let (client, _health) = match args.nats.connect(&name).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE as u8);
        }
    };
    let shutdown = shutdown::on_signal();
    match serve(client, handler, cfg, shutdown).await {
        Ok(report) => {
            tracing::info!(
                completed = report.completed,
                failed = report.failed,
                cancelled = report.cancelled_at_drain,
                "worker stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
