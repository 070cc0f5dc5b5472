//! The processes `orch up` starts, and their whole life: spawned so they die
//! with it (however it dies), logged to files, recorded in a pid file, drained
//! in order, killed on a second signal.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long a process gets after its drain deadline before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Log lines longer than this are cut in the terminal (never in the file).
const MAX_TERMINAL_LINE: usize = 400;

/// One started process.
struct Member {
    name: String,
    child: Child,
    /// Gone already (exited, reported).
    done: bool,
}

/// Every process `orch up` started, in start order.
pub struct Members {
    members: Vec<Member>,
    logs: PathBuf,
    pid_file: PathBuf,
    verbose: bool,
    repeats: Arc<Mutex<Repeats>>,
}

impl Members {
    /// Takes charge of `state` (logs under `state/logs`, the pid file
    /// `state/up.pid`). An `orch up` still running from there is an error that
    /// says how to stop it; processes left by one that died are stopped.
    ///
    /// # Errors
    /// Another live `orch up`, or the state directory cannot be written.
    pub fn open(state: &Path, verbose: bool) -> anyhow::Result<Members> {
        let logs = state.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let pid_file = state.join("up.pid");
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            stop_stale(&text, &pid_file)?;
        }
        let members = Members {
            members: Vec::new(),
            logs,
            pid_file,
            verbose,
            repeats: Arc::new(Mutex::new(Repeats::default())),
        };
        members.write_pid_file()?;
        Ok(members)
    }

    /// Where the logs go.
    pub fn log_dir(&self) -> &Path {
        &self.logs
    }

    /// Starts `program` as `name`: its own process group (a terminal's Ctrl-C
    /// reaches only `orch up`, which drains in order), SIGTERM when `orch up`
    /// dies, output to `logs/<name>.log`.
    ///
    /// # Errors
    /// The spawn failed or the log file cannot be created.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        nats_url: &str,
    ) -> anyhow::Result<()> {
        let log_path = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let file = Arc::new(Mutex::new(std::io::LineWriter::new(file)));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("NATS_URL", nats_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SIGTERM, not SIGKILL: a child whose supervisor died still drains (bounded).
        orch_shared::process::die_with_parent(&mut cmd, Signal::SIGTERM);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let streams: [Option<Box<dyn AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let (name, file, repeats, verbose) = (
                name.to_string(),
                Arc::clone(&file),
                Arc::clone(&self.repeats),
                self.verbose,
            );
            // Detached: ends when the child closes its output.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if verbose {
                        eprintln!("[{name:<11}] {line}");
                    } else if let Some(shown) = repeats
                        .lock()
                        .ok()
                        .and_then(|mut r| r.first_time(&name, &line))
                    {
                        eprintln!("[{name}] {shown}");
                    }
                }
            });
        }
        self.members.push(Member {
            name: name.to_string(),
            child,
            done: false,
        });
        self.write_pid_file()
    }

    /// Members that exited since the last call: name and status.
    pub fn newly_exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &mut self.members {
            if m.done {
                continue;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                m.done = true;
                out.push(format!("{} ({status})", m.name));
            }
        }
        out
    }

    /// The last `n` lines of `name`'s log.
    pub fn tail(&self, name: &str, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops everything: the coordinator first (it finishes or hands back its
    /// tasks while the workers still run), then every worker at once, then the
    /// nats-server `orch up` started. Each stage gets `drain` plus a short grace
    /// before it is killed; once `force` fires, whatever still runs is killed at
    /// once. Returns whether every process stopped cleanly by itself.
    pub async fn stop(mut self, drain: Duration, force: &CancellationToken) -> bool {
        let stage_of = |name: &str| match name {
            "coordinator" => 0,
            "nats-server" => 2,
            _ => 1,
        };
        let mut clean = true;
        for stage in 0..3 {
            let mut stage_members: Vec<&mut Member> = self
                .members
                .iter_mut()
                .filter(|m| stage_of(&m.name) == stage && !m.done)
                .collect();
            if stage_members.is_empty() {
                continue;
            }
            for m in &stage_members {
                signal(&m.child, Signal::SIGTERM);
            }
            let deadline = Instant::now() + drain + KILL_GRACE;
            for m in &mut stage_members {
                clean &= wait_or_kill(m, deadline, force).await;
            }
        }
        if let Ok(r) = self.repeats.lock() {
            for line in r.summary() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        clean
    }

    fn write_pid_file(&self) -> anyhow::Result<()> {
        let mut text = format!("orch-up {}\n", std::process::id());
        for m in &self.members {
            if let Some(pid) = m.child.id() {
                text.push_str(&format!("{} {pid}\n", m.name));
            }
        }
        let tmp = self.pid_file.with_extension("pid.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.pid_file)
            .with_context(|| format!("writing {}", self.pid_file.display()))
    }
}

async fn wait_or_kill(m: &mut Member, deadline: Instant, force: &CancellationToken) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let outcome = tokio::select! {
        r = tokio::time::timeout(left, m.child.wait()) => match r {
            Ok(Ok(status)) if status.success() => {
                eprintln!("orch up: {} stopped", m.name);
                Some(true)
            }
            Ok(Ok(status)) => {
                eprintln!("orch up: {} exited with {status}", m.name);
                Some(false)
            }
            Ok(Err(_)) => Some(false),
            Err(_) => {
                eprintln!("orch up: {} did not stop within its drain deadline; killing it", m.name);
                None
            }
        },
        () = force.cancelled() => {
            eprintln!("orch up: second signal: killing {}", m.name);
            None
        }
    };
    m.done = true;
    match outcome {
        Some(clean) => clean,
        None => {
            kill_group(&m.child);
            let _ = tokio::time::timeout(KILL_GRACE, m.child.wait()).await;
            false
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// SIGKILL to the child's whole process group (it leads one).
fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// `comm` of a live process, `None` when it is gone.
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` runs the program recorded as `name` (`comm` is cut at 15 bytes).
fn runs(pid: i32, program: &str) -> bool {
    comm(pid).is_some_and(|c| !c.is_empty() && program.starts_with(&c))
}

/// The entries of a pid file: name and pid.
fn parse_pid_file(text: &str) -> Vec<(String, i32)> {
    text.lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            Some((name.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}

fn program_of(name: &str) -> String {
    match name {
        "nats-server" | "orch-up" => name.replace("orch-up", "orch"),
        other => format!("orch-{other}"),
    }
}

fn stop_stale(text: &str, pid_file: &Path) -> anyhow::Result<()> {
    let entries = parse_pid_file(text);
    if let Some((_, pid)) = entries.iter().find(|(n, _)| n == "orch-up") {
        if *pid != std::process::id() as i32 && runs(*pid, "orch") {
            bail!(
                "an orch up (pid {pid}) is already running this fleet ({}); stop it with `kill -INT {pid}` (or Ctrl-C in its terminal), or give this one another --state-dir and --nats-url",
                pid_file.display()
            );
        }
    }
    let stale: Vec<(String, i32)> = entries
        .into_iter()
        .filter(|(n, pid)| n != "orch-up" && runs(*pid, &program_of(n)))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = stale.iter().map(|(n, p)| format!("{n} ({p})")).collect();
    eprintln!(
        "orch up: stopping what an earlier orch up left running: {}",
        names.join(", ")
    );
    for (_, pid) in &stale {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline && stale.iter().any(|(n, p)| runs(*p, &program_of(n))) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, pid) in &stale {
        if runs(*pid, &program_of(n)) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    Ok(())
}

/// Warnings and errors of the children, each shown once in the terminal and
/// counted after that.
#[derive(Default)]
struct Repeats {
    seen: HashMap<(String, String), u64>,
    order: Vec<(String, String)>,
}

impl Repeats {
    /// The text to show if `line` is a warning or an error seen for the first
    /// time from `name`; `None` otherwise (it is counted).
    fn first_time(&mut self, name: &str, line: &str) -> Option<String> {
        let (level, message) = level_and_message(line)?;
        let key = (name.to_string(), normalise(&message));
        let count = self.seen.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            return None;
        }
        self.order.push(key);
        let mut shown = format!("{level} {message}");
        if shown.len() > MAX_TERMINAL_LINE {
            let mut cut = MAX_TERMINAL_LINE;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push('…');
        }
        Some(shown)
    }

    /// One line per message that came again, with how often.
    fn summary(&self) -> Vec<String> {
        self.order
            .iter()
            .filter_map(|key| {
                let n = self.seen.get(key).copied().unwrap_or(0);
                (n > 1).then(|| format!("[{}] {} more times: {}", key.0, n - 1, key.1))
            })
            .collect()
    }
}

/// The level and message of a warning or error line, from tracing's format
/// (`<time>  WARN target: message`) or nats-server's (`[pid] <date> <time> [WRN] message`).
fn level_and_message(line: &str) -> Option<(&'static str, String)> {
    for (needle, level) in [
        (" WARN ", "WARN"),
        (" ERROR ", "ERROR"),
        ("[WRN] ", "WARN"),
        ("[ERR] ", "ERROR"),
        ("[FTL] ", "ERROR"),
    ] {
        if let Some(at) = line.find(needle) {
            if at < 48 {
                return Some((level, line[at + needle.len()..].trim().to_string()));
            }
        }
    }
    None
}

/// The message with numbers blanked, so the same error with another id, port
/// or count is one entry.
fn normalise(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_error_is_shown_once_and_counted() {
        let mut r = Repeats::default();
        let line = |n: u32| {
            format!(
                "2026-12-07T05:00:0{n}.1Z ERROR async_nats: NATS client error error=IO error: Connection refused (os error 111) attempt={n}"
            )
        };
        assert_eq!(
            r.first_time("web", &line(1)).as_deref(),
            Some(
                "ERROR async_nats: NATS client error error=IO error: Connection refused (os error 111) attempt=1"
            )
        );
        assert_eq!(r.first_time("web", &line(2)), None);
        assert_eq!(r.first_time("web", &line(3)), None);
        assert!(
            r.first_time("vision", &line(4)).is_some(),
            "another process's error is its own"
        );
        assert_eq!(
            r.first_time("web", "2026-12-07T05:00:01Z  INFO orch_web: serving"),
            None
        );
        assert_eq!(
            r.summary(),
            [
                "[web] 2 more times: async_nats: NATS client error error=IO error: Connection refused (os error #) attempt=#"
            ]
        );
        assert_eq!(
            level_and_message("[4242] 2026/12/07 05:00:00.000000 [WRN] JetStream is slow"),
            Some(("WARN", "JetStream is slow".into()))
        );
    }

    #[test]
    fn a_long_line_is_cut_on_a_character_boundary() {
        let mut r = Repeats::default();
        let shown = r
            .first_time("web", &format!("t WARN x: {}", "é".repeat(500)))
            .unwrap();
        assert!(shown.len() <= MAX_TERMINAL_LINE + '…'.len_utf8() && shown.ends_with('…'));
    }

    #[test]
    fn pid_files_name_their_processes() {
        assert_eq!(
            parse_pid_file("orch-up 10\nnats-server 11\nreasoner 12\nbroken\n"),
            [
                ("orch-up".to_string(), 10),
                ("nats-server".into(), 11),
                ("reasoner".into(), 12)
            ]
        );
        assert_eq!(program_of("reasoner"), "orch-reasoner");
        assert_eq!(program_of("nats-server"), "nats-server");
        assert_eq!(program_of("orch-up"), "orch");
        // This process runs the test binary, not nats-server.
        assert!(!runs(std::process::id() as i32, "nats-server"));
    }
}
