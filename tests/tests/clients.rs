//! The README's Python (nats-py) and Node (`nats` from npm) snippets, run as
//! written against a simulated fleet: clients no one on this team wrote.
//!
//! The clients live in `$ORCH_CLIENTS_DIR` (`python/` for `pip --target`,
//! `node/` for `npm --prefix`); `.ci/run` installs them there and sets
//! `ORCH_REQUIRE_CLIENTS=1`, so in CI a missing client fails the test. Without
//! that variable a machine that lacks them skips these two tests and says so.

use std::path::PathBuf;
use std::process::Command;

use orch_coordinator::CoordinatorConfig;
use orch_shared::Role;
use orch_tests::fleet::{Fleet, WorkerSpec};
use orch_tests::nats::NatsServer;

/// The README's code blocks in `lang` (```python, ```js).
fn snippets(lang: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let fence = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body
            .find("```\n")
            .unwrap_or_else(|| panic!("unclosed ```{lang} block"));
        found.push(body[..end].to_string());
        rest = &body[end..];
    }
    found
}

/// Where the clients are, or `None` (after saying why) when this machine
/// lacks them and CI did not ask for them.
fn clients(kind: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("ORCH_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/orch-clients")
        })
        .join(kind);
    let present = match kind {
        "python" => dir.join("nats").is_dir(),
        _ => dir.join("node_modules/nats").is_dir(),
    };
    if present {
        return Some(dir);
    }
    let how = "install them as .ci/run does (pip install --target \"$ORCH_CLIENTS_DIR/python\" nats-py; npm install --prefix \"$ORCH_CLIENTS_DIR/node\" nats)";
    assert!(
        std::env::var_os("ORCH_REQUIRE_CLIENTS").is_none(),
        "no {kind} NATS client in {}: {how}",
        dir.display()
    );
    eprintln!("SKIPPED: no {kind} NATS client in {}; {how}", dir.display());
    None
}

async fn fleet(url: &str) -> Fleet {
    Fleet::start(
        url,
        CoordinatorConfig::default(),
        vec![
            WorkerSpec::sim(Role::Vision, "default"),
            WorkerSpec::sim(Role::Web, "default"),
            WorkerSpec::sim(Role::Reasoner, "kimi_k2"),
            WorkerSpec::sim(Role::Verifier, "chatgpt"),
        ],
    )
    .await
}

/// Runs `cmd` to its end off the runtime and returns its stdout; fails on a non-zero exit.
async fn run(mut cmd: Command, what: &str) -> String {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
    .await
    .unwrap_or_else(|e| panic!("join: {e}"))
}

/// What both snippets print: the confidence, then the plan.
fn assert_printed_a_result(stdout: &str) {
    let (confidence, answer) = stdout
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("expected `<confidence> <answer>`, got {stdout:?}"));
    let confidence: f64 = confidence
        .parse()
        .unwrap_or_else(|e| panic!("confidence {confidence:?}: {e}"));
    assert!((0.0..=1.0).contains(&confidence), "{stdout}");
    assert!(answer.contains("steps"), "the plan is printed: {stdout}");
}

#[tokio::test]
async fn the_readme_python_snippet_gets_a_result() {
    let Some(dir) = clients("python") else { return };
    let code = snippets("python");
    assert_eq!(code.len(), 1, "one Python snippet in the README");
    let nats = NatsServer::start();
    let _fleet = fleet(&nats.url()).await;
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // The snippet reads page.png from its working directory.
    std::fs::write(
        work.path().join("page.png"),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3],
    )
    .unwrap_or_else(|e| panic!("page.png: {e}"));
    let script = work.path().join("snippet.py");
    std::fs::write(
        &script,
        code[0].replace("nats://127.0.0.1:4222", &nats.url()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .current_dir(work.path())
        .env("PYTHONPATH", &dir);
    assert_printed_a_result(&run(cmd, "the README's Python snippet").await);
}

#[tokio::test]
async fn the_readme_node_snippet_gets_a_result() {
    let Some(dir) = clients("node") else { return };
    let code = snippets("js");
    assert_eq!(code.len(), 1, "one Node snippet in the README");
    let nats = NatsServer::start();
    let _fleet = fleet(&nats.url()).await;
    // An ES module next to the node_modules it imports from.
    let script = tempfile::Builder::new()
        .suffix(".mjs")
        .tempfile_in(&dir)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        script.path(),
        code[0].replace("nats://127.0.0.1:4222", &nats.url()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("node");
    cmd.arg(script.path());
    assert_printed_a_result(&run(cmd, "the README's Node snippet").await);
}
