//! The one integration-test harness.
//!
//! - [`nats`]: a real `nats-server` per test on an ephemeral port with its own
//!   store dir, killed on drop; restartable; 3-node clusters on loopback.
//! - [`process`]: fleet binaries as child processes (stdout/stderr captured
//!   and printed when a test fails), SIGTERM/SIGKILL.
//! - [`fleet`]: coordinator and simulated workers in-process, for fast tests.
//! - [`fake`]: protocol-faithful fake model, search and web servers.
//! - [`tally`]: counting results and final events, to prove "all done, none twice".
//! - [`otlp`]: an OTLP/HTTP(S) receiver decoding what processes export.
//! - [`pki`]: test certificates (CA, server, client, a rogue CA).
//! - [`wait`]: every await with a deadline; `eventually` for settling states.
#![forbid(unsafe_code)]

pub mod fake;
pub mod fleet;
pub mod nats;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod tally;
pub mod wait;

/// Installs a test log subscriber once (`RUST_LOG` controls it; default `warn`).
pub fn init_logs() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
