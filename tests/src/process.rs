//! Fleet binaries as child processes: output captured to files and shown when
//! a test fails, signals, kill on drop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

/// Sends `sig` to process `pid` (ignores a process that is already gone).
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// The path of a workspace binary (`orch-coordinator`, `orch-vision`, ...).
///
/// Binaries live next to the test executable's parent (`target/<profile>/`).
/// `cargo test --workspace` builds them, because every binary crate has an
/// integration test of its own.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .unwrap_or_else(|| panic!("cannot locate the target dir from {}", exe.display()));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not built; run `cargo build --workspace --bins` (or the README's test command)",
        path.display()
    );
    path
}

/// The path of a built example (`cargo test` builds every example into `target/<profile>/examples/`).
pub fn example(name: &str) -> PathBuf {
    let bin = binary_dir().join("examples").join(name);
    assert!(
        bin.is_file(),
        "example {} not built; run `cargo test --workspace` or `cargo build --examples`",
        bin.display()
    );
    bin
}

fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    exe.parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cannot locate the target dir from {}", exe.display()))
}

/// A running fleet process.
pub struct Proc {
    name: String,
    command: String,
    child: Option<Child>,
    dir: TempDir,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts binary `name` with `args` and extra environment `env`.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::start_without(name, args, env, &[])
    }

    /// Like [`Proc::start`], with the variables in `remove` taken out of the
    /// inherited environment (e.g. API keys, for a test that must run without them).
    pub fn start_without(name: &str, args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("orch-proc-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = std::fs::File::create(dir.path().join("stdout"))
            .unwrap_or_else(|e| panic!("stdout file: {e}"));
        let err = std::fs::File::create(dir.path().join("stderr"))
            .unwrap_or_else(|e| panic!("stderr file: {e}"));
        let mut cmd = Command::new(binary(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("NATS_URL")
            .env(
                "RUST_LOG",
                std::env::var("ORCH_TEST_PROC_LOG").unwrap_or_else(|_| "info".into()),
            );
        for k in remove {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.to_string(),
            command: format!("{name} {}", args.join(" ")),
            child: Some(child),
            dir,
            status: None,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            signal(c.id(), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
    }

    /// Waits for exit up to `limit`; `None` if still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.status {
                return Some(status);
            }
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.status = Some(status);
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async-friendly wait for exit.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.wait_timeout(Duration::ZERO) {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Captured stdout.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Captured stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Command line, stdout and stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- {} (pid {}) ---\n$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.pid(),
            self.command,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Every process's command line and output, for a failing test's message.
pub fn describe_all<'a>(procs: impl IntoIterator<Item = &'a Proc>) -> String {
    procs
        .into_iter()
        .map(Proc::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill();
        if std::thread::panicking() && (was_running || self.status.is_some()) {
            eprintln!("{}", self.describe());
        }
    }
}

/// Starts a coordinator process on `url` (JetStream on) with `extra` flags.
pub fn coordinator(url: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--nats-url", url, "--drain-timeout", "10s"];
    args.extend_from_slice(extra);
    Proc::start("orch-coordinator", &args, &[])
}

/// Starts worker binary `bin` (`orch-reasoner`, ...) on `url` with the
/// simulated provider and `extra` flags (`--slot`, `--sim-latency`, ...).
pub fn sim_worker(bin: &str, url: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--nats-url",
        url,
        "--provider",
        "sim",
        "--drain-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    Proc::start(bin, &args, &[])
}

/// Runs a binary to completion (for `--help`, bad-config checks) and returns (status, stdout, stderr).
pub fn run_to_end(name: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(binary(name));
    cmd.args(args).stdin(Stdio::null()).env_remove("NATS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
