//! `orch up` as a user runs it: a real nats-server it starts itself, real
//! worker processes, and, above all, what is left afterwards: no process, no
//! held port, whatever way it was stopped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use orch_tests::nats::NatsServer;
use orch_tests::process::Proc;
use orch_tests::wait::eventually;

/// Generous bounds: these are deadlines for "it stops", not speed claims.
const STOP_LIMIT: Duration = Duration::from_secs(60);
const READY_LIMIT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The processes `orch up` recorded in its pid file (not itself).
fn children(state: &Path) -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(state.join("up.pid")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            if name == "orch-up" {
                return None;
            }
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect()
}

struct Up {
    proc: Proc,
    state: tempfile::TempDir,
    port: u16,
}

impl Up {
    fn start(extra: &[&str]) -> Up {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = free_port();
        Up::start_at(extra, state, port)
    }

    fn start_at(extra: &[&str], state: tempfile::TempDir, port: u16) -> Up {
        let url = format!("nats://127.0.0.1:{port}");
        let dir = state.path().display().to_string();
        let mut args = vec![
            "up",
            "--nats-url",
            &url,
            "--state-dir",
            &dir,
            "--drain-timeout",
            "10s",
        ];
        args.extend_from_slice(extra);
        let proc = Proc::start_without(
            "orch",
            &args,
            &[],
            &["NATS_URL", "MOONSHOT_API_KEY", "OPENAI_API_KEY"],
        );
        Up { proc, state, port }
    }

    fn state(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    async fn ready(&mut self) {
        let what = format!("orch up ready\n{}", self.proc.describe());
        eventually(READY_LIMIT, &what, || {
            let done = self.proc.stderr().contains("fleet ready in");
            async move { done.then_some(()) }
        })
        .await;
        assert_eq!(
            children(&self.state()).len(),
            6,
            "nats-server, 4 workers and the coordinator:\n{}",
            self.proc.describe()
        );
    }

    /// Everything it started is gone and its port is free.
    async fn nothing_left(&self, recorded: &[(String, i32)]) {
        let what = format!(
            "no process of orch up left ({recorded:?}) and port {} free\n{}",
            self.port,
            self.proc.describe()
        );
        let port = self.port;
        eventually(STOP_LIMIT, &what, || {
            let left: Vec<_> = recorded.iter().filter(|(_, pid)| alive(*pid)).collect();
            let done = left.is_empty() && port_is_free(port);
            async move { done.then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn the_first_task_is_answered_then_one_ctrl_c_drains_everything_in_order() {
    let mut up = Up::start(&["--sim", "--submit", "Find Python developers on LinkedIn"]);
    up.ready().await;
    let recorded = children(&up.state());
    eventually(READY_LIMIT, "the first result", || {
        let out = up.proc.stdout() + &up.proc.stderr();
        async move { out.contains("the fleet is running on").then_some(()) }
    })
    .await;
    up.proc.signal(Signal::SIGINT);
    let status = up
        .proc
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("orch up still running\n{}", up.proc.describe()));
    let err = up.proc.stderr();
    assert!(status.success(), "{status}\n{}", up.proc.describe());
    // The milestones, the table and the result; the workers' own logs are in files.
    for line in [
        "nats-server started on",
        "backends:",
        "coordinator       ready in",
        "fleet ready in",
        "confidence",
        "coordinator stopped",
        "nats-server stopped",
    ] {
        assert!(
            err.contains(line) || up.proc.stdout().contains(line),
            "missing {line:?}\n{}",
            up.proc.describe()
        );
    }
    assert!(
        !err.contains(" INFO "),
        "worker logs belong in files, not the terminal:\n{err}"
    );
    let coordinator_at = err.find("coordinator stopped").unwrap_or(usize::MAX);
    let server_at = err.find("nats-server stopped").unwrap_or(0);
    assert!(
        coordinator_at < server_at,
        "the coordinator stops first and the server last:\n{err}"
    );
    assert!(up.state().join("logs/coordinator.log").is_file());
    assert!(
        !up.state().join("up.pid").exists(),
        "a clean stop removes the pid file"
    );
    up.nothing_left(&recorded).await;
}

#[tokio::test]
async fn two_ctrl_c_within_100_ms_leave_nothing_running() {
    let mut up = Up::start(&["--sim"]);
    up.ready().await;
    let recorded = children(&up.state());
    up.proc.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(50)).await;
    up.proc.signal(Signal::SIGINT);
    let status = up
        .proc
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("orch up still running\n{}", up.proc.describe()));
    assert_eq!(
        status.code(),
        Some(130),
        "a forced stop says so\n{}",
        up.proc.describe()
    );
    up.nothing_left(&recorded).await;
}

#[tokio::test]
async fn sigkill_of_orch_up_takes_its_children_down_too() {
    let mut up = Up::start(&["--sim"]);
    up.ready().await;
    let recorded = children(&up.state());
    up.proc.signal(Signal::SIGKILL);
    up.proc
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("SIGKILL ignored?"));
    up.nothing_left(&recorded).await;
}

#[tokio::test]
async fn a_second_orch_up_on_the_same_state_names_the_first_and_leaves_it_alone() {
    let mut first = Up::start(&["--sim"]);
    first.ready().await;
    let url = format!("nats://127.0.0.1:{}", first.port);
    let dir = first.state().display().to_string();
    let mut second = Proc::start_without(
        "orch",
        &["up", "--sim", "--nats-url", &url, "--state-dir", &dir],
        &[],
        &["NATS_URL"],
    );
    let status = second
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("second orch up kept running\n{}", second.describe()));
    assert!(!status.success(), "{}", second.describe());
    let said = second.stderr();
    let first_pid = first.proc.pid();
    assert!(
        said.contains("already running this fleet")
            && said.contains(&format!("kill -INT {first_pid}")),
        "{said}"
    );
    // The first fleet is untouched: every process still alive.
    let recorded = children(&first.state());
    assert!(
        recorded.iter().all(|(_, pid)| alive(*pid)),
        "{recorded:?}\n{}",
        first.proc.describe()
    );
    first.proc.signal(Signal::SIGTERM);
    first
        .proc
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("first orch up still running"));
    first.nothing_left(&recorded).await;
}

#[tokio::test]
async fn processes_left_by_a_dead_orch_up_are_stopped_by_the_next_one() {
    // A pid file naming a live process that looks like ours, whose orch up is gone.
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let port = free_port();
    let other = NatsServer::start();
    let mut stray = Proc::start(
        "orch-web",
        &["--provider", "sim", "--nats-url", &other.url()],
        &[],
    );
    eventually(READY_LIMIT, "the stray worker serving", || {
        let up = stray.stderr().contains("serving") || stray.stdout().contains("serving");
        async move { up.then_some(()) }
    })
    .await;
    std::fs::write(
        state.path().join("up.pid"),
        format!("orch-up 999999999\nweb {}\n", stray.pid()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut up = Up::start_at(&["--sim"], state, port);
    stray
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("the stray worker was not stopped\n{}", up.proc.describe()));
    up.ready().await;
    assert!(
        up.proc
            .stderr()
            .contains("stopping what an earlier orch up left running: web"),
        "{}",
        up.proc.describe()
    );
    let recorded = children(&up.state());
    up.proc.signal(Signal::SIGTERM);
    up.proc
        .exited(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("orch up still running"));
    up.nothing_left(&recorded).await;
}
