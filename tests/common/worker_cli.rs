//! Command-line checks shared by the four worker binaries; each worker
//! crate's own `tests/cli.rs` includes this file and names its binary:
//!
//! ```ignore
//! #[path = "../../../tests/common/worker_cli.rs"]
//! #[macro_use]
//! mod worker_cli;
//! worker_cli_tests!(env!("CARGO_BIN_EXE_orch-vision"));
//! ```
//!
//! (Each binary crate keeps an integration test of its own so that `cargo
//! test --workspace` builds every binary the fleet tests run.)

use std::process::Command;

pub fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("ORCH_PROVIDER")
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn help_documents_the_common_flags(bin: &str) {
    let (code, out, _) = run(bin, &["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--nats-url",
        "NATS_URL",
        "--nats-creds",
        "--slot",
        "ORCH_SLOT",
        "--concurrency",
        "--max-queue",
        "--drain-timeout",
        "--heartbeat-interval",
        "--provider",
        "--sim-latency",
        "--sim-fail-rate",
        "--sim-hang",
        "--log-format",
    ] {
        assert!(out.contains(flag), "{bin} --help lacks {flag}:\n{out}");
    }
}

pub fn bad_configuration_exits_64_listing_every_problem(bin: &str) {
    let (code, _, err) = run(
        bin,
        &[
            "--provider",
            "sim",
            "--slot",
            "a.b",
            "--concurrency",
            "0",
            "--sim-fail-rate",
            "2",
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--slot"), "{err}");
    assert!(err.contains("--concurrency"), "{err}");
    assert!(err.contains("--sim-fail-rate"), "{err}");
}

/// The two tests, for the binary at `$path`.
macro_rules! worker_cli_tests {
    ($path:expr) => {
        #[test]
        fn help_documents_the_common_flags() {
            worker_cli::help_documents_the_common_flags($path);
        }

        #[test]
        fn bad_configuration_exits_64_listing_every_problem() {
            worker_cli::bad_configuration_exits_64_listing_every_problem($path);
        }
    };
}
