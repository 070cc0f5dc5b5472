//! SIGTERM/SIGINT handling: the first signal starts a graceful drain, a second
//! one exits at once.

use tokio_util::sync::CancellationToken;

/// Exit code after a forced (second-signal) exit: 128 + SIGINT.
pub const EXIT_FORCED: i32 = 130;

/// Returns a token cancelled on the first SIGTERM or SIGINT. A second signal
/// exits the process immediately with [`EXIT_FORCED`].
///
/// Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Detached on purpose: it lives as long as the process and owns no resources.
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (send again to exit now)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without finishing the drain");
        std::process::exit(EXIT_FORCED);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
