//! The seed's pipeline: phase 1 (vision ‖ web, in parallel), phase 2
//! (reasoning), phase 3 (optional verification), phase 4 (synthesis).
//!
//! Each role runs down its **fallback chain** of slots. An attempt ends early
//! on no-responders, an error reply or a silent worker, and otherwise at its
//! own deadline, which is carved from what is left of the phase budget:
//! `remaining / slots_left`. So a hung primary cannot eat the whole phase, and
//! a slot with no workers costs about a millisecond. A failure that was about
//! one worker rather than the slot (`overloaded`, `shutting_down`, a worker
//! gone silent) is retried once on the same slot, where the queue group picks
//! another copy. Every failed attempt is recorded in `fallback_chain`,
//! `attempts`, the stats and a `fallback` event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::Either;
use opentelemetry::trace::SpanContext;

use orch_shared::role::RoleSet;
use orch_shared::trace::RecordedSpan;
use orch_shared::wire::{
    Attempt, EventKind, ModelResult, ObjectRef, OrchestratedResult, Phase, Plan, SubmitRequest,
    Verdict, VisionAnalysis, WebFindings, WorkReply, WorkRequest,
};
use orch_shared::{Blob, ErrorBody, ErrorCode, Role, Slot, TaskId};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{CoordinatorConfig, PhaseTimeouts};
use crate::dispatch::{
    AttemptError, AttemptLimits, CallOff, CallOffHandle, Dispatcher, encode_request,
};
use crate::events::EventSink;
use crate::synthesis;

/// Builds a role's work request when an attempt needs it (its slot is set
/// per attempt). A waiting task keeps this borrow instead of the request:
/// the task and its spec already hold everything the request is made of.
type MakeRequest<'a> = dyn Fn() -> WorkRequest + Sync + 'a;

/// A validated task with every default applied.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task's id.
    pub task_id: TaskId,
    /// The task text.
    pub task: String,
    /// Roles that will run (vision only when there is a screenshot, verifier only when verifying).
    pub roles: RoleSet,
    /// Tools a plan may use.
    pub available_tools: Vec<String>,
    /// Extra context.
    pub context: Option<String>,
    /// Screenshot for vision.
    pub screenshot: Option<Blob>,
    /// Screenshot for vision, in the object store.
    pub screenshot_ref: Option<ObjectRef>,
    /// Whether the result cache may be used for this task.
    pub use_cache: bool,
    /// Query for web, when the request gave one (else the task text: see
    /// [`TaskSpec::web_query`]; not a copy of it, which every task in flight
    /// would hold).
    pub web_search_query: Option<String>,
    /// Per-phase limits.
    pub timeouts: PhaseTimeouts,
}

impl TaskSpec {
    /// What the web role searches for: the request's query, or the task.
    pub fn web_query(&self) -> &str {
        self.web_search_query.as_deref().unwrap_or(&self.task)
    }

    /// Validates a request and applies the coordinator's defaults.
    ///
    /// Role selection: `tools` if given, else the configured default set.
    /// Verification runs when `verify` says so; when `verify` is omitted it runs
    /// if `tools` names the verifier, else per the coordinator's `--verify`.
    /// Vision runs only with a screenshot.
    ///
    /// # Errors
    /// The error body to reply with.
    pub fn from_request(
        req: SubmitRequest,
        cfg: &CoordinatorConfig,
    ) -> Result<TaskSpec, ErrorBody> {
        req.validate(&cfg.limits)?;
        let requested = req.roles()?;
        let mut roles = requested.unwrap_or(cfg.default_tools);
        let verify = req.verify.unwrap_or_else(|| {
            requested.is_some_and(|r| r.contains(Role::Verifier)) || cfg.enable_verification
        });
        if verify {
            roles.insert(Role::Verifier);
        } else {
            roles.remove(Role::Verifier);
        }
        if req.screenshot.is_none() && req.screenshot_ref.is_none() {
            roles.remove(Role::Vision);
        }
        if roles.contains(Role::Verifier) && !roles.contains(Role::Reasoner) {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "verification needs the reasoner (there is no answer to verify); add `reasoner` to `tools`",
            ));
        }
        if roles.is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "nothing to run: `tools` selects only vision and there is no screenshot",
            ));
        }
        let task_id = match &req.task_id {
            Some(id) => id.parse().map_err(|e: orch_shared::ids::InvalidId| {
                ErrorBody::new(ErrorCode::InvalidRequest, e.to_string())
            })?,
            None => TaskId::generate(),
        };
        let t = req.timeouts.unwrap_or_default();
        let ms = Duration::from_millis;
        Ok(TaskSpec {
            task_id,
            web_search_query: req.web_search_query,
            task: req.task,
            roles,
            available_tools: req.available_tools,
            context: req.context,
            screenshot: req.screenshot,
            screenshot_ref: req.screenshot_ref,
            use_cache: req.cache.unwrap_or(true),
            timeouts: PhaseTimeouts {
                parallel: t.parallel_ms.map_or(cfg.timeouts.parallel, ms),
                reasoning: t.reasoning_ms.map_or(cfg.timeouts.reasoning, ms),
                verification: t.verification_ms.map_or(cfg.timeouts.verification, ms),
            },
        })
    }
}

/// Runs tasks. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    dispatcher: Dispatcher,
    events: EventSink,
    config: std::sync::Arc<CoordinatorConfig>,
    /// Rolling attempt latencies (hedging thresholds).
    latency: std::sync::Arc<LatencyWindows>,
}

/// The outcome of one role down its chain.
struct RoleRun {
    result: ModelResult,
    attempts: Vec<(f64, Attempt)>,
    failures: Vec<(f64, String)>,
}

impl Pipeline {
    /// A pipeline dispatching through `dispatcher` (whose
    /// [`Dispatcher::stop_all`] also ends the pipeline's waits for capacity).
    pub fn new(
        dispatcher: Dispatcher,
        events: EventSink,
        config: std::sync::Arc<CoordinatorConfig>,
    ) -> Pipeline {
        Pipeline {
            dispatcher,
            events,
            config,
            latency: Default::default(),
        }
    }

    /// Runs all phases of one task and synthesizes its result. The final event
    /// (`action_complete` / `action_failed`) is the caller's to publish, once the
    /// result is where it has to be (see [`crate::service`]).
    ///
    /// Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    pub fn run(&self, spec: &TaskSpec) -> impl Future<Output = OrchestratedResult> {
        async move {
            // Only `runs` and `started` live across the waits: role outputs are
            // read from `runs` where needed (this state is what a task waiting on
            // a worker holds, so nothing else is kept in it).
            let started = Instant::now();
            Box::pin(self.events.emit(
                &spec.task_id,
                EventKind::ActionStart,
                json!({
                    "task": spec.task,
                    "roles": spec.roles.iter().map(Role::as_str).collect::<Vec<_>>(),
                    "timeouts_ms": {
                        "parallel": spec.timeouts.parallel.as_millis() as u64,
                        "reasoning": spec.timeouts.reasoning.as_millis() as u64,
                        "verification": spec.timeouts.verification.as_millis() as u64,
                    },
                }),
            ))
            .await;

            let mut runs: BTreeMap<Role, RoleRun> = BTreeMap::new();

            // ---- Phase 1: vision ‖ web ----
            if spec.roles.contains(Role::Vision) || spec.roles.contains(Role::Web) {
                Box::pin(self.parallel_phase(spec, started, &mut runs)).await;
            }

            // ---- Phase 2: reasoning ----
            if spec.roles.contains(Role::Reasoner) {
                let phase = (Phase::Reasoning, Role::Reasoner, spec.timeouts.reasoning);
                Box::pin(self.one_role_phase(spec, started, phase, &mut runs)).await;
            }

            // ---- Phase 3: verification (of a plan) ----
            if spec.roles.contains(Role::Verifier)
                && parsed::<Plan>(&runs, Role::Reasoner).is_some()
            {
                let phase = (
                    Phase::Verification,
                    Role::Verifier,
                    spec.timeouts.verification,
                );
                Box::pin(self.one_role_phase(spec, started, phase, &mut runs)).await;
            }

            // ---- Phase 4: synthesis ----
            let (outcome, has_plan) = synthesize(spec, &runs);
            if !outcome.conflicts.is_empty() {
                Box::pin(self.announce_conflicts(&spec.task_id, &outcome.conflicts)).await;
            }
            assemble(spec, started, runs, has_plan, outcome)
        }
    }

    /// Each conflict synthesis found: a log line (a span event on the task
    /// span) and a `conflict` event.
    async fn announce_conflicts(&self, id: &TaskId, conflicts: &[String]) {
        for c in conflicts {
            tracing::info!(task_id = %id, conflict = %c, "conflict");
            Box::pin(
                self.events
                    .emit(id, EventKind::Conflict, json!({ "conflict": c })),
            )
            .await;
        }
    }

    /// The request of a role after phase 1 (reasoner, verifier): the task plus
    /// what vision and web found and, for the verifier, the reasoner's plan.
    fn later_request(
        &self,
        spec: &TaskSpec,
        role: Role,
        runs: &BTreeMap<Role, RoleRun>,
    ) -> WorkRequest {
        let mut req = self.work_request(spec, role);
        req.vision = parsed(runs, Role::Vision);
        req.web = parsed(runs, Role::Web);
        if role == Role::Verifier {
            req.answer = parsed(runs, Role::Reasoner);
        }
        req
    }

    /// A phase of one role (reasoning, verification): announced, the role's
    /// chain run within the phase's time, recorded in `runs`, announced done.
    ///
    /// Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    fn one_role_phase(
        &self,
        spec: &TaskSpec,
        started: Instant,
        (phase, role, timeout): (Phase, Role, Duration),
        runs: &mut BTreeMap<Role, RoleRun>,
    ) -> impl Future<Output = ()> {
        async move {
            let phase_start = Box::pin(self.phase_started(spec, phase, &[role])).await;
            let deadline = Instant::now() + timeout;
            let span = RecordedSpan::child_of_current();
            let run = {
                let earlier: &BTreeMap<Role, RoleRun> = runs;
                let request = || self.later_request(spec, role, earlier);
                let chain =
                    self.run_chain(spec, started, role, &request, deadline, span.span_context());
                Box::pin(chain).await
            };
            crate::telemetry::phase_finished(span, phase.as_str());
            runs.insert(role, run);
            Box::pin(self.phase_completed(spec, phase, phase_start, runs, &[role])).await;
        }
    }

    /// Phase 1: vision ‖ web, each down its own chain, within the phase's
    /// time: announced, run, recorded in `runs`, announced done.
    ///
    /// Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    fn parallel_phase(
        &self,
        spec: &TaskSpec,
        started: Instant,
        runs: &mut BTreeMap<Role, RoleRun>,
    ) -> impl Future<Output = ()> {
        async move {
            let roles: Vec<Role> = [Role::Vision, Role::Web]
                .into_iter()
                .filter(|r| spec.roles.contains(*r))
                .collect();
            let phase_start = Box::pin(self.phase_started(spec, Phase::Parallel, &roles)).await;
            let deadline = Instant::now() + spec.timeouts.parallel;
            let span = RecordedSpan::child_of_current();
            let parent = span.span_context();
            let chain = |role: Role| async move {
                if !spec.roles.contains(role) {
                    return None;
                }
                let request = move || {
                    let mut req = self.work_request(spec, role);
                    if role == Role::Web {
                        req.query = Some(spec.web_query().to_string());
                    }
                    req
                };
                Some(
                    Box::pin(self.run_chain(spec, started, role, &request, deadline, parent)).await,
                )
            };
            let (v, w) = tokio::join!(chain(Role::Vision), chain(Role::Web));
            crate::telemetry::phase_finished(span, Phase::Parallel.as_str());
            for (role, run) in [(Role::Vision, v), (Role::Web, w)] {
                if let Some(run) = run {
                    runs.insert(role, run);
                }
            }
            Box::pin(self.phase_completed(spec, Phase::Parallel, phase_start, runs, &roles)).await;
        }
    }

    fn work_request(&self, spec: &TaskSpec, role: Role) -> WorkRequest {
        WorkRequest {
            task_id: spec.task_id.clone(),
            role,
            slot: Slot::default_slot(),
            task: spec.task.clone(),
            context: spec.context.clone(),
            available_tools: spec.available_tools.clone(),
            screenshot: if role == Role::Vision {
                spec.screenshot.clone()
            } else {
                None
            },
            screenshot_ref: if role == Role::Vision {
                spec.screenshot_ref.clone()
            } else {
                None
            },
            query: None,
            vision: None,
            web: None,
            answer: None,
        }
    }

    async fn phase_started(&self, spec: &TaskSpec, phase: Phase, roles: &[Role]) -> Instant {
        Box::pin(self.events.emit(
            &spec.task_id,
            EventKind::PhaseStarted,
            json!({ "phase": phase.as_str(), "roles": roles }),
        ))
        .await;
        Instant::now()
    }

    async fn phase_completed(
        &self,
        spec: &TaskSpec,
        phase: Phase,
        started: Instant,
        runs: &BTreeMap<Role, RoleRun>,
        roles: &[Role],
    ) {
        let (ok, failed): (Vec<Role>, Vec<Role>) = roles
            .iter()
            .copied()
            .filter(|r| runs.contains_key(r))
            .partition(|r| runs[r].result.success);
        Box::pin(self.events.emit(
            &spec.task_id,
            EventKind::PhaseCompleted,
            json!({
                "phase": phase.as_str(),
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
                "succeeded": ok,
                "failed": failed,
            }),
        ))
        .await;
    }

    /// Runs one role down its fallback chain within `deadline`.
    ///
    /// Each slot is tried in order with `remaining / slots_left` of the budget.
    /// A failure about one worker rather than the slot (`overloaded`,
    /// `shutting_down`, a silent worker) is retried once on the same slot at
    /// once. When every slot has been tried and some failed only for want of
    /// capacity, those are tried again with backoff until the phase deadline:
    /// under load a task waits for a worker instead of failing. A hedged slot
    /// (see [`CoordinatorConfig::hedge`]) that outlasts its rolling p95 also
    /// starts the next slot; the first good answer wins.
    ///
    /// This future, with the attempt inside it, is most of what a task waiting
    /// on a worker holds. Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::manual_async_fn)]
    fn run_chain(
        &self,
        spec: &TaskSpec,
        task_started: Instant,
        role: Role,
        request: &MakeRequest<'_>,
        deadline: Instant,
        phase: &SpanContext,
    ) -> impl Future<Output = RoleRun> {
        async move {
            let role_started = Instant::now();
            let offset = |t: Instant| t.duration_since(task_started).as_secs_f64() * 1000.0;
            let mut run = ChainLog::default();
            // Slots to go through in this round (the whole chain first); later
            // rounds only revisit busy ones.
            let mut round: Vec<Slot> = self.config.chain(role).to_vec();
            let mut last_slot = round.first().cloned().unwrap_or_else(Slot::default_slot);
            // In milliseconds: a `Duration` would be 8 bytes more in this state.
            let mut backoff_ms: u32 = 20;
            loop {
                let mut busy: Vec<Slot> = Vec::new();
                let mut i = 0;
                while i < round.len() {
                    let slot = &round[i];
                    let mut retried = false;
                    loop {
                        // Made in a block and awaited after it: the budget and the
                        // hedging plan are not kept in the state the attempt waits in.
                        let attempt = {
                            let budget = {
                                let now = Instant::now();
                                let remaining = deadline.saturating_duration_since(now);
                                if remaining.is_zero() {
                                    // A slot whose retry is skipped was tried: its
                                    // failure is already recorded.
                                    let untried = i + usize::from(retried);
                                    run.skipped(role, &round[untried..], offset(now));
                                    return self.failed(role, last_slot, run, role_started, offset);
                                }
                                carve(remaining, round.len() - i)
                            };
                            last_slot = slot.clone();
                            let hedge = round
                                .get(i + 1)
                                .filter(|_| {
                                    !retried && self.config.hedge.contains(&(role, slot.clone()))
                                })
                                .and_then(|next| {
                                    self.latency.p95(role, slot).map(|p95| (next.clone(), p95))
                                })
                                .filter(|(_, p95)| *p95 < budget);
                            match hedge {
                                Some((next, after)) => Either::Left(Box::pin(self.hedged(
                                    spec,
                                    phase,
                                    role,
                                    (slot, next),
                                    request,
                                    budget,
                                    after,
                                    deadline,
                                    round.len() - i,
                                    &mut run,
                                    offset,
                                ))),
                                None => {
                                    // Not hedged: nothing calls it off but the drain (through the dispatcher).
                                    let handle = CallOffHandle::new();
                                    let attempt = self.attempt(
                                        spec, phase, role, slot, request, budget, false, handle,
                                        &mut run, offset,
                                    );
                                    Either::Right(attempt.map(|outcome| (outcome, None)))
                                }
                            }
                        };
                        let (outcome, used_next) = attempt.await;
                        match outcome {
                            Ok((answered_by, reply)) => {
                                let finished = Instant::now();
                                return RoleRun {
                                    result: ModelResult {
                                        role,
                                        slot: answered_by,
                                        provider: reply.provider,
                                        model: reply.model,
                                        success: true,
                                        content: reply.content,
                                        error: None,
                                        error_code: None,
                                        latency_ms: finished
                                            .duration_since(role_started)
                                            .as_secs_f64()
                                            * 1000.0,
                                        usage: reply.usage,
                                        started_ms: offset(role_started),
                                        finished_ms: offset(finished),
                                    },
                                    attempts: run.attempts,
                                    failures: run.failures,
                                };
                            }
                            Err(AttemptError::Cancelled) => {
                                return self.failed(role, last_slot, run, role_started, offset);
                            }
                            Err(err)
                                if used_next.is_none()
                                    && !retried
                                    && err.worth_retrying_same_slot() =>
                            {
                                retried = true;
                                continue;
                            }
                            Err(err) => {
                                // Busy workers, or a slot that answered recently but has no
                                // responders now (workers reconnecting after a NATS restart):
                                // worth another round while the phase has time.
                                let transient =
                                    matches!(
                                        err,
                                        AttemptError::NoResponders | AttemptError::Transport(_)
                                    ) && self.latency.answered_within(role, slot, RECENTLY);
                                if err.worth_retrying_same_slot() || transient {
                                    busy.push(slot.clone());
                                }
                                if let Some(next) = used_next {
                                    // The hedge already tried the next slot too.
                                    last_slot = next;
                                    i += 1;
                                }
                                break;
                            }
                        }
                    }
                    i += 1;
                }
                // Every slot failed. Wait for capacity on the busy ones while time remains.
                let remaining = deadline.saturating_duration_since(Instant::now());
                let backoff = Duration::from_millis(backoff_ms.into());
                if busy.is_empty() || remaining <= backoff {
                    return self.failed(role, last_slot, run, role_started, offset);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.dispatcher.stopped() => return self.failed(role, last_slot, run, role_started, offset),
                }
                backoff_ms = (backoff_ms * 2).min(1000);
                round = busy;
            }
        }
    }

    /// An attempt on `slots.0`, plus one on `slots.1` if the first is still
    /// running after `after`; the first good answer wins and the other is
    /// called off (its worker is told to cancel). Returns the outcome and, when
    /// the hedge was started, the second slot.
    #[allow(clippy::too_many_arguments)]
    async fn hedged(
        &self,
        spec: &TaskSpec,
        phase: &SpanContext,
        role: Role,
        slots: (&Slot, Slot),
        request: &MakeRequest<'_>,
        budget: Duration,
        after: Duration,
        deadline: Instant,
        slots_left: usize,
        run: &mut ChainLog,
        offset: impl Fn(Instant) -> f64 + Copy,
    ) -> (Result<(Slot, WorkReply), AttemptError>, Option<Slot>) {
        let (primary_slot, hedge_slot) = slots;
        let mut primary_log = ChainLog::default();
        let mut hedge_log = ChainLog::default();
        let (outcome, hedged) = {
            let (stop_primary, stop_hedge) = (CallOffHandle::new(), CallOffHandle::new());
            let primary = self.attempt(
                spec,
                phase,
                role,
                primary_slot,
                request,
                budget,
                false,
                stop_primary.clone(),
                &mut primary_log,
                offset,
            );
            tokio::pin!(primary);
            let early = tokio::select! {
                out = &mut primary => Some(out),
                () = tokio::time::sleep(after) => None,
            };
            match early {
                Some(out) => (out, false),
                None => {
                    tracing::info!(
                        task_id = %spec.task_id, %role, slot = %primary_slot, hedge = %hedge_slot,
                        after_ms = after.as_millis() as u64, "hedging"
                    );
                    let hedge_budget = carve(
                        deadline.saturating_duration_since(Instant::now()),
                        slots_left.saturating_sub(1).max(1),
                    );
                    let hedge = self.attempt(
                        spec,
                        phase,
                        role,
                        &hedge_slot,
                        request,
                        hedge_budget,
                        true,
                        stop_hedge.clone(),
                        &mut hedge_log,
                        offset,
                    );
                    tokio::pin!(hedge);
                    let (first_is_primary, first) = tokio::select! {
                        out = &mut primary => (true, out),
                        out = &mut hedge => (false, out),
                    };
                    let outcome = match (first.is_ok(), first_is_primary) {
                        (true, true) => {
                            stop_hedge.call_off(CallOff::HedgeLost);
                            let _ = (&mut hedge).await;
                            first
                        }
                        (true, false) => {
                            stop_primary.call_off(CallOff::HedgeLost);
                            let _ = (&mut primary).await;
                            first
                        }
                        (false, true) => hedge.await,
                        (false, false) => primary.await,
                    };
                    (outcome, true)
                }
            }
        };
        run.absorb(primary_log);
        run.absorb(hedge_log);
        (outcome, hedged.then_some(hedge_slot))
    }

    /// One attempt: event, dispatch, validation, and the record of its outcome.
    ///
    /// Not an `async fn`: see [the crate docs](crate#what-a-task-in-flight-holds).
    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    fn attempt(
        &self,
        spec: &TaskSpec,
        phase: &SpanContext,
        role: Role,
        slot: &Slot,
        request: &MakeRequest<'_>,
        budget: Duration,
        is_hedge: bool,
        call_off: CallOffHandle,
        run: &mut ChainLog,
        offset: impl Fn(Instant) -> f64,
    ) -> impl Future<Output = Result<(Slot, WorkReply), AttemptError>> {
        async move {
            Box::pin(self.events.emit(
                &spec.task_id,
                EventKind::ModelAttempt,
                json!({
                    "role": role, "slot": slot, "attempt": run.attempts.len() + 1,
                    "budget_ms": budget.as_millis() as u64, "hedge": is_hedge,
                }),
            ))
            .await;
            let attempt_start = Instant::now();
            let queued = self.config.pull_dispatch.contains(role);
            let span = RecordedSpan::child_of(phase);
            let outcome = 'sent: {
                // The request lives only as bytes while the attempt waits, and
                // those only in the dispatcher's state (a `Result` kept here
                // would stay in this one too).
                let payload = match encode_request(&{
                    let mut req = request();
                    req.slot = slot.clone();
                    req
                }) {
                    Ok(payload) => payload,
                    Err(e) => break 'sent Err(e),
                };
                let limits = AttemptLimits {
                    budget,
                    queued,
                    heartbeat_timeout: self.config.heartbeat_timeout,
                };
                // The drain deadline ends it through the dispatcher (stop_all),
                // and the span only needs to reach the request's headers: no
                // select or instrumentation state kept while it waits.
                self.dispatcher
                    .attempt(&spec.task_id, role, slot, payload, limits, call_off, &span)
                    .await
            };
            let outcome = outcome.and_then(|reply| validate(role, reply));
            let latency = attempt_start.elapsed();
            let what = crate::telemetry::Attempt {
                role,
                slot,
                queued,
                number: run.attempts.len() + 1,
                budget,
                hedge: is_hedge,
            };
            // The error's code and message, described once for the span and the record.
            let failure = outcome.as_ref().err().map(|e| (e.code(), e.to_string()));
            crate::telemetry::attempt_finished(
                span,
                &what,
                latency,
                failure
                    .as_ref()
                    .map(|(code, message)| (*code, message.as_str())),
            );
            let latency_ms = latency.as_secs_f64() * 1000.0;
            let (outcome_name, error) = match failure {
                None => {
                    self.latency.record(role, slot, latency);
                    ("ok".to_string(), None)
                }
                Some((code, message)) => (code.to_string(), Some(message)),
            };
            run.attempts.push((
                offset(attempt_start),
                Attempt {
                    role,
                    slot: slot.clone(),
                    outcome: outcome_name,
                    error,
                    latency_ms,
                    budget_ms: budget.as_millis() as u64,
                },
            ));
            match &outcome {
                Err(AttemptError::HedgeLost) => {}
                Err(err) => {
                    // A span event on the task span, and a log line.
                    tracing::info!(
                        task_id = %spec.task_id, %role, %slot, "error.type" = err.code(),
                        error = %err, "fallback"
                    );
                    run.failures
                        .push((offset(attempt_start), format!("{role}/{slot}: {err}")));
                    run.last_error = Some(Box::new(err.clone()));
                    Box::pin(self.events.emit(
                        &spec.task_id,
                        EventKind::Fallback,
                        json!({
                            "role": role, "slot": slot, "error_code": err.code(),
                            "error": err.to_string(),
                        }),
                    ))
                    .await;
                }
                Ok(_) => {}
            }
            outcome.map(|reply| (slot.clone(), reply))
        }
    }

    fn failed(
        &self,
        role: Role,
        last_slot: Slot,
        run: ChainLog,
        role_started: Instant,
        offset: impl Fn(Instant) -> f64,
    ) -> RoleRun {
        let finished = Instant::now();
        let summary = if run.failures.is_empty() {
            "phase time limit reached before any slot was tried".to_string()
        } else {
            run.failures
                .iter()
                .map(|(_, f)| f.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        RoleRun {
            result: ModelResult {
                role,
                slot: last_slot,
                provider: String::new(),
                model: String::new(),
                success: false,
                content: Value::Null,
                error: Some(summary),
                error_code: Some(
                    run.last_error
                        .map_or(ErrorCode::TimedOut, |e| e.error_code()),
                ),
                latency_ms: finished.duration_since(role_started).as_secs_f64() * 1000.0,
                usage: None,
                started_ms: offset(role_started),
                finished_ms: offset(finished),
            },
            attempts: run.attempts,
            failures: run.failures,
        }
    }
}

/// `remaining / slots_left` in whole milliseconds (rounded): budgets travel in
/// ms, and a reader should see "1000 ms", not "999 ms", for a third of 3 s.
fn carve(remaining: Duration, slots_left: usize) -> Duration {
    let share = remaining.as_secs_f64() * 1000.0 / slots_left.max(1) as f64;
    Duration::from_millis((share.round() as u64).max(1))
}

/// A slot that answered this recently and now has no responders is presumed
/// to be reconnecting, not gone.
const RECENTLY: Duration = Duration::from_secs(60);

/// Rolling latencies of successful attempts per role/slot (the hedging
/// threshold), and when each slot last answered.
#[derive(Default)]
pub struct LatencyWindows {
    inner: std::sync::Mutex<
        std::collections::HashMap<(Role, Slot), std::collections::VecDeque<Duration>>,
    >,
    last_ok: std::sync::Mutex<std::collections::HashMap<(Role, Slot), Instant>>,
}

impl LatencyWindows {
    /// Samples kept per slot.
    pub const WINDOW: usize = 256;
    /// Samples needed before a p95 is trusted.
    pub const MIN_SAMPLES: usize = 20;

    /// Whether the slot answered within `within`.
    pub fn answered_within(&self, role: Role, slot: &Slot, within: Duration) -> bool {
        self.last_ok
            .lock()
            .ok()
            .and_then(|m| m.get(&(role, slot.clone())).copied())
            .is_some_and(|t| t.elapsed() < within)
    }

    fn record(&self, role: Role, slot: &Slot, d: Duration) {
        if let Ok(mut m) = self.last_ok.lock() {
            m.insert((role, slot.clone()), Instant::now());
        }
        let Ok(mut m) = self.inner.lock() else { return };
        let w = m.entry((role, slot.clone())).or_default();
        if w.len() == Self::WINDOW {
            w.pop_front();
        }
        w.push_back(d);
    }

    /// The slot's p95, once there are enough samples.
    pub fn p95(&self, role: Role, slot: &Slot) -> Option<Duration> {
        let m = self.inner.lock().ok()?;
        let w = m.get(&(role, slot.clone()))?;
        if w.len() < Self::MIN_SAMPLES {
            return None;
        }
        let mut v: Vec<Duration> = w.iter().copied().collect();
        v.sort_unstable();
        v.get((v.len() * 95).div_ceil(100).saturating_sub(1))
            .copied()
    }
}

/// What a chain run recorded so far.
#[derive(Default)]
struct ChainLog {
    attempts: Vec<(f64, Attempt)>,
    failures: Vec<(f64, String)>,
    /// Boxed: this log is in the state of every waiting task, and is only
    /// read once the chain fails.
    last_error: Option<Box<AttemptError>>,
}

impl ChainLog {
    /// Records `slots` as skipped at `at_ms`: the phase ran out of time first.
    fn skipped(&mut self, role: Role, slots: &[Slot], at_ms: f64) {
        for slot in slots {
            self.attempts.push((
                at_ms,
                Attempt {
                    role,
                    slot: slot.clone(),
                    outcome: "skipped".into(),
                    error: Some("phase time limit reached before this slot was tried".into()),
                    latency_ms: 0.0,
                    budget_ms: 0,
                },
            ));
        }
    }

    fn absorb(&mut self, other: ChainLog) {
        self.attempts.extend(other.attempts);
        self.failures.extend(other.failures);
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }
}

/// Checks that a reply's content has the role's shape; anything else is a failed attempt.
pub(crate) fn validate(role: Role, reply: WorkReply) -> Result<WorkReply, AttemptError> {
    fn check<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
        T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())
    }
    let r = match role {
        Role::Vision => check::<VisionAnalysis>(&reply.content),
        Role::Web => check::<WebFindings>(&reply.content),
        Role::Reasoner => check::<Plan>(&reply.content),
        Role::Verifier => check::<Verdict>(&reply.content),
    };
    r.map(|()| reply).map_err(|e| {
        AttemptError::BadReply(format!("{role} output does not match its schema: {e}"))
    })
}

/// The seed's synthesis over the roles' parsed outputs, and whether the
/// reasoner gave a plan. Not async: the parsed outputs never sit in the
/// task's state.
fn synthesize(spec: &TaskSpec, runs: &BTreeMap<Role, RoleRun>) -> (synthesis::Outcome, bool) {
    let plan: Option<Plan> = parsed(runs, Role::Reasoner);
    let verdict: Option<Verdict> = parsed(runs, Role::Verifier);
    let vision: Option<VisionAnalysis> = parsed(runs, Role::Vision);
    let outcome = synthesis::synthesize(synthesis::Inputs {
        reasoner_requested: spec.roles.contains(Role::Reasoner),
        plan: plan.as_ref(),
        verdict: verdict.as_ref(),
        vision: vision.as_ref(),
        available_tools: &spec.available_tools,
    });
    (outcome, plan.is_some())
}

fn parsed<T: DeserializeOwned>(runs: &BTreeMap<Role, RoleRun>, role: Role) -> Option<T> {
    // Read in place: the content stays in the result, parsed without a copy.
    runs.get(&role)
        .filter(|r| r.result.success)
        .and_then(|r| T::deserialize(&r.result.content).ok())
}

fn assemble(
    spec: &TaskSpec,
    started: Instant,
    runs: BTreeMap<Role, RoleRun>,
    has_plan: bool,
    outcome: synthesis::Outcome,
) -> OrchestratedResult {
    let mut attempts = Vec::new();
    let mut failures = Vec::new();
    let mut model_results = BTreeMap::new();
    for (role, run) in runs {
        attempts.extend(run.attempts);
        failures.extend(run.failures);
        model_results.insert(role, run.result);
    }
    // Phase-1 chains interleave: order everything by when it started.
    attempts.sort_by(|a, b| a.0.total_cmp(&b.0));
    failures.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut models_used: Vec<String> = model_results
        .values()
        .filter(|m| m.success && !m.model.is_empty())
        .map(|m| m.model.clone())
        .collect();
    models_used.sort();
    models_used.dedup();
    let primary_answer = if has_plan {
        model_results
            .get(&Role::Reasoner)
            .map(|m| m.content.clone())
    } else {
        None
    };
    OrchestratedResult {
        task_id: spec.task_id.to_string(),
        task: spec.task.clone(),
        primary_answer,
        model_results,
        confidence: outcome.confidence,
        conflicts: outcome.conflicts,
        execution_time_ms: started.elapsed().as_secs_f64() * 1000.0,
        models_used,
        fallback_chain: failures.into_iter().map(|(_, f)| f).collect(),
        attempts: attempts.into_iter().map(|(_, a)| a).collect(),
        trace_id: None,
        cached: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CoordinatorConfig {
        CoordinatorConfig::default()
    }

    fn spec(v: Value) -> Result<TaskSpec, ErrorBody> {
        TaskSpec::from_request(serde_json::from_value(v).unwrap(), &cfg())
    }

    #[test]
    fn default_roles_and_vision_needs_a_screenshot() {
        let s = spec(json!({"task": "t"})).unwrap();
        assert_eq!(
            s.roles.iter().collect::<Vec<_>>(),
            vec![Role::Web, Role::Reasoner]
        );
        let s = spec(json!({"task": "t", "screenshot": "iVBO"})).unwrap();
        assert!(s.roles.contains(Role::Vision));
        assert_eq!(s.web_query(), "t");
    }

    #[test]
    fn verification_selection() {
        assert!(
            !spec(json!({"task": "t"}))
                .unwrap()
                .roles
                .contains(Role::Verifier)
        );
        assert!(
            spec(json!({"task": "t", "verify": true}))
                .unwrap()
                .roles
                .contains(Role::Verifier)
        );
        let s = spec(json!({"task": "t", "tools": ["kimi_k2", "chatgpt"]})).unwrap();
        assert!(s.roles.contains(Role::Verifier));
        let s =
            spec(json!({"task": "t", "tools": ["kimi_k2", "chatgpt"], "verify": false})).unwrap();
        assert!(!s.roles.contains(Role::Verifier));
        let e = spec(json!({"task": "t", "tools": ["chatgpt"]})).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn per_request_timeouts_override_defaults() {
        let s = spec(json!({"task": "t", "timeouts": {"reasoning_ms": 1500}})).unwrap();
        assert_eq!(s.timeouts.reasoning, Duration::from_millis(1500));
        assert_eq!(s.timeouts.parallel, Duration::from_secs(30));
    }

    #[test]
    fn only_vision_without_screenshot_is_refused() {
        let e = spec(json!({"task": "t", "tools": ["vision"]})).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
    }

    /// The size of the future `f` returns (never polled: only its type is used).
    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A task waiting on a worker holds these futures (each boxed by its
    /// caller); their sizes are the coordinator's memory per task in flight.
    /// By-value arguments are stored twice by an async fn and locals kept
    /// across an await stay in its state: this fails if such a change makes
    /// the waiting state grow beyond today's (about 1.3 KB). The chain is
    /// held to 896 B, one of the allocator's size classes for its box (the
    /// next is 1,024 B); it was 1,264 B while the chain, the attempt and the
    /// dispatcher were async fns.
    #[test]
    fn waiting_task_state_stays_small() {
        type P = &'static Pipeline;
        type S = &'static TaskSpec;
        type Runs = &'static mut BTreeMap<Role, RoleRun>;
        static NO_SPAN: std::sync::LazyLock<SpanContext> =
            std::sync::LazyLock::new(SpanContext::empty_context);
        let run = future_size(|(p, s): (P, S)| p.run(s));
        let phase = future_size(|(p, s, m): (P, S, Runs)| {
            let phase = (Phase::Reasoning, Role::Reasoner, Duration::ZERO);
            p.one_role_phase(s, Instant::now(), phase, m)
        });
        let parallel =
            future_size(|(p, s, m): (P, S, Runs)| p.parallel_phase(s, Instant::now(), m));
        let chain = future_size(|(p, s, r): (P, S, &'static MakeRequest<'static>)| {
            p.run_chain(
                s,
                Instant::now(),
                Role::Reasoner,
                r,
                Instant::now(),
                &NO_SPAN,
            )
        });
        eprintln!(
            "pipeline run {run} B, one-role phase {phase} B, parallel phase {parallel} B, \
             chain {chain} B"
        );
        // It used to keep the parsed outputs through synthesis (352 B), and
        // its arguments twice (160 B).
        assert!(run <= 128, "Pipeline::run future is {run} bytes");
        assert!(phase <= 256, "one_role_phase future is {phase} bytes");
        // Holds both chains' outcomes as they finish; 784 B as an async fn.
        assert!(parallel <= 768, "parallel_phase future is {parallel} bytes");
        assert!(chain <= 896, "run_chain future is {chain} bytes");
    }
}
