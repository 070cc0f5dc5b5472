//! The model child process: what a worker binary becomes when it is started
//! with [`ENV_CHILD`] set. It loads the model once and serves jobs one at a
//! time over stdin/stdout ([`crate::protocol`]), logging JSON lines to stderr.
//!
//! Why a process: llama.cpp reports some failures (a grammar with no allowed
//! token, failed asserts) by aborting, and generation cannot be interrupted
//! from outside a token step. In a child, an abort costs one job and a
//! respawn, never the worker's NATS loop.
//!
//! Two threads: the main thread generates; a reader thread takes lines from
//! stdin, queues jobs and flags cancels, so a cancel is seen at the next token
//! even while the main thread is busy. End of stdin (the worker went away)
//! aborts the running job and ends the process.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use llama_cpp_2::{LogOptions, send_logs_to_tracing};

use crate::engine::{Engine, Session};
use crate::protocol::{self, ChildConfig, FromChild, GenerateRequest, MAX_LINE_BYTES, ToChild};

/// Set (to any value) in the environment of a model child process.
pub const ENV_CHILD: &str = "ORCH_LLAMA_CHILD";

/// Exit code when the child cannot set up its pipes or read its configuration.
const EXIT_SETUP: i32 = 70;
/// Exit code when the model fails to load (after a `load_failed` message).
const EXIT_LOAD: i32 = 71;

/// Runs the model child loop and exits if this process was started as one
/// (the [`ENV_CHILD`] variable is set); returns at once otherwise.
///
/// Call it first thing in `main` of every binary that may serve `--provider
/// local` — before parsing flags, starting a tokio runtime or installing a log
/// subscriber — because [`crate::LocalModel`] re-executes the current binary
/// to get its model process. Before the runtime matters: the child blocks
/// stop signals (its worker ends it), and threads that already exist, like a
/// runtime's workers, would not inherit that.
pub fn maybe_run_child() {
    if std::env::var_os(ENV_CHILD).is_some() {
        std::process::exit(run());
    }
}

fn run() -> i32 {
    if let Err(e) = ignore_stop_signals() {
        eprintln!("orch-llama child: cannot block stop signals: {e}");
        return EXIT_SETUP;
    }
    let mut replies = match Replies::take_stdout() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orch-llama child: cannot set up the reply channel: {e}");
            return EXIT_SETUP;
        }
    };
    let config = match read_line(&mut std::io::stdin().lock()) {
        Ok(Some(line)) => match serde_json::from_slice::<ToChild>(&line) {
            Ok(ToChild::Init(config)) => config,
            Ok(other) => {
                eprintln!("orch-llama child: expected an init message first, got {other:?}");
                return EXIT_SETUP;
            }
            Err(e) => {
                eprintln!("orch-llama child: bad init message: {e}");
                return EXIT_SETUP;
            }
        },
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("orch-llama child: reading the init message: {e}");
            return EXIT_SETUP;
        }
    };
    init_logs(&config);
    serve(&config, &mut replies)
}

fn serve(config: &ChildConfig, replies: &mut Replies) -> i32 {
    let started = std::time::Instant::now();
    // llama.cpp prints hundreds of lines per model load; route them into
    // tracing, where the filter keeps only warnings by default.
    send_logs_to_tracing(LogOptions::default());
    let engine = match Engine::load(config) {
        Ok(e) => e,
        Err(message) => return load_failed(replies, message),
    };
    let mut session = match engine.session() {
        Ok(s) => s,
        Err(message) => return load_failed(replies, message),
    };
    let ready = FromChild::Ready {
        n_ctx: session.n_ctx(),
        n_ctx_train: engine.n_ctx_train(),
        n_params: engine.n_params(),
        load_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if replies.send(&ready).is_err() {
        return 0;
    }

    let control = Arc::new(Control::default());
    let (jobs_tx, jobs) = sync_channel(4);
    let reader_control = Arc::clone(&control);
    // Detached on purpose: it ends at end of stdin, and the process exits when
    // the job loop below ends (which end of stdin causes).
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_requests(&jobs_tx, &reader_control));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the stdin reader thread");
        return EXIT_SETUP;
    }
    run_jobs(&mut session, &jobs, &control, replies);
    0
}

fn load_failed(replies: &mut Replies, message: String) -> i32 {
    tracing::error!(%message, "model load failed");
    let _ = replies.send(&FromChild::LoadFailed { message });
    EXIT_LOAD
}

/// The worker decides when its model process ends (end of stdin, or a kill),
/// so stop signals meant for the worker must not end the child first: a
/// service manager that signals the whole group (systemd's default) would
/// otherwise fail the very jobs the worker is draining. Blocked here, before
/// any other thread exists, so every later thread inherits the mask.
fn ignore_stop_signals() -> nix::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut stop = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(sig);
    }
    stop.thread_block()
}

/// Cancellation state shared by the two threads.
#[derive(Default)]
struct Control {
    /// The most recently cancelled job.
    cancelled: AtomicU64,
    /// Stdin ended: the worker is gone.
    closed: AtomicBool,
}

impl Control {
    fn aborts(&self, id: u64) -> bool {
        self.closed.load(Ordering::Relaxed) || self.cancelled.load(Ordering::Relaxed) == id
    }
}

fn run_jobs(
    session: &mut Session<'_>,
    jobs: &Receiver<GenerateRequest>,
    control: &Control,
    replies: &mut Replies,
) {
    for job in jobs {
        let id = job.id;
        if control.aborts(id) {
            // Cancelled while queued.
            let reply = FromChild::Failed {
                id,
                kind: protocol::FailKind::Aborted,
                message: "cancelled before it started".into(),
            };
            if replies.send(&reply).is_err() {
                return;
            }
            continue;
        }
        let _span = tracing::info_span!("job", id).entered();
        let reply = match session.generate(&job, &|| control.aborts(id)) {
            Ok(g) => {
                tracing::debug!(
                    prompt_tokens = g.prompt_tokens,
                    completion_tokens = g.completion_tokens,
                    prompt_ms = g.prompt_ms,
                    generate_ms = g.generate_ms,
                    "job done"
                );
                FromChild::Done {
                    id,
                    text: g.text,
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.completion_tokens,
                    finish: g.finish,
                    prompt_ms: g.prompt_ms,
                    generate_ms: g.generate_ms,
                }
            }
            Err(e) => FromChild::Failed {
                id,
                kind: e.kind,
                message: e.message,
            },
        };
        if replies.send(&reply).is_err() {
            return;
        }
    }
}

fn read_requests(jobs: &SyncSender<GenerateRequest>, control: &Control) {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    loop {
        let line = match read_line(&mut input) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "reading stdin");
                break;
            }
        };
        match serde_json::from_slice::<ToChild>(&line) {
            Ok(ToChild::Generate(job)) => {
                if jobs.send(job).is_err() {
                    break;
                }
            }
            Ok(ToChild::Cancel { id }) => control.cancelled.store(id, Ordering::Relaxed),
            Ok(ToChild::Init(_)) => tracing::warn!("ignoring a second init message"),
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable request line"),
        }
    }
    control.closed.store(true, Ordering::Relaxed);
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE_BYTES`]; `None` at end of input.
fn read_line(input: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    input
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)?;
    protocol::checked_line(line)
}

/// The reply channel: the process's original stdout.
struct Replies(File);

impl Replies {
    /// Keeps the original stdout for replies and points file descriptor 1 at
    /// stderr, so nothing else in the process (llama.cpp's own printing, a
    /// stray `println!`) can corrupt the protocol.
    fn take_stdout() -> std::io::Result<Replies> {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        lock.flush()?;
        let replies = nix::unistd::dup(&lock).map_err(std::io::Error::from)?;
        nix::unistd::dup2_stdout(std::io::stderr()).map_err(std::io::Error::from)?;
        Ok(Replies(File::from(replies)))
    }

    fn send(&mut self, msg: &FromChild) -> std::io::Result<()> {
        let line = protocol::encode(msg).map_err(std::io::Error::other)?;
        self.0.write_all(&line)?;
        self.0.flush()
    }
}

/// JSON log lines on stderr; the worker re-emits them through its own subscriber.
fn init_logs(config: &ChildConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(crate::process::DEFAULT_CHILD_LOG_FILTER)
    });
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_ansi(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_one_at_a_time_and_capped() {
        let mut input = std::io::Cursor::new(b"{\"a\":1}\n{\"b\":2}".to_vec());
        assert_eq!(
            read_line(&mut input).expect("read").as_deref(),
            Some(&b"{\"a\":1}\n"[..])
        );
        assert_eq!(
            read_line(&mut input).expect("read").as_deref(),
            Some(&b"{\"b\":2}"[..])
        );
        assert_eq!(read_line(&mut input).expect("read"), None);

        let mut huge = std::io::Cursor::new(vec![b'x'; MAX_LINE_BYTES + 10]);
        assert!(
            read_line(&mut huge).is_err(),
            "an endless line is an error, not a heap"
        );
    }

    #[test]
    fn cancel_matches_its_job_and_end_of_input_aborts_everything() {
        let control = Control::default();
        assert!(!control.aborts(1));
        control.cancelled.store(1, Ordering::Relaxed);
        assert!(control.aborts(1));
        assert!(!control.aborts(2));
        control.closed.store(true, Ordering::Relaxed);
        assert!(control.aborts(2));
    }
}
