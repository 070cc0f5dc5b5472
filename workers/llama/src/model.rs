//! [`LocalModel`]: the `local` provider. Implements [`ChatModel`] by handing
//! each request to a model child process ([`crate::process`]), one at a time.
//!
//! Deadlines and cancellation: the caller gets its `TimedOut`/`Cancelled`
//! answer at once; the child is told to stop at its next token (a cancel
//! message checked per token), which keeps the loaded model warm. The next
//! request first drains that job's reply; if the child has not stopped within
//! [`LocalConfig::abort_grace`] it is killed and a fresh one started. A child
//! that dies mid-job fails that job with `Upstream` and is respawned for the next.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use orch_providers::chat::{ChatModel, ChatRequest, ChatResponse, ProviderError};
use orch_shared::wire::Usage;
use orch_worker::{JobContext, ProviderInfo};
use tokio::sync::{Mutex, mpsc};

use crate::process::{ChildProcess, ChildState, DEFAULT_CHILD_LOG_FILTER};
use crate::protocol::{ChildConfig, FailKind, Finish, FromChild, GenerateRequest, ToChild};
use crate::schema::{DEFAULT_BOUNDS, bound_schema, schema_instruction};

/// Provider kind reported in results and discovery.
pub const PROVIDER: &str = "local";
/// How long a cancelled job may take to stop before its child is killed: a
/// token takes tens of milliseconds and a prompt chunk well under a second.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(2);

/// Which executable runs the model child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildCommand {
    /// The running binary, re-executed (its `main` calls [`crate::maybe_run_child`]).
    CurrentExe,
    /// Another binary that calls [`crate::maybe_run_child`] (tests use `orch-llama-child`).
    Path(PathBuf),
}

/// Everything [`LocalModel`] needs; [`crate::LocalArgs`] builds it from flags.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    /// The GGUF model file.
    pub model_path: PathBuf,
    /// CPU threads for the model.
    pub threads: u32,
    /// Context window in tokens.
    pub ctx_size: u32,
    /// Cap on generated tokens (a request may ask for fewer, never more).
    pub max_tokens: u32,
    /// Temperature when the request sets none.
    pub temperature: f32,
    /// The executable that runs the model.
    pub child: ChildCommand,
    /// See [`DEFAULT_ABORT_GRACE`].
    pub abort_grace: Duration,
}

impl LocalConfig {
    /// Defaults (see [`crate::args`]) for the model at `model_path`.
    pub fn new(model_path: impl Into<PathBuf>) -> LocalConfig {
        LocalConfig {
            model_path: model_path.into(),
            threads: crate::args::default_threads(),
            ctx_size: crate::args::DEFAULT_CTX_SIZE,
            max_tokens: crate::args::DEFAULT_MAX_TOKENS,
            temperature: crate::args::DEFAULT_TEMPERATURE,
            child: ChildCommand::CurrentExe,
            abort_grace: DEFAULT_ABORT_GRACE,
        }
    }
}

/// The local GGUF model provider.
pub struct LocalModel {
    config: LocalConfig,
    name: String,
    slot: Mutex<Option<ChildProcess>>,
    next_id: AtomicU64,
    pid: AtomicU32,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("config", &self.config)
            .field("name", &self.name)
            .field("pid", &self.child_pid())
            .finish_non_exhaustive()
    }
}

impl LocalModel {
    /// A provider for `config`. Checks the model file now, so a missing model
    /// is a startup error rather than a failure on the first job; the model
    /// itself is loaded by the child on first use (or by [`LocalModel::warm_up`]).
    ///
    /// # Errors
    /// The model file is missing or is not a GGUF file; the message says how to fetch it.
    pub fn new(config: LocalConfig) -> Result<LocalModel, String> {
        check_model_file(&config.model_path)?;
        Ok(LocalModel {
            name: model_name(&config.model_path),
            config,
            slot: Mutex::new(None),
            next_id: AtomicU64::new(1),
            pid: AtomicU32::new(0),
        })
    }

    /// Runs the model in `program` (which must call [`crate::maybe_run_child`])
    /// instead of re-executing the current binary.
    #[must_use]
    pub fn with_child_command(mut self, program: impl Into<PathBuf>) -> LocalModel {
        self.config.child = ChildCommand::Path(program.into());
        self
    }

    /// The model's name: its file stem, e.g. `SmolLM2-135M-Instruct-Q4_1`.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The configuration in use.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The current model child's process id, if one is running.
    pub fn child_pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Starts the child and waits until the model is loaded, so the first
    /// job does not pay for it and a broken model shows up at startup.
    ///
    /// # Errors
    /// The model failed to load, or did not load within `limit` (`TimedOut`).
    pub async fn warm_up(&self, limit: Duration) -> Result<(), ProviderError> {
        let work = async {
            let mut slot = self.slot.lock().await;
            self.ready_child(&mut slot).await.map(|_| ())
        };
        tokio::time::timeout(limit, work).await.map_err(|_| {
            ProviderError::TimedOut(format!(
                "local model {} did not load within {limit:?}",
                self.name
            ))
        })?
    }

    /// Spawns, loads and settles a child until one is ready for a new job.
    async fn ready_child<'s>(
        &self,
        slot: &'s mut Option<ChildProcess>,
    ) -> Result<&'s mut ChildProcess, ProviderError> {
        loop {
            if let Some(child) = slot.as_mut() {
                if child.has_exited() {
                    let report = child.exit_report().await;
                    tracing::warn!(model = %self.name, %report, "local model process ended while idle; restarting it");
                    self.clear(slot);
                    continue;
                }
            }
            let child = match slot {
                Some(child) => child,
                None => {
                    let child = self.spawn()?;
                    self.pid.store(child.pid(), Ordering::Relaxed);
                    slot.insert(child)
                }
            };
            if child.state == ChildState::Loading {
                match child.recv().await {
                    Some(FromChild::Ready {
                        n_ctx,
                        n_ctx_train,
                        n_params,
                        load_ms,
                    }) => {
                        tracing::info!(
                            model = %self.name, pid = child.pid(), n_ctx, n_ctx_train, n_params, load_ms,
                            "local model loaded"
                        );
                        child.state = ChildState::Ready;
                    }
                    Some(FromChild::LoadFailed { message }) => {
                        self.clear(slot);
                        return Err(upstream(format!(
                            "local model {} failed to load: {message}",
                            self.name
                        )));
                    }
                    Some(other) => {
                        tracing::warn!(?other, "unexpected message from a loading model process")
                    }
                    None => {
                        let report = child.exit_report().await;
                        self.clear(slot);
                        return Err(upstream(format!(
                            "local model process exited before loading the model ({report}); \
                             the executable must call orch_llama::maybe_run_child() first thing in main"
                        )));
                    }
                }
                continue;
            }
            if let Some(id) = child.pending {
                // A job whose caller gave up is still finishing: make sure it
                // was told to stop, then read its reply so it cannot be taken
                // for the next job's.
                let _ = child.send(ToChild::Cancel { id });
                match tokio::time::timeout(self.config.abort_grace, child.reply_to(id)).await {
                    Ok(Some(_)) => child.pending = None,
                    Ok(None) => {
                        let report = child.exit_report().await;
                        tracing::warn!(model = %self.name, %report, "local model process died finishing a cancelled job");
                        self.clear(slot);
                    }
                    Err(_) => {
                        tracing::warn!(
                            model = %self.name, pid = child.pid(), grace = ?self.config.abort_grace,
                            "local model did not stop a cancelled job in time; restarting it"
                        );
                        self.clear(slot);
                    }
                }
                continue;
            }
            // Re-borrow: returning `child` from inside the loop would keep `slot` borrowed.
            break;
        }
        slot.as_mut()
            .ok_or_else(|| upstream("local model process missing".into()))
    }

    fn spawn(&self) -> Result<ChildProcess, ProviderError> {
        let program = match &self.config.child {
            ChildCommand::CurrentExe => std::env::current_exe().map_err(|e| {
                upstream(format!(
                    "cannot locate the current executable to run the local model: {e}"
                ))
            })?,
            ChildCommand::Path(p) => p.clone(),
        };
        let config = ChildConfig {
            model_path: self.config.model_path.clone(),
            threads: self.config.threads,
            ctx_size: self.config.ctx_size,
            log_filter: child_log_filter(),
        };
        ChildProcess::spawn(&program, config).map_err(|e| {
            upstream(format!(
                "cannot start the local model process {}: {e}",
                program.display()
            ))
        })
    }

    /// Drops (and so kills) the current child.
    fn clear(&self, slot: &mut Option<ChildProcess>) {
        *slot = None;
        self.pid.store(0, Ordering::Relaxed);
    }

    /// Runs one prepared job to its end.
    async fn run(
        &self,
        job: GenerateRequest,
        schema_name: Option<&str>,
    ) -> Result<ChatResponse, ProviderError> {
        let mut slot = self.slot.lock().await;
        let child = self.ready_child(&mut slot).await?;
        let id = job.id;
        let max_tokens = job.max_tokens;
        if let Err(e) = child.send(ToChild::Generate(job)) {
            let report = child.exit_report().await;
            self.clear(&mut slot);
            return Err(crashed(&self.name, &format!("{e}; {report}")));
        }
        child.pending = Some(id);
        // If this future is dropped (deadline, cancel) the guard tells the
        // child to stop; `pending` stays set for the next job to settle.
        let mut guard = CancelOnDrop {
            to_child: child.sender(),
            id: Some(id),
        };
        let reply = child.reply_to(id).await;
        guard.id = None;
        let Some(reply) = reply else {
            let report = child.exit_report().await;
            tracing::warn!(model = %self.name, pid = child.pid(), %report, "local model process died mid-job");
            self.clear(&mut slot);
            return Err(crashed(&self.name, &report));
        };
        child.pending = None;
        match reply {
            FromChild::Done {
                text,
                prompt_tokens,
                completion_tokens,
                finish,
                generate_ms,
                ..
            } => {
                tracing::debug!(
                    model = %self.name, prompt_tokens, completion_tokens, generate_ms,
                    tokens_per_s = completion_tokens as f64 * 1000.0 / generate_ms.max(1) as f64,
                    "local generation"
                );
                if let Some(schema_name) = schema_name {
                    if let Err(e) = check_json(&self.name, schema_name, &text, finish, max_tokens) {
                        tracing::debug!(model = %self.name, %text, "local model output is not complete JSON");
                        return Err(e);
                    }
                }
                Ok(ChatResponse {
                    text,
                    model: self.name.clone(),
                    usage: Some(Usage {
                        input_tokens: prompt_tokens,
                        output_tokens: completion_tokens,
                    }),
                })
            }
            FromChild::Failed { kind, message, .. } => Err(match kind {
                FailKind::BadRequest => ProviderError::BadRequest(message),
                FailKind::Aborted => upstream(format!("local model job aborted: {message}")),
                FailKind::Internal => upstream(format!("local model {}: {message}", self.name)),
            }),
            FromChild::Ready { .. } | FromChild::LoadFailed { .. } => Err(upstream(
                "local model process sent a load message mid-job".into(),
            )),
        }
    }

    /// Validates `request` and turns it into a child job.
    fn prepare(&self, request: &ChatRequest) -> Result<GenerateRequest, ProviderError> {
        if !request.images.is_empty() {
            return Err(ProviderError::BadRequest(
                "local model has no vision".into(),
            ));
        }
        let max_tokens = request
            .max_tokens
            .unwrap_or(self.config.max_tokens)
            .min(self.config.max_tokens);
        if max_tokens == 0 {
            return Err(ProviderError::BadRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        let temperature = request.temperature.unwrap_or(self.config.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ProviderError::BadRequest(format!(
                "temperature must be within 0..=2, got {temperature}"
            )));
        }
        let mut system = request.system.clone();
        let schema = request.schema.as_ref().map(|s| {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str(&schema_instruction(&s.name, &s.schema));
            bound_schema(&s.schema, DEFAULT_BOUNDS)
        });
        Ok(GenerateRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            system,
            user: request.user.clone(),
            schema,
            max_tokens,
            temperature,
            seed: seed(),
        })
    }
}

#[async_trait]
impl ChatModel for LocalModel {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: PROVIDER.into(),
            model: self.name.clone(),
        }
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        ctx: &JobContext,
    ) -> Result<ChatResponse, ProviderError> {
        let job = self.prepare(request)?;
        let budget = ctx.remaining();
        let schema_name = request.schema.as_ref().map(|s| s.name.as_str());
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => Err(ProviderError::Cancelled),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(ctx.deadline)) => Err(ProviderError::TimedOut(format!(
                "local model {} did not answer within its {budget:?} budget", self.name
            ))),
            result = self.run(job, schema_name) => result,
        }
    }
}

/// Queues a cancel for job `id` when dropped while still armed.
struct CancelOnDrop {
    to_child: mpsc::Sender<ToChild>,
    id: Option<u64>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            // If the queue is full or closed, the next job's settle step sends it.
            let _ = self.to_child.try_send(ToChild::Cancel { id });
        }
    }
}

fn upstream(message: String) -> ProviderError {
    ProviderError::Upstream {
        status: None,
        message,
    }
}

fn crashed(name: &str, report: &str) -> ProviderError {
    upstream(format!(
        "local model process crashed while generating ({report}); model {name} will be restarted for the next request"
    ))
}

/// With a schema, the text must be complete JSON. The grammar guarantees the
/// shape, so the only ways to miss are running out of tokens or a schema
/// feature the grammar cannot express.
fn check_json(
    name: &str,
    schema_name: &str,
    text: &str,
    finish: Finish,
    max_tokens: u32,
) -> Result<(), ProviderError> {
    if finish == Finish::Length {
        return Err(ProviderError::InvalidOutput(format!(
            "local model {name} reached its {max_tokens}-token cap before finishing the `{schema_name}` JSON"
        )));
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| {
            ProviderError::InvalidOutput(format!(
                "local model {name} wrote invalid `{schema_name}` JSON: {e}"
            ))
        })
}

/// The model's name: the file stem.
fn model_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Checks that `path` is a readable GGUF file.
///
/// # Errors
/// What is wrong and how to get the default model.
pub fn check_model_file(path: &Path) -> Result<(), String> {
    use std::io::Read as _;
    let fetch = format!(
        "fetch the default model with `deploy/fetch-model.sh` (it installs {}) or point --local-model / {} at a GGUF file",
        crate::args::DEFAULT_MODEL_FILE,
        crate::args::ENV_LOCAL_MODEL
    );
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "local model file {} not found: {fetch}",
                path.display()
            ));
        }
        Err(e) => return Err(format!("local model file {}: {e}", path.display())),
    };
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        Ok(()) => Err(format!(
            "{} is not a GGUF model file: {fetch}",
            path.display()
        )),
        Err(e) => Err(format!(
            "local model file {}: {e} ({fetch})",
            path.display()
        )),
    }
}

/// The child's log filter: this process's level for our own events, llama.cpp
/// capped at warnings.
fn child_log_filter() -> String {
    let level = tracing::level_filters::LevelFilter::current();
    if level == tracing::level_filters::LevelFilter::INFO {
        DEFAULT_CHILD_LOG_FILTER.to_string()
    } else {
        format!("{},llama-cpp-2=warn", level.to_string().to_lowercase())
    }
}

/// A sampler seed that differs between jobs and runs.
fn seed() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use orch_providers::chat::{ImageInput, OutputSchema};
    use serde_json::json;

    use super::*;

    fn fake_model(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join("Tiny-Model-Q4_1.gguf");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        path
    }

    fn request() -> ChatRequest {
        ChatRequest {
            system: "Plan.".into(),
            user: "Find the weather.".into(),
            images: vec![],
            schema: None,
            max_tokens: None,
            temperature: None,
        }
    }

    #[test]
    fn a_missing_model_says_how_to_fetch_it() {
        let err =
            LocalModel::new(LocalConfig::new("/nonexistent/model.gguf")).expect_err("missing");
        assert!(err.contains("/nonexistent/model.gguf not found"), "{err}");
        assert!(err.contains("deploy/fetch-model.sh"), "{err}");
        assert!(err.contains("ORCH_LOCAL_MODEL"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            LocalModel::new(LocalConfig::new(fake_model(&dir, b"<html>"))).expect_err("not gguf");
        assert!(err.contains("is not a GGUF model file"), "{err}");
        let err = LocalModel::new(LocalConfig::new(fake_model(&dir, b"GG"))).expect_err("short");
        assert!(err.contains("fetch-model.sh"), "{err}");
    }

    #[test]
    fn the_model_is_named_after_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model =
            LocalModel::new(LocalConfig::new(fake_model(&dir, b"GGUF\x03\0\0\0"))).expect("model");
        assert_eq!(model.model_name(), "Tiny-Model-Q4_1");
        assert_eq!(
            model.info(),
            ProviderInfo {
                provider: "local".into(),
                model: "Tiny-Model-Q4_1".into()
            }
        );
        assert_eq!(model.child_pid(), None, "nothing runs before the first job");
    }

    #[test]
    fn requests_are_checked_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = LocalConfig::new(fake_model(&dir, b"GGUF"));
        config.max_tokens = 100;
        config.temperature = 0.3;
        let model = LocalModel::new(config).expect("model");

        let mut with_image = request();
        with_image.images.push(ImageInput {
            mime: "image/png",
            data: bytes::Bytes::from_static(b"\x89PNG"),
        });
        assert_eq!(
            model.prepare(&with_image),
            Err(ProviderError::BadRequest(
                "local model has no vision".into()
            ))
        );

        let job = model.prepare(&request()).expect("job");
        assert_eq!(
            (job.max_tokens, job.temperature, job.schema.as_ref()),
            (100, 0.3, None)
        );
        assert_eq!(job.system, "Plan.");

        let mut r = request();
        r.max_tokens = Some(5000);
        r.temperature = Some(0.0);
        let next = model.prepare(&r).expect("job");
        assert_eq!(
            (next.max_tokens, next.temperature),
            (100, 0.0),
            "capped; greedy allowed"
        );
        assert!(next.id > job.id, "ids increase");

        r.max_tokens = Some(0);
        assert!(matches!(
            model.prepare(&r),
            Err(ProviderError::BadRequest(_))
        ));
        r.max_tokens = None;
        r.temperature = Some(f32::NAN);
        assert!(matches!(
            model.prepare(&r),
            Err(ProviderError::BadRequest(_))
        ));
    }

    #[test]
    fn a_schema_goes_to_the_prompt_and_bounded_to_the_grammar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = LocalModel::new(LocalConfig::new(fake_model(&dir, b"GGUF"))).expect("model");
        let mut r = request();
        let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
        r.schema = Some(OutputSchema {
            name: "plan".into(),
            schema: schema.clone(),
        });
        let job = model.prepare(&r).expect("job");
        assert!(
            job.system
                .starts_with("Plan.\n\nReply with a single JSON object (\"plan\")"),
            "{}",
            job.system
        );
        assert!(job.system.contains(&schema.to_string()));
        let sent = job.schema.expect("schema sent");
        assert_eq!(
            sent["properties"]["answer"]["maxLength"],
            DEFAULT_BOUNDS.max_string_chars
        );
    }

    #[test]
    fn schema_output_must_be_complete_json() {
        assert_eq!(
            check_json("m", "plan", r#"{"a":1}"#, Finish::Stop, 10),
            Ok(())
        );
        let cut = check_json("m", "plan", r#"{"a":"#, Finish::Length, 10).expect_err("cut");
        assert!(
            matches!(&cut, ProviderError::InvalidOutput(m) if m.contains("10-token cap")),
            "{cut:?}"
        );
        let bad = check_json("m", "plan", "{oops", Finish::Stop, 10).expect_err("bad");
        assert!(matches!(bad, ProviderError::InvalidOutput(_)));
    }

    #[tokio::test]
    async fn a_child_that_cannot_start_is_an_upstream_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = LocalModel::new(LocalConfig::new(fake_model(&dir, b"GGUF")))
            .expect("model")
            .with_child_command(dir.path().join("no-such-binary"));
        let ctx = JobContext {
            deadline: std::time::Instant::now() + Duration::from_secs(10),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let err = model.chat(&request(), &ctx).await.expect_err("no child");
        assert!(
            matches!(&err, ProviderError::Upstream { message, .. } if message.contains("cannot start the local model process")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_binary_that_is_not_a_child_is_reported_with_the_fix() {
        // `true` exits at once without speaking the protocol, like a worker
        // whose main forgot to call maybe_run_child().
        let dir = tempfile::tempdir().expect("tempdir");
        let model = LocalModel::new(LocalConfig::new(fake_model(&dir, b"GGUF")))
            .expect("model")
            .with_child_command("true");
        let ctx = JobContext {
            deadline: std::time::Instant::now() + Duration::from_secs(10),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let err = model.chat(&request(), &ctx).await.expect_err("not a child");
        assert!(
            matches!(&err, ProviderError::Upstream { message, .. }
                if message.contains("exited with code 0") && message.contains("maybe_run_child")),
            "{err:?}"
        );
        assert_eq!(model.child_pid(), None);
    }
}
