//! `orch eval` end to end: a labelled task file run through a real
//! nats-server and a simulated fleet (named as such; the answers are known in
//! advance), and the report's numbers checked against the per-task lines and
//! against what each task had to produce.

use std::collections::BTreeMap;

use orch_coordinator::CoordinatorConfig;
use orch_tests::fleet::{Fleet, standard_workers};
use orch_tests::nats::NatsServer;
use orch_tests::process::binary;
use serde_json::Value;

/// Each task with whether it must pass against the simulator, which plans one
/// step per available tool (at most three) and approves every plan.
const TASKS: &[(&str, bool)] = &[
    (
        r#"{"id":"uses-nav","request":{"task":"open it","tools":["reasoner"],"available_tools":["nav","click"]},"expect":{"must_use":["nav"],"first_tool":"nav","max_steps":3}}"#,
        true,
    ),
    (
        r#"{"id":"too-many-steps","request":{"task":"open it","tools":["reasoner"],"available_tools":["a","b","c","d"]},"expect":{"max_steps":2}}"#,
        false,
    ),
    (
        r#"{"id":"no-tools-no-steps","request":{"task":"order pizza","tools":["reasoner"],"available_tools":[]},"expect":{"expect_failure":true}}"#,
        true,
    ),
    (
        r#"{"id":"should-refuse","request":{"task":"fax it","tools":["reasoner"],"available_tools":["nav"]},"expect":{"expect_failure":true}}"#,
        false,
    ),
    (
        r#"{"id":"answer-regex","request":{"task":"read the news","tools":["reasoner"],"available_tools":["nav"]},"expect":{"answer_matches":["plan for: read the news$"]}}"#,
        true,
    ),
    (
        r#"{"id":"verify-approves","request":{"task":"t","tools":["verifier"],"available_tools":["nav"]},"verify_plan":{"steps":[{"tool":"nav","args":{}}],"answer":"a","confidence":0.9},"expect":{"verdict":"approved"}}"#,
        true,
    ),
    (
        r#"{"id":"verify-should-reject","request":{"task":"t","tools":["verifier"],"available_tools":["nav"]},"verify_plan":{"steps":[{"tool":"rm","args":{}}],"answer":"a","confidence":0.9},"expect":{"verdict":"rejected"}}"#,
        false,
    ),
];

/// Runs `orch eval` without blocking the runtime that serves the in-process fleet.
async fn eval(url: &str, dir: &std::path::Path, extra: &[&str]) -> (Vec<Value>, Value) {
    let file = dir.join("tasks.jsonl");
    let lines: Vec<&str> = TASKS.iter().map(|t| t.0).collect();
    std::fs::write(&file, lines.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::process::Command::new(binary("orch"))
        .args(["--nats-url", url, "eval", "--tasks"])
        .arg(&file)
        .args(["--json", "--concurrency", "3"])
        .args(extra)
        .output()
        .await
        .unwrap_or_else(|e| panic!("orch eval: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "orch eval failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let summary = values.pop().unwrap_or_else(|| panic!("no output"));
    (values, summary)
}

#[tokio::test]
async fn the_report_agrees_with_the_answers_it_saw() {
    let nats = NatsServer::start();
    let _fleet = Fleet::start(
        &nats.url(),
        CoordinatorConfig::default(),
        standard_workers(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plot = dir.path().join("reliability.svg");
    let (tasks, summary) = eval(
        &nats.url(),
        dir.path(),
        &["--plot", plot.to_str().unwrap_or_default()],
    )
    .await;

    // Every task was judged as its labels say.
    assert_eq!(tasks.len(), TASKS.len());
    for (line, want) in TASKS {
        let id = serde_json::from_str::<Value>(line).unwrap_or_default()["id"].clone();
        let got = tasks
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"));
        assert_eq!(got["pass"], *want, "{got}");
        assert_eq!(
            got["failures"].as_array().is_some_and(Vec::is_empty),
            *want,
            "{got}"
        );
    }
    let refused = tasks.iter().find(|t| t["id"] == "should-refuse");
    assert_eq!(
        refused.map(|t| t["failures"][0].clone()),
        Some(Value::from(
            "no available tool fits, but the plan has 1 steps (nav)"
        ))
    );

    // The summary's figures are those of the per-task lines, per variant.
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for t in &tasks {
        groups
            .entry(t["variant"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(t);
    }
    let variants = summary["variants"]
        .as_object()
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(variants.len(), groups.len(), "{summary}");
    for (name, group) in &groups {
        let v = &variants[name];
        let n = group.len() as f64;
        let passes = group.iter().filter(|t| t["pass"] == true).count() as f64;
        let conf: Vec<f64> = group
            .iter()
            .map(|t| t["confidence"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let brier: f64 = group
            .iter()
            .zip(&conf)
            .map(|(t, c)| (c - if t["pass"] == true { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>()
            / n;
        let close = |key: &str, want: f64| {
            let got = v[key].as_f64().unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-9, "{name} {key}: {got} != {want}");
        };
        assert_eq!(v["tasks"], group.len(), "{name}");
        close("pass_rate", passes / n);
        close("mean_confidence", conf.iter().sum::<f64>() / n);
        close("brier", brier);
        for key in ["valid_rate", "ece", "p50_ms", "p95_ms"] {
            assert!(v[key].is_number(), "{name} has no {key}: {v}");
        }
    }
    // Reasoner tasks: four of five pass; verifier tasks: one of two.
    let total_pass = tasks.iter().filter(|t| t["pass"] == true).count();
    assert_eq!(total_pass, 4);
    let svg = std::fs::read_to_string(&plot).unwrap_or_else(|e| panic!("{e}"));
    assert!(svg.starts_with("<svg") && svg.contains("perfectly calibrated"));

    // --variant names every outcome.
    let (tasks, summary) = eval(&nats.url(), dir.path(), &["--variant", "baseline"]).await;
    assert!(tasks.iter().all(|t| t["variant"] == "baseline"));
    assert_eq!(summary["variants"]["baseline"]["tasks"], TASKS.len());
    let rate = summary["variants"]["baseline"]["pass_rate"].as_f64();
    assert_eq!(rate, Some(4.0 / 7.0));
}

#[test]
fn no_fleet_is_a_clear_error_not_a_report() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("t.jsonl");
    std::fs::write(&file, TASKS[0].0).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(binary("orch"))
        .args(["--nats-url", &nats.url(), "eval", "--tasks"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no coordinator"), "{err}");
}
