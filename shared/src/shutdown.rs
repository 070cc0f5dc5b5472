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

/// The two stages of a supervisor's shutdown: `drain` is cancelled on the first
/// SIGTERM/SIGINT, `force` on the second. Unlike [`on_signal`] nothing exits the
/// process, so a supervisor can still stop its children before it returns.
#[derive(Debug, Clone)]
pub struct Stages {
    /// Cancelled on the first signal: stop taking work, drain.
    pub drain: CancellationToken,
    /// Cancelled on the second signal: stop waiting, end everything now.
    pub force: CancellationToken,
}

/// Watches for signals and reports them as [`Stages`].
///
/// Must be called inside a Tokio runtime.
pub fn stages() -> Stages {
    let stages = Stages {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let s = stages.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered here, before returning: a signal that arrives from now on
        // is seen, even two in quick succession (one stream each, never recreated).
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            // Detached on purpose: it lives as long as the process and owns no resources.
            tokio::spawn(async move {
                for stage in [&s.drain, &s.force] {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    stage.cancel();
                }
            });
            return stages;
        }
    }
    tokio::spawn(async move {
        wait_for_signal().await;
        s.drain.cancel();
        wait_for_signal().await;
        s.force.cancel();
    });
    stages
}

/// How long one NATS step of a drain (unsubscribe, stop, flush) may take: with
/// the server gone such a step would otherwise wait for a reconnect forever.
pub const DRAIN_STEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a drain step may take while the connection is down: long enough
/// for work that is local (unsubscribing writes to a buffer), far too short to
/// wait for a server that is not there.
pub const DISCONNECTED_STEP_LIMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Awaits one step of a drain for at most [`DRAIN_STEP_LIMIT`], or
/// [`DISCONNECTED_STEP_LIMIT`] when `client` is not connected (a flush cannot
/// finish then); `None` (and a warning naming `what`) when it did not finish,
/// so the drain goes on.
pub async fn drain_step<F: std::future::Future>(
    client: &async_nats::Client,
    what: &str,
    fut: F,
) -> Option<F::Output> {
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    let limit = if connected {
        DRAIN_STEP_LIMIT
    } else {
        DISCONNECTED_STEP_LIMIT
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(
                step = what,
                connected,
                limit_ms = limit.as_millis() as u64,
                "drain step did not finish; going on"
            );
            None
        }
    }
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
