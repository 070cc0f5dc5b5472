//! The life of a worker process after its flags are parsed: connect, serve
//! until SIGTERM/SIGINT, drain, report. Binaries call [`run`] and stay thin.

use std::process::ExitCode;
use std::sync::Arc;

use orch_shared::config::{ConfigError, EXIT_UNAVAILABLE, Problems, exit_config};
use orch_shared::shutdown;

use crate::args::WorkerArgs;
use crate::handler::Handler;
use crate::serve::{ServeConfig, serve};

/// The handler to serve when `--not-configured` is given (no backend is built
/// at all then), else `None`.
pub fn not_configured(role: orch_shared::Role, args: &WorkerArgs) -> Option<Arc<dyn Handler>> {
    let reason = args.not_configured.as_deref()?;
    Some(Arc::new(crate::handler::NotConfigured::new(role, reason)))
}

/// A worker binary's life after its flags are parsed and its handler built:
/// the configuration is checked (every problem listed, exit 64; a `handler`
/// that could not be built has reported its problem too), then [`run`] with
/// `default_slot` and `default_concurrency` where the flags say nothing.
pub async fn run_checked(
    program: &str,
    args: &WorkerArgs,
    handler: Option<Arc<dyn Handler>>,
    (default_slot, default_concurrency): (&str, usize),
    problems: Problems,
) -> ExitCode {
    let cfg = match args.serve_config(default_slot, default_concurrency, problems) {
        Ok(c) => c,
        Err(e) => exit_config(program, &e),
    };
    let Some(handler) = handler else {
        exit_config(
            program,
            &ConfigError(vec!["no backend could be built".into()]),
        )
    };
    run(args, handler, cfg).await
}

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
