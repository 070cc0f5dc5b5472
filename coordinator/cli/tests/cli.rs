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

/// The benchmark itself runs (a short pass against its own nats-server; its
/// timings are not checked, this machine is noisy) and counts what a task
/// costs NATS: a floor chain is 4 request/replies, 8 messages each way; a
/// 4-phase task with events and JetStream sends 25 (submit, 4 work requests,
/// their 4 replies, the reply, 12 events, the pending marker, the stored result
/// and its announcement) and receives 14 (the 10 deliveries of the request/replies,
/// 3 JetStream acknowledgements and the final event for the stats projection).
/// A change that adds messages to every task fails here and updates the README.
/// Bytes and CPU time per task and per chain are reported too.
#[test]
fn bench_reports_its_figures_and_the_messages_per_task() {
    let dir = std::env::temp_dir().join(format!("orch-bench-{}", std::process::id()));
    let (code, out, err) = orch(&[
        "bench",
        "--quick",
        "--only",
        "p1",
        "--concurrency",
        "1,4",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    let figure = |key: &str| {
        figures[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no `{key}` in {figures}"))
    };
    assert!(figure("p1_overhead_ratio") > 0.0, "{figures}");
    assert!(figure("floor_p50_ms") > 0.0, "{figures}");
    // Whole messages: anything else in the window (a stats snapshot) is a few in 200 runs.
    for (key, expected) in [
        ("floor_msgs_sent_per_chain", 8.0),
        ("floor_msgs_received_per_chain", 8.0),
        ("task_msgs_sent", 25.0),
        ("task_msgs_received", 14.0),
    ] {
        let got = figure(key);
        assert!(
            (got - expected).abs() < 0.5,
            "{key}: {got}, expected {expected}"
        );
    }
    // Bytes and CPU time are measured (their sizes depend on the build and the machine).
    assert!(
        figure("task_bytes_sent") > figure("floor_bytes_sent_per_chain"),
        "{figures}"
    );
    assert!(figure("task_bytes_received") > 0.0, "{figures}");
    for key in ["task_cpu_us_rig", "task_cpu_us_server", "floor_cpu_us_rig"] {
        assert!(figure(key) >= 0.0, "{key}: {figures}");
    }
    let csv = std::fs::read_to_string(dir.join("bench.csv")).expect("bench.csv written");
    assert!(csv.contains("p1: 4-phase task, concurrency 1"), "{csv}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The outage drill runs both reconnect policies and reports both figures
/// (their values are the benchmark's business, not a test's).
#[test]
fn bench_p6_reports_serving_again_after_an_outage() {
    let dir = std::env::temp_dir().join(format!("orch-bench-p6-{}", std::process::id()));
    let (code, out, err) = orch(&[
        "bench",
        "--quick",
        "--only",
        "p6",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in ["p6_serving_again_ms", "p6_serving_again_vs_default"] {
        assert!(
            figures[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {figures}"
        );
    }
    assert!(out.contains("async-nats default policy"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
