//! Logging and tracing setup, in one place for every binary.
//!
//! Logs go to stderr as text (default) or JSON lines (`--log-format json`).
//! The filter comes from `--log-level` / `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags shared by every binary.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long = "log-format", env = "ORCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `orch_coordinator=debug,async_nats=warn`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub level: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Handle that flushes telemetry on shutdown.
#[must_use = "call shutdown() before exiting so buffered telemetry is flushed"]
pub struct Telemetry {
    service: String,
}

impl Telemetry {
    /// The service name telemetry reports.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Flushes and stops telemetry.
    pub async fn shutdown(self) {
        tracing::debug!(service = %self.service, "telemetry shut down");
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls
/// keep the first subscriber), so tests can run several components in-process.
pub fn init(service: &str, args: &LogArgs) -> Telemetry {
    let filter = EnvFilter::try_new(&args.level).unwrap_or_else(|e| {
        eprintln!(
            "{service}: invalid log filter `{}` ({e}); using `info`",
            args.level
        );
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match args.format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    Telemetry {
        service: service.to_string(),
    }
}
