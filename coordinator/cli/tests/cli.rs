//! `orch` command line basics (the subcommands are exercised against a real
//! fleet in the workspace's `tests/` crate).

use std::process::Command;

fn orch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run orch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_subcommand() {
    let (code, out, _) = orch(&["--help"]);
    assert_eq!(code, 0);
    for sub in [
        "submit", "stats", "workers", "events", "up", "bench", "schemas",
    ] {
        assert!(out.contains(sub), "{out}");
    }
    let (code, out, _) = orch(&["submit", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--tools",
        "--screenshot",
        "--context",
        "--verify",
        "--json",
        "--available-tools",
        "--query",
    ] {
        assert!(out.contains(flag), "{out}");
    }
}

#[test]
fn no_coordinator_is_a_clear_error() {
    let (code, _, err) = orch(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--nats-connect-timeout",
        "300ms",
        "stats",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("connecting to NATS"), "{err}");
}

#[test]
fn schemas_are_written() {
    let dir = std::env::temp_dir().join(format!("orch-schemas-{}", std::process::id()));
    let (code, out, err) = orch(&["schemas", "--out", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("submit_request.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("submit_request.json")).unwrap())
            .unwrap();
    assert_eq!(schema["required"], serde_json::json!(["task"]));
    let _ = std::fs::remove_dir_all(dir);
}
