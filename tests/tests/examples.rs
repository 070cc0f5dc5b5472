//! The SDK examples (one per example of the seed) run against a simulated fleet.

use std::process::Command;
use std::time::Duration;

use orch_coordinator::CoordinatorConfig;
use orch_shared::Role;
use orch_tests::fleet::{Fleet, WorkerSpec};
use orch_tests::nats::NatsServer;
use orch_tests::process::example;

fn run_example(name: &str, url: &str, args: &[&str]) -> String {
    let out = Command::new(example(name))
        .args(args)
        .env("NATS_URL", url)
        .output()
        .unwrap_or_else(|e| panic!("running example {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn every_example_runs_against_a_fleet() {
    let nats = NatsServer::start();
    let url = nats.url();
    let _fleet = Fleet::start(
        &url,
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Vision, "default").with(|s| s.vision_errors = true),
            WorkerSpec::sim(Role::Web, "default").with(|s| s.latency = Duration::from_millis(50)),
            WorkerSpec::sim(Role::Reasoner, "chatgpt"),
            WorkerSpec::sim(Role::Verifier, "chatgpt")
                .with(|s| s.verdict = orch_worker::sim::SimVerdict::Rejected),
        ],
    )
    .await;
    let png = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        png.path(),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3],
    )
    .unwrap();
    let png = png.path().to_str().unwrap().to_string();

    let url2 = url.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        vec![
            ("basic", run_example("basic", &url2, &[])),
            ("verification", run_example("verification", &url2, &[])),
            ("vision", run_example("vision", &url2, &[&png])),
            ("conflict", run_example("conflict", &url2, &[])),
            ("fallback_chain", run_example("fallback_chain", &url2, &[])),
            (
                "parallel_context",
                run_example("parallel_context", &url2, &[&png]),
            ),
            ("shared_handle", run_example("shared_handle", &url2, &[])),
        ]
    })
    .await
    .unwrap();
    let out = |n: &str| {
        outputs
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    assert!(out("basic").contains("Models Used"), "{}", out("basic"));
    assert!(
        out("verification").contains("Verification: rejected"),
        "{}",
        out("verification")
    );
    assert!(
        out("vision").contains("errors_detected"),
        "{}",
        out("vision")
    );
    assert!(
        out("conflict").contains("verification rejected"),
        "{}",
        out("conflict")
    );
    assert!(
        out("fallback_chain").contains("fallback: reasoner/kimi_k2: no responders"),
        "{}",
        out("fallback_chain")
    );
    assert!(
        out("fallback_chain").contains("answered by reasoner/chatgpt"),
        "{}",
        out("fallback_chain")
    );
    assert!(
        out("parallel_context").contains("vision"),
        "{}",
        out("parallel_context")
    );
    assert!(
        out("shared_handle").contains("Total Executions: 6"),
        "{}",
        out("shared_handle")
    );
}
