//! The messages on the wire: what clients submit, what they get back, what
//! coordinators and workers exchange, events and stats.
//!
//! Field names follow the seed's Python design (`task`, `tools`,
//! `available_tools`, `primary_answer`, `fallback_chain`, ...). JSON Schemas for
//! the public messages are generated from these types (see [`crate::schema`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::blob::Blob;
use crate::error::{ErrorBody, ErrorCode};
use crate::ids::{Slot, TaskId};
use crate::role::{Role, RoleSet};

// ---------------------------------------------------------------------------
// Submit
// ---------------------------------------------------------------------------

/// A task submitted on `orch.v1.submit` (request/reply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// What to do, in natural language. Required, non-empty.
    pub task: String,
    /// Which roles to use: `vision`, `web`, `reasoner`, `verifier` or the seed's
    /// aliases (`kimi_k2` = reasoner, `chatgpt` = verifier, `web_search` = web).
    /// Omitted: the coordinator's default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Tool names the plan may use in its steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_tools: Vec<String>,
    /// Extra context for every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// A PNG or JPEG screenshot for the vision role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<Blob>,
    /// Query for the web role (defaults to `task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_query: Option<String>,
    /// Run the verification phase. Omitted: `true` when `tools` names the
    /// verifier, else the coordinator's default (`--verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Per-phase time limits overriding the coordinator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Caller-chosen id (1-128 of `A-Z a-z 0-9 _ -`); generated when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// A screenshot uploaded to the `orch_screenshots` object store, for
    /// screenshots too large to travel inline (NATS' default max payload is
    /// 1 MiB). Use either this or `screenshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot_ref: Option<ObjectRef>,
    /// Set to `false` to bypass the result cache for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// A reference to an object in a JetStream object store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Bucket; only `orch_screenshots` is accepted.
    #[serde(default = "default_screenshot_bucket")]
    pub bucket: String,
    /// Object name (the SDK uses the SHA-256 of the content).
    pub name: String,
}

fn default_screenshot_bucket() -> String {
    crate::subjects::OBJ_SCREENSHOTS.to_string()
}

impl ObjectRef {
    /// A reference to `name` in the screenshot bucket.
    pub fn screenshot(name: impl Into<String>) -> ObjectRef {
        ObjectRef {
            bucket: default_screenshot_bucket(),
            name: name.into(),
        }
    }
}

/// A lookup on `orch.v1.results.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultQuery {
    /// The task.
    pub task_id: String,
}

/// Per-phase time limits, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Phase 1 (vision ‖ web).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_ms: Option<u64>,
    /// Phase 2 (reasoning, across the whole fallback chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_ms: Option<u64>,
    /// Phase 3 (verification, across the whole fallback chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_ms: Option<u64>,
}

/// Size limits applied to submitted tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `task`, in bytes.
    pub max_task_bytes: usize,
    /// Longest `context`, in bytes.
    pub max_context_bytes: usize,
    /// Largest screenshot, in bytes (decoded).
    pub max_screenshot_bytes: usize,
    /// Most `available_tools` entries.
    pub max_available_tools: usize,
    /// Longest entry of `available_tools` / `tools`.
    pub max_tool_name_bytes: usize,
    /// Longest `web_search_query`, in bytes.
    pub max_query_bytes: usize,
    /// Longest per-phase timeout a request may ask for.
    pub max_timeout_ms: u64,
    /// Largest screenshot accepted by reference (object store).
    pub max_screenshot_ref_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A task is a sentence or a paragraph; 16 KiB leaves room for pasted detail.
            max_task_bytes: 16 * 1024,
            // Context can carry page excerpts or history.
            max_context_bytes: 256 * 1024,
            // NATS' default max_payload is 1 MiB; leave room for the rest of the request.
            max_screenshot_bytes: 900 * 1024,
            max_available_tools: 256,
            max_tool_name_bytes: 128,
            max_query_bytes: 2048,
            // Ten minutes per phase: anything longer is a misconfiguration.
            max_timeout_ms: 600_000,
            // Full-page screenshots of tall pages reach a few MiB; 32 MiB is generous.
            max_screenshot_ref_bytes: 32 * 1024 * 1024,
        }
    }
}

fn too_large(field: &str, got: usize, max: usize) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::PayloadTooLarge,
        format!("`{field}` is {got} bytes; the limit is {max}"),
    )
}

impl SubmitRequest {
    /// A request with just a task.
    pub fn new(task: impl Into<String>) -> SubmitRequest {
        SubmitRequest {
            task: task.into(),
            ..Default::default()
        }
    }

    /// Checks everything that does not depend on coordinator configuration.
    ///
    /// # Errors
    /// The first problem found, as the error body to reply with.
    pub fn validate(&self, limits: &Limits) -> Result<(), ErrorBody> {
        if self.task.trim().is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`task` must be a non-empty string",
            ));
        }
        if self.task.len() > limits.max_task_bytes {
            return Err(too_large("task", self.task.len(), limits.max_task_bytes));
        }
        if let Some(c) = &self.context
            && c.len() > limits.max_context_bytes
        {
            return Err(too_large("context", c.len(), limits.max_context_bytes));
        }
        if let Some(q) = &self.web_search_query
            && q.len() > limits.max_query_bytes
        {
            return Err(too_large(
                "web_search_query",
                q.len(),
                limits.max_query_bytes,
            ));
        }
        if let Some(s) = &self.screenshot {
            if s.len() > limits.max_screenshot_bytes {
                return Err(too_large(
                    "screenshot",
                    s.len(),
                    limits.max_screenshot_bytes,
                ));
            }
            if s.is_empty() {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "`screenshot` is empty",
                ));
            }
        }
        if let Some(r) = &self.screenshot_ref {
            if self.screenshot.is_some() {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "use either `screenshot` or `screenshot_ref`, not both",
                ));
            }
            if r.bucket != crate::subjects::OBJ_SCREENSHOTS {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "`screenshot_ref.bucket` must be `{}`",
                        crate::subjects::OBJ_SCREENSHOTS
                    ),
                ));
            }
            if r.name.is_empty() || r.name.len() > 255 {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "`screenshot_ref.name` must be 1-255 bytes",
                ));
            }
        }
        if self.available_tools.len() > limits.max_available_tools {
            return Err(ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "`available_tools` has {} entries; the limit is {}",
                    self.available_tools.len(),
                    limits.max_available_tools
                ),
            ));
        }
        for t in &self.available_tools {
            if t.trim().is_empty() || t.len() > limits.max_tool_name_bytes {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "`available_tools` entries must be 1-{} bytes",
                        limits.max_tool_name_bytes
                    ),
                ));
            }
        }
        self.roles()?;
        if let Some(id) = &self.task_id {
            id.parse::<TaskId>()
                .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))?;
        }
        if let Some(t) = &self.timeouts {
            for (name, v) in [
                ("timeouts.parallel_ms", t.parallel_ms),
                ("timeouts.reasoning_ms", t.reasoning_ms),
                ("timeouts.verification_ms", t.verification_ms),
            ] {
                if let Some(ms) = v
                    && (ms == 0 || ms > limits.max_timeout_ms)
                {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "`{name}` must be 1..={} ms, got {ms}",
                            limits.max_timeout_ms
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The roles named by `tools` (`None` when `tools` is omitted).
    ///
    /// # Errors
    /// [`ErrorCode::UnknownTool`] naming the first unknown entry,
    /// [`ErrorCode::InvalidRequest`] for an empty list.
    pub fn roles(&self) -> Result<Option<RoleSet>, ErrorBody> {
        let Some(tools) = &self.tools else {
            return Ok(None);
        };
        if tools.is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`tools` is empty; omit it to use the default roles",
            ));
        }
        let mut set = RoleSet::EMPTY;
        for t in tools {
            match Role::from_tool(t) {
                Some(r) => set.insert(r),
                None => {
                    return Err(ErrorBody::new(
                        ErrorCode::UnknownTool,
                        format!(
                            "unknown tool `{}`; known: {}",
                            t.chars().take(64).collect::<String>(),
                            Role::TOOL_NAMES.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Some(set))
    }
}

// ---------------------------------------------------------------------------
// Result
// ---------------------------------------------------------------------------

/// Token counts reported by a model API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// The outcome of one role in one task (its last attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelResult {
    /// The role.
    pub role: Role,
    /// The slot that produced this result (the last one tried).
    pub slot: Slot,
    /// Provider kind (`openai`, `ollama`, `local`, `sim`, ...); empty when no worker answered.
    pub provider: String,
    /// Model id as reported by the worker; empty when no worker answered.
    pub model: String,
    /// Whether the role produced usable output.
    pub success: bool,
    /// The role's output (see the role schemas); `null` on failure.
    pub content: Value,
    /// Why the role failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable failure code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// Time from the first dispatch of this role to its outcome, in milliseconds.
    pub latency_ms: f64,
    /// Token counts, when the model API reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// When the role started, in ms since the task started.
    pub started_ms: f64,
    /// When the role finished, in ms since the task started.
    pub finished_ms: f64,
}

/// One dispatch of one role to one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    /// The role.
    pub role: Role,
    /// The slot tried.
    pub slot: Slot,
    /// `ok`, or the error code that ended the attempt (`no_responders`, `timed_out`, ...).
    pub outcome: String,
    /// Details of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Duration of the attempt.
    pub latency_ms: f64,
    /// The attempt's own deadline (carved from the phase budget).
    pub budget_ms: u64,
}

/// The answer to a submitted task: the seed's `OrchestratedResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrchestratedResult {
    /// The task's id.
    pub task_id: String,
    /// The original task text.
    pub task: String,
    /// The reasoner's plan (see the `Plan` schema); `null` when every reasoner failed.
    pub primary_answer: Option<Value>,
    /// Per-role outcomes, keyed by role name.
    pub model_results: BTreeMap<Role, ModelResult>,
    /// Overall confidence, 0..=1 (rules in the coordinator's `synthesis` module).
    pub confidence: f64,
    /// Disagreements and problems found by synthesis.
    pub conflicts: Vec<String>,
    /// Wall time of the whole task.
    pub execution_time_ms: f64,
    /// Distinct model ids that produced a successful result.
    pub models_used: Vec<String>,
    /// One readable entry per failed attempt, in order, e.g. `reasoner/kimi_k2: no responders`.
    pub fallback_chain: Vec<String>,
    /// Every dispatch, in order, with its outcome.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The OpenTelemetry trace id of this task, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Whether this result came from the result cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

impl OrchestratedResult {
    /// Whether the task produced a primary answer.
    pub fn succeeded(&self) -> bool {
        self.primary_answer.is_some()
    }

    /// The reasoner's plan, if there is one and it parses.
    pub fn plan(&self) -> Option<Plan> {
        self.primary_answer
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The verifier's verdict, if verification ran and succeeded.
    pub fn verdict(&self) -> Option<Verdict> {
        self.model_results
            .get(&Role::Verifier)
            .filter(|m| m.success)
            .and_then(|m| serde_json::from_value(m.content.clone()).ok())
    }
}

// ---------------------------------------------------------------------------
// Role outputs (the `content` of a successful ModelResult)
// ---------------------------------------------------------------------------

/// A UI element seen in a screenshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UiElement {
    /// What it is: `button`, `link`, `input`, `text`, `image`, ...
    pub kind: String,
    /// Its visible label or text.
    pub label: String,
}

/// What the vision role returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VisionAnalysis {
    /// One-paragraph description of the screen.
    pub description: String,
    /// Notable UI elements.
    #[serde(default)]
    pub elements: Vec<UiElement>,
    /// Errors visible on screen (error dialogs, CAPTCHAs, 404s, ...). Non-empty lowers confidence.
    #[serde(default)]
    pub errors_detected: Vec<String>,
    /// What to do next, according to the screen.
    #[serde(default)]
    pub suggested_actions: Vec<String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStep {
    /// A tool from the request's `available_tools`.
    pub tool: String,
    /// The tool's arguments.
    #[serde(default)]
    pub args: serde_json::Map<String, Value>,
    /// Why this step.
    #[serde(default)]
    pub why: String,
}

/// What the reasoner returns: the primary answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// Ordered steps.
    pub steps: Vec<PlanStep>,
    /// The answer in prose.
    pub answer: String,
    /// The model's own confidence, 0..=1.
    pub confidence: f64,
}

/// A verifier's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// The answer looks right.
    Approved,
    /// The answer is wrong or unsafe.
    Rejected,
    /// The verifier cannot tell.
    Uncertain,
}

impl VerdictKind {
    /// Wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Approved => "approved",
            VerdictKind::Rejected => "rejected",
            VerdictKind::Uncertain => "uncertain",
        }
    }
}

/// What the verifier returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// The judgement.
    pub verdict: VerdictKind,
    /// Problems found (reasons for a rejection).
    #[serde(default)]
    pub issues: Vec<String>,
    /// The verifier's confidence in its verdict, 0..=1.
    pub confidence: f64,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchHit {
    /// Result title.
    pub title: String,
    /// Result URL.
    pub url: String,
    /// Snippet from the search engine.
    #[serde(default)]
    pub snippet: String,
}

/// Readable text of one fetched page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PageText {
    /// Final URL (after redirects).
    pub url: String,
    /// Page title.
    #[serde(default)]
    pub title: String,
    /// Extracted readable text (bounded).
    pub text: String,
}

/// What the web role returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebFindings {
    /// The query that was run.
    pub query: String,
    /// Search hits, best first.
    #[serde(default)]
    pub results: Vec<SearchHit>,
    /// Fetched pages.
    #[serde(default)]
    pub pages: Vec<PageText>,
}

// ---------------------------------------------------------------------------
// Coordinator ⇄ worker
// ---------------------------------------------------------------------------

/// A unit of work sent to `orch.v1.work.<role>.<slot>`.
///
/// Sent as MessagePack by the coordinator; workers accept JSON too, so a worker
/// can be written in any language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkRequest {
    /// The task this work belongs to.
    pub task_id: TaskId,
    /// The role asked for (must match the worker's).
    pub role: Role,
    /// The slot addressed.
    pub slot: Slot,
    /// The task text.
    pub task: String,
    /// Extra context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Tools a plan may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_tools: Vec<String>,
    /// Vision: the screenshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<Blob>,
    /// Web: the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Vision: the screenshot in the object store, when it was too large to send inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot_ref: Option<ObjectRef>,
    /// Reasoner/verifier: phase-1 vision output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionAnalysis>,
    /// Reasoner/verifier: phase-1 web output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebFindings>,
    /// Verifier: the plan to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Plan>,
}

/// A worker's successful reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkReply {
    /// Provider kind (`openai`, `ollama`, `local`, `sim`, ...).
    pub provider: String,
    /// Model id that answered.
    pub model: String,
    /// The role output ([`VisionAnalysis`], [`WebFindings`], [`Plan`] or [`Verdict`]).
    pub content: Value,
    /// Token counts, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Which worker instance answered.
    #[serde(default)]
    pub worker_id: String,
    /// Time the worker spent, in ms.
    #[serde(default)]
    pub elapsed_ms: f64,
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// Kinds of task events (`orch.v1.events.<task_id>.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A task was accepted (the seed's ACTION_START).
    ActionStart,
    /// A task finished with a primary answer (the seed's ACTION_COMPLETE).
    ActionComplete,
    /// A task finished without one (the seed's ACTION_FAILED).
    ActionFailed,
    /// A phase began.
    PhaseStarted,
    /// A phase ended.
    PhaseCompleted,
    /// A dispatch to a slot was sent.
    ModelAttempt,
    /// An attempt failed and the next slot (if any) is tried.
    Fallback,
    /// Synthesis found a conflict.
    Conflict,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 8] = [
        EventKind::ActionStart,
        EventKind::ActionComplete,
        EventKind::ActionFailed,
        EventKind::PhaseStarted,
        EventKind::PhaseCompleted,
        EventKind::ModelAttempt,
        EventKind::Fallback,
        EventKind::Conflict,
    ];

    /// Wire name (also the last subject token).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::ActionStart => "action_start",
            EventKind::ActionComplete => "action_complete",
            EventKind::ActionFailed => "action_failed",
            EventKind::PhaseStarted => "phase_started",
            EventKind::PhaseCompleted => "phase_completed",
            EventKind::ModelAttempt => "model_attempt",
            EventKind::Fallback => "fallback",
            EventKind::Conflict => "conflict",
        }
    }

    /// The step-by-step kinds every task has (`phase_started`,
    /// `phase_completed`, `model_attempt`), which `--no-progress-events`
    /// leaves out; the others mark a task's start and end or something that
    /// went differently (a fallback, a conflict).
    pub const fn is_progress(self) -> bool {
        matches!(
            self,
            EventKind::PhaseStarted | EventKind::PhaseCompleted | EventKind::ModelAttempt
        )
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The pipeline's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Phase 1: vision ‖ web.
    Parallel,
    /// Phase 2: reasoning.
    Reasoning,
    /// Phase 3: verification.
    Verification,
    /// Phase 4: synthesis.
    Synthesis,
}

impl Phase {
    /// Wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Parallel => "parallel",
            Phase::Reasoning => "reasoning",
            Phase::Verification => "verification",
            Phase::Synthesis => "synthesis",
        }
    }
}

/// One event published on `orch.v1.events.<task_id>.<kind>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The task.
    pub task_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The task's trace id, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Kind-specific details (phase, role, slot, error, confidence, ...).
    #[serde(default)]
    pub details: Value,
}

/// Current UTC time as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

// ---------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------

/// Latency percentiles of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// The reply of `orch.v1.stats`: the seed's `get_stats()` keys plus percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsReport {
    /// Tasks finished.
    pub total_executions: u64,
    /// Fraction of tasks that produced a primary answer.
    pub success_rate: f64,
    /// Mean confidence.
    pub avg_confidence: f64,
    /// Mean task wall time.
    pub avg_execution_time_ms: f64,
    /// Conflicts found, summed over tasks.
    pub conflicts_detected: u64,
    /// Failed attempts (each one triggered a fallback or ended a chain).
    pub fallbacks_triggered: u64,
    /// Successful results per model id.
    pub model_usage: BTreeMap<String, u64>,
    /// Results served from the cache (counted in `total_executions` too).
    #[serde(default)]
    pub cache_hits: u64,
    /// Latency percentiles: `task` and per `role/slot`.
    #[serde(default)]
    pub latency: BTreeMap<String, LatencySummary>,
    /// Tasks currently running on the answering coordinator.
    #[serde(default)]
    pub in_flight: u64,
    /// Where the numbers come from: `coordinator:<id>` (this process only) or `shared` (all coordinators).
    #[serde(default)]
    pub scope: String,
    /// NATS messages the answering coordinator's process dropped since it
    /// started because a subscription's buffer was full (slow-consumer
    /// events; each is also logged, rate-limited). Not shared: 0 is healthy.
    #[serde(default)]
    pub slow_consumer_events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_minimal_and_full() {
        let r: SubmitRequest = serde_json::from_str(r#"{"task":"hi"}"#).unwrap();
        assert_eq!(r.task, "hi");
        assert!(r.validate(&Limits::default()).is_ok());

        let r: SubmitRequest = serde_json::from_value(serde_json::json!({
            "task": "Find Python developers on LinkedIn",
            "tools": ["kimi_k2", "vision", "chatgpt"],
            "available_tools": ["playwright_navigate"],
            "context": "Building talent pipeline",
            "screenshot": "iVBORw0KGgo=",
            "web_search_query": "python developers",
            "verify": true,
            "timeouts": {"parallel_ms": 1000, "reasoning_ms": 2000, "verification_ms": 3000},
            "task_id": "t-1"
        }))
        .unwrap();
        r.validate(&Limits::default()).unwrap();
        let roles = r.roles().unwrap().unwrap();
        assert!(roles.contains(Role::Reasoner) && roles.contains(Role::Verifier));
        assert!(!roles.contains(Role::Web));
    }

    #[test]
    fn validation_errors_have_codes() {
        let l = Limits::default();
        let code = |v: Value| {
            let r: SubmitRequest = serde_json::from_value(v).unwrap();
            r.validate(&l).unwrap_err().error.code
        };
        assert_eq!(
            code(serde_json::json!({"task": "  "})),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(serde_json::json!({"task": "x", "tools": ["x-ray"]})),
            ErrorCode::UnknownTool
        );
        assert_eq!(
            code(serde_json::json!({"task": "x", "tools": []})),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(serde_json::json!({"task": "x", "task_id": "a.b"})),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(serde_json::json!({"task": "x", "timeouts": {"reasoning_ms": 0}})),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(serde_json::json!({"task": "x".repeat(20_000)})),
            ErrorCode::PayloadTooLarge
        );
        assert!(
            serde_json::from_value::<SubmitRequest>(
                serde_json::json!({"task": "x", "verfy": true})
            )
            .is_err()
        );
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                Value::String(k.as_str().into())
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_millis() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn work_request_msgpack_round_trip() {
        let w = WorkRequest {
            task_id: "t".parse().unwrap(),
            role: Role::Vision,
            slot: Slot::default_slot(),
            task: "look".into(),
            context: None,
            available_tools: vec![],
            screenshot: Some(Blob::from(vec![1, 2, 3])),
            screenshot_ref: None,
            query: None,
            vision: None,
            web: None,
            answer: None,
        };
        let b = rmp_serde::to_vec_named(&w).unwrap();
        assert_eq!(rmp_serde::from_slice::<WorkRequest>(&b).unwrap(), w);
    }
}
