//! The child executable's edges, without a model: how it refuses to run by
//! hand, reports a model it cannot load, and treats a bad or missing first line.
//! (The real model is exercised in the workspace's `tests/tests/local_model.rs`.)

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use orch_llama::protocol::{ChildConfig, FromChild, ToChild, encode};

const CHILD: &str = env!("CARGO_BIN_EXE_orch-llama-child");

/// Runs the child with `input` on stdin; `child_mode` sets `ORCH_LLAMA_CHILD`.
fn run(child_mode: bool, input: &[u8]) -> Output {
    let mut cmd = Command::new(CHILD);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if child_mode {
        cmd.env(orch_llama::ENV_CHILD, "1");
    } else {
        cmd.env_remove(orch_llama::ENV_CHILD);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {CHILD}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        // The child may exit before reading everything; that is its answer.
        let _ = stdin.write_all(input);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {CHILD}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "$ {CHILD}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn started_by_hand_it_explains_itself() {
    let out = run(false, b"");
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ORCH_LLAMA_CHILD"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_model_it_cannot_load_is_reported_on_the_protocol() {
    let init = ToChild::Init(ChildConfig {
        model_path: "/nonexistent/model.gguf".into(),
        threads: 1,
        ctx_size: 512,
        log_filter: "warn".into(),
    });
    let out = run(true, &encode(&init).expect("encode"));
    assert_eq!(out.status.code(), Some(71), "{}", describe(&out));
    let reply: FromChild =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)));
    match reply {
        FromChild::LoadFailed { message } => {
            assert!(message.contains("/nonexistent/model.gguf"), "{message}")
        }
        other => panic!("expected load_failed, got {other:?}"),
    }
}

#[test]
fn a_bad_first_line_is_refused_and_no_input_is_a_clean_exit() {
    let out = run(true, b"not json\n");
    assert_eq!(out.status.code(), Some(70), "{}", describe(&out));
    assert!(
        out.stdout.is_empty(),
        "nothing on the protocol channel: {}",
        describe(&out)
    );

    let cancel = encode(&ToChild::Cancel { id: 1 }).expect("encode");
    let out = run(true, &cancel);
    assert_eq!(
        out.status.code(),
        Some(70),
        "init must come first: {}",
        describe(&out)
    );

    let out = run(true, b"");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// Whether `pid` blocks SIGHUP, SIGINT and SIGTERM (from `/proc/<pid>/status`).
fn blocks_stop_signals(pid: u32) -> bool {
    const HUP_INT_TERM: u64 = (1 << 0) | (1 << 1) | (1 << 14);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & HUP_INT_TERM == HUP_INT_TERM)
}

#[test]
fn stop_signals_do_not_end_the_child_only_its_worker_does() {
    use std::time::{Duration, Instant};

    let mut child = Command::new(CHILD)
        .env(orch_llama::ENV_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {CHILD}: {e}"));
    let pid = child.id();
    let start = Instant::now();
    while !blocks_stop_signals(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "child {pid} never blocked its stop signals"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    // Nothing to wait for when a signal is ignored; give it time it would need to die.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        let status = child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "a stop signal ended the child: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child.stdin.take()); // the worker goes away
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "child did not exit after end of stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "end of stdin is a clean exit");
}
