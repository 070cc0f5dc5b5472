//! The binary's command line: every common flag documented; bad configuration
//! exits 64 listing every problem.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch-web"))
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("ORCH_PROVIDER")
        .output()
        .expect("run orch-web");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_the_common_flags() {
    let (code, out, _) = run(&["--help"]);
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
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

#[test]
fn bad_configuration_exits_64_listing_every_problem() {
    let (code, _, err) = run(&[
        "--provider",
        "sim",
        "--slot",
        "a.b",
        "--concurrency",
        "0",
        "--sim-fail-rate",
        "2",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--slot"), "{err}");
    assert!(err.contains("--concurrency"), "{err}");
    assert!(err.contains("--sim-fail-rate"), "{err}");
}
