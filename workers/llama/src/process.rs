//! The worker's handle on one model child process: spawn it, talk to it
//! through bounded channels, forward its logs into `tracing`, and say how it
//! died when it does.
//!
//! Three small tasks per child, all owned by [`ChildProcess`] and aborted when
//! it is dropped (which also kills the process): a writer feeding stdin, a
//! reader parsing stdout, and a log pump re-emitting stderr. The writer is a
//! task rather than direct writes so a cancel can be queued from a `Drop`
//! (the job future being dropped at its deadline) without blocking.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::child::ENV_CHILD;
use crate::protocol::{self, ChildConfig, FromChild, MAX_LINE_BYTES, ToChild};

/// The child's log filter when the worker's is unknown: our own events at the
/// worker's level, llama.cpp's only when they are warnings (it logs hundreds
/// of info lines per model load).
pub const DEFAULT_CHILD_LOG_FILTER: &str = "info,llama-cpp-2=warn";
/// OpenMP's barrier behaviour; see [`ChildProcess::spawn`].
const ENV_OMP_WAIT_POLICY: &str = "OMP_WAIT_POLICY";
/// Messages buffered towards the child: one job plus its cancels at most.
const TO_CHILD_CAPACITY: usize = 8;
/// Replies buffered from the child; it sends one per job.
const FROM_CHILD_CAPACITY: usize = 8;
/// Stderr lines kept to explain a crash.
const STDERR_TAIL_LINES: usize = 12;
/// How long a dead child's pipes may take to deliver its last words.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Whether the child has loaded its model yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Spawned; `ready` not yet received.
    Loading,
    /// Serving jobs.
    Ready,
}

/// One running model child process.
pub struct ChildProcess {
    child: Child,
    pid: u32,
    to_child: mpsc::Sender<ToChild>,
    from_child: mpsc::Receiver<FromChild>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_pump: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Load state.
    pub state: ChildState,
    /// A job sent whose final reply has not been read yet (its caller gave up).
    pub pending: Option<u64>,
}

impl ChildProcess {
    /// Starts `program` in child mode and queues its configuration.
    ///
    /// # Errors
    /// The spawn failure (missing executable, no permission, out of processes).
    pub fn spawn(program: &Path, config: ChildConfig) -> std::io::Result<ChildProcess> {
        let mut command = Command::new(program);
        if std::env::var_os(ENV_OMP_WAIT_POLICY).is_none() {
            // llama.cpp's OpenMP threads spin at every barrier by default; when
            // the cores are shared (other workers, NATS, builds) a descheduled
            // peer turns each token into a long spin: ~10x slower measured on
            // two busy cores. Sleeping waiters cost little when idle.
            command.env(ENV_OMP_WAIT_POLICY, "PASSIVE");
        }
        // Stateless and expensive to leave behind: it dies with its worker.
        orch_shared::process::die_with_parent(&mut command, nix::sys::signal::Signal::SIGKILL);
        let mut child = command
            .env(ENV_CHILD, "1")
            // Its own process group: Ctrl-C in a terminal signals the worker,
            // which drains and then ends the child, rather than both at once.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("child pipes missing after spawn"));
        };
        let (to_child, to_child_rx) = mpsc::channel(TO_CHILD_CAPACITY);
        let (from_child_tx, from_child) = mpsc::channel(FROM_CHILD_CAPACITY);
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let tasks = vec![
            tokio::spawn(write_requests(stdin, to_child_rx)),
            tokio::spawn(read_replies(stdout, from_child_tx, pid)),
        ];
        let stderr_pump = tokio::spawn(pump_logs(
            BufReader::new(stderr),
            Arc::clone(&stderr_tail),
            pid,
        ));
        let process = ChildProcess {
            child,
            pid,
            to_child,
            from_child,
            stderr_tail,
            stderr_pump: Some(stderr_pump),
            tasks,
            state: ChildState::Loading,
            pending: None,
        };
        process.send(ToChild::Init(config))?;
        Ok(process)
    }

    /// Operating-system process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Queues a message for the child.
    ///
    /// # Errors
    /// The child's stdin is gone (it exited) or the queue is full (it stopped reading).
    pub fn send(&self, msg: ToChild) -> std::io::Result<()> {
        self.to_child
            .try_send(msg)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))
    }

    /// A sender for queuing messages from elsewhere (a cancel on drop).
    pub fn sender(&self) -> mpsc::Sender<ToChild> {
        self.to_child.clone()
    }

    /// The next message from the child; `None` once its stdout has closed
    /// (it exited or crashed).
    pub async fn recv(&mut self) -> Option<FromChild> {
        self.from_child.recv().await
    }

    /// Reads messages until job `id`'s final reply; `None` if the child died first.
    pub async fn reply_to(&mut self, id: u64) -> Option<FromChild> {
        loop {
            let msg = self.recv().await?;
            if msg.job_id() == Some(id) {
                return Some(msg);
            }
            tracing::debug!(pid = self.pid, ?msg, "dropping a reply to an abandoned job");
        }
    }

    /// Whether the process has already exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// After the child's stdout closed: waits briefly for it to exit (killing
    /// it if it does not) and describes the end — exit code or signal plus the
    /// last lines it wrote to stderr.
    pub async fn exit_report(&mut self) -> String {
        let status = match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => describe_status(status),
            Ok(Err(e)) => format!("exit status unknown: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                "stopped answering; killed".to_string()
            }
        };
        if let Some(pump) = self.stderr_pump.take() {
            // The pump ends when stderr closes; its last lines explain the crash.
            let _ = tokio::time::timeout(EXIT_WAIT, pump).await;
        }
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        if tail.is_empty() {
            status
        } else {
            format!("{status}; last stderr: {}", tail.join(" | "))
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // kill_on_drop ends the process; tokio reaps it.
        for task in self.tasks.iter().chain(self.stderr_pump.iter()) {
            task.abort();
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => "ended".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        6 => "SIGABRT: llama.cpp aborted",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}

async fn write_requests(mut stdin: ChildStdin, mut rx: mpsc::Receiver<ToChild>) {
    while let Some(msg) = rx.recv().await {
        let line = match protocol::encode(&msg) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message for the model child");
                continue;
            }
        };
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

async fn read_replies(stdout: ChildStdout, tx: mpsc::Sender<FromChild>, pid: u32) {
    let mut reader = BufReader::new(stdout);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(pid, error = %e, "model child stdout unreadable");
                break;
            }
        };
        match serde_json::from_slice::<FromChild>(&line) {
            Ok(msg) => {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Err(e) => tracing::warn!(
                pid,
                error = %e,
                line = %String::from_utf8_lossy(&line).trim_end(),
                "ignoring an unreadable line from the model child"
            ),
        }
    }
}

/// One `\n`-terminated line of at most [`MAX_LINE_BYTES`]; `None` at end of input.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    protocol::checked_line(line)
}

async fn pump_logs(
    mut stderr: impl AsyncBufRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    pid: u32,
) {
    loop {
        let line = match read_line(&mut stderr).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            continue;
        }
        let shown = forward_log(text, pid);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(shown);
        }
    }
}

/// Re-emits one stderr line of the child through this process's subscriber, at
/// its own level when it is one of the child's JSON log lines (anything else —
/// a C++ abort message, an assert — is a warning). Returns the line as text.
fn forward_log(line: &str, pid: u32) -> String {
    let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(line) else {
        tracing::warn!(target: "orch_llama::child", pid, "{line}");
        return line.to_string();
    };
    let field = |event: &mut serde_json::Map<String, Value>, key: &str| match event.remove(key) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let level = field(&mut event, "level");
    let message = field(&mut event, "message");
    let source = field(&mut event, "target");
    event.remove("timestamp");
    let fields = if event.is_empty() {
        String::new()
    } else {
        Value::Object(event).to_string()
    };
    match level.as_str() {
        "ERROR" => tracing::error!(target: "orch_llama::child", pid, source, fields, "{message}"),
        "WARN" => tracing::warn!(target: "orch_llama::child", pid, source, fields, "{message}"),
        "INFO" => tracing::info!(target: "orch_llama::child", pid, source, fields, "{message}"),
        "DEBUG" => tracing::debug!(target: "orch_llama::child", pid, source, fields, "{message}"),
        _ => tracing::trace!(target: "orch_llama::child", pid, source, fields, "{message}"),
    }
    if fields.is_empty() {
        format!("{level} {message}")
    } else {
        format!("{level} {message} {fields}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_lines_are_unpacked_and_raw_lines_kept() {
        let shown = forward_log(
            r#"{"timestamp":"t","level":"WARN","message":"kv cache small","target":"llama-cpp-2","n":3}"#,
            1,
        );
        assert_eq!(shown, r#"WARN kv cache small {"n":3}"#);
        let raw = "terminate called after throwing an instance of 'std::runtime_error'";
        assert_eq!(forward_log(raw, 1), raw);
    }

    #[test]
    fn the_default_child_filter_parses() {
        // llama.cpp's events use the target `llama-cpp-2`; the hyphens must survive parsing.
        let filter =
            tracing_subscriber::EnvFilter::try_new(DEFAULT_CHILD_LOG_FILTER).expect("valid filter");
        assert!(filter.to_string().contains("llama-cpp-2=warn"), "{filter}");
    }

    #[test]
    fn statuses_say_code_or_signal() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert!(describe_status(ExitStatus::from_raw(6)).contains("llama.cpp aborted"));
    }

    #[tokio::test]
    async fn the_log_pump_keeps_the_last_lines() {
        let input: Vec<u8> = (0..20)
            .map(|i| format!("line {i}\n"))
            .collect::<String>()
            .into_bytes();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        pump_logs(&input[..], Arc::clone(&tail), 1).await;
        let tail = tail.lock().expect("lock");
        assert_eq!(tail.len(), STDERR_TAIL_LINES);
        assert_eq!(tail.front().map(String::as_str), Some("line 8"));
        assert_eq!(tail.back().map(String::as_str), Some("line 19"));
    }
}
