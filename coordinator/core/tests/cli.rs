//! The binary's command line: every flag documented, bad configuration exits 64
//! listing every problem.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch-coordinator"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run orch-coordinator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_every_flag() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--nats-url",
        "NATS_URL",
        "--nats-creds",
        "--nats-nkey-file",
        "--nats-user",
        "--nats-tls-ca",
        "--reasoner-chain",
        "--verifier-chain",
        "--vision-chain",
        "--web-chain",
        "--parallel-timeout",
        "--reasoning-timeout",
        "--verification-timeout",
        "--verify",
        "--default-tools",
        "--max-in-flight",
        "--heartbeat-timeout",
        "--drain-timeout",
        "--max-screenshot-bytes",
        "--log-format",
        "--log-level",
        "[default: kimi_k2,chatgpt,local]",
        "[default: 30s]",
        "[default: 60s]",
        "[default: 20s]",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

#[test]
fn bad_configuration_exits_64_listing_every_problem() {
    let (code, _, err) = run(&[
        "--reasoner-chain",
        "a.b",
        "--default-tools",
        "telepathy",
        "--max-in-flight",
        "0",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--reasoner-chain"), "{err}");
    assert!(err.contains("telepathy"), "{err}");
    assert!(err.contains("--max-in-flight"), "{err}");
    let (code, _, err) = run(&["--no-such-flag"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn unreachable_nats_exits_69_with_one_clear_line() {
    let (code, _, err) = run(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--nats-connect-timeout",
        "500ms",
    ]);
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("connecting to NATS at nats://127.0.0.1:1"),
        "{err}"
    );
}
