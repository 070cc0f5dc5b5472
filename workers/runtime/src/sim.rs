//! **The simulator** — a documented fake backend for tests, benchmarks and
//! fleet drills. Selected only with `--provider sim`; it is never a default.
//!
//! It answers every role with well-formed output after a configurable latency
//! (plus jitter), fails a configurable fraction of requests, can hang until
//! the deadline, and can be told to reject (verifier) or to see errors on
//! screen (vision), so every synthesis rule can be exercised end to end.

use std::time::Duration;

use async_trait::async_trait;
use orch_shared::Role;
use orch_shared::config::parse_duration;
use orch_shared::wire::{
    Plan, PlanStep, SearchHit, Usage, Verdict, VerdictKind, VisionAnalysis, WebFindings,
    WorkRequest,
};
use orch_shared::{ErrorCode, wire::UiElement};
use rand::Rng as _;

use crate::error::WorkError;
use crate::handler::{Handler, JobContext, Output, ProviderInfo};

/// Simulator flags (all prefixed `--sim-`). Ignored unless `--provider sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Simulated processing time per request.
    #[arg(long = "sim-latency", env = "ORCH_SIM_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Extra uniformly random time, 0..=jitter, per request.
    #[arg(long = "sim-jitter", env = "ORCH_SIM_JITTER", default_value = "0ms", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Fraction of requests (0..=1) answered with a simulated upstream error.
    #[arg(
        long = "sim-fail-rate",
        env = "ORCH_SIM_FAIL_RATE",
        default_value_t = 0.0
    )]
    pub fail_rate: f64,
    /// Never answer: hold every request until its deadline or cancellation.
    #[arg(long = "sim-hang", env = "ORCH_SIM_HANG")]
    pub hang: bool,
    /// Verifier only: the verdict to return.
    #[arg(long = "sim-verdict", env = "ORCH_SIM_VERDICT", value_enum, default_value_t = SimVerdict::Approved)]
    pub verdict: SimVerdict,
    /// Vision only: report errors visible on the screen.
    #[arg(long = "sim-vision-errors", env = "ORCH_SIM_VISION_ERRORS")]
    pub vision_errors: bool,
    /// Reasoner: the plan's confidence; verifier: the verdict's confidence.
    #[arg(
        long = "sim-confidence",
        env = "ORCH_SIM_CONFIDENCE",
        default_value_t = 0.8
    )]
    pub confidence: f64,
    /// Reasoner only: add a step using a tool outside `available_tools`.
    #[arg(long = "sim-rogue-tool", env = "ORCH_SIM_ROGUE_TOOL")]
    pub rogue_tool: bool,
    /// Model name to report.
    #[arg(long = "sim-model", env = "ORCH_SIM_MODEL")]
    pub model: Option<String>,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            hang: false,
            verdict: SimVerdict::Approved,
            vision_errors: false,
            confidence: 0.8,
            rogue_tool: false,
            model: None,
        }
    }
}

impl SimArgs {
    /// Adds every invalid value to `problems`.
    pub fn check(&self, problems: &mut orch_shared::config::Problems) {
        problems.require(
            (0.0..=1.0).contains(&self.fail_rate),
            format!(
                "--sim-fail-rate must be within 0..=1, got {}",
                self.fail_rate
            ),
        );
        problems.require(
            (0.0..=1.0).contains(&self.confidence),
            format!(
                "--sim-confidence must be within 0..=1, got {}",
                self.confidence
            ),
        );
    }
}

/// The verdict a simulated verifier returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimVerdict {
    /// `approved`.
    Approved,
    /// `rejected`.
    Rejected,
    /// `uncertain`.
    Uncertain,
}

/// A simulated backend for one role.
#[derive(Debug, Clone)]
pub struct SimHandler {
    role: Role,
    args: SimArgs,
}

impl SimHandler {
    /// A simulator for `role`.
    pub fn new(role: Role, args: SimArgs) -> SimHandler {
        SimHandler { role, args }
    }

    fn model(&self) -> String {
        self.args
            .model
            .clone()
            .unwrap_or_else(|| format!("sim-{}", self.role.as_str()))
    }

    fn content(&self, req: &WorkRequest) -> Result<serde_json::Value, WorkError> {
        let value = match self.role {
            Role::Vision => {
                let bytes = req.screenshot.as_ref().map_or(0, |s| s.len());
                if bytes == 0 {
                    return Err(WorkError::invalid_input("no screenshot in the request"));
                }
                let errors = if self.args.vision_errors {
                    vec!["simulated error dialog: 'Something went wrong'".to_string()]
                } else {
                    vec![]
                };
                serde_json::to_value(VisionAnalysis {
                    description: format!("simulated analysis of a {bytes}-byte screenshot"),
                    elements: vec![UiElement {
                        kind: "button".into(),
                        label: "Submit".into(),
                    }],
                    errors_detected: errors,
                    suggested_actions: vec!["click Submit".into()],
                })
            }
            Role::Web => {
                let query = req.query.clone().unwrap_or_else(|| req.task.clone());
                serde_json::to_value(WebFindings {
                    results: (1..=3)
                        .map(|i| SearchHit {
                            title: format!("simulated result {i} for {query}"),
                            url: format!("https://sim.invalid/{i}"),
                            snippet: "simulated snippet".into(),
                        })
                        .collect(),
                    pages: vec![],
                    query,
                })
            }
            Role::Reasoner => {
                let mut steps: Vec<PlanStep> = req
                    .available_tools
                    .iter()
                    .take(3)
                    .map(|t| PlanStep {
                        tool: t.clone(),
                        args: serde_json::Map::new(),
                        why: format!("simulated step using {t}"),
                    })
                    .collect();
                if self.args.rogue_tool {
                    steps.push(PlanStep {
                        tool: "rm_rf_everything".into(),
                        args: serde_json::Map::new(),
                        why: "simulated rogue step".into(),
                    });
                }
                serde_json::to_value(Plan {
                    steps,
                    answer: format!("simulated plan for: {}", req.task),
                    confidence: self.args.confidence,
                })
            }
            Role::Verifier => {
                let verdict = match self.args.verdict {
                    SimVerdict::Approved => VerdictKind::Approved,
                    SimVerdict::Rejected => VerdictKind::Rejected,
                    SimVerdict::Uncertain => VerdictKind::Uncertain,
                };
                let issues = if verdict == VerdictKind::Approved {
                    vec![]
                } else {
                    vec![format!("simulated {} verdict", verdict.as_str())]
                };
                serde_json::to_value(Verdict {
                    verdict,
                    issues,
                    confidence: self.args.confidence,
                })
            }
        };
        value.map_err(|e| WorkError::internal(e.to_string()))
    }
}

#[async_trait]
impl Handler for SimHandler {
    fn role(&self) -> Role {
        self.role
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "sim".into(),
            model: self.model(),
        }
    }

    async fn handle(&self, req: WorkRequest, ctx: JobContext) -> Result<Output, WorkError> {
        if self.args.hang {
            ctx.cancel.cancelled().await;
            return Err(WorkError::new(
                ErrorCode::Cancelled,
                "simulated hang cancelled",
            ));
        }
        let (delay, fail) = {
            let mut rng = rand::rng();
            let jitter_ms = self.args.jitter.as_millis() as u64;
            let extra = if jitter_ms > 0 {
                rng.random_range(0..=jitter_ms)
            } else {
                0
            };
            let fail = self.args.fail_rate > 0.0 && rng.random_bool(self.args.fail_rate);
            (self.args.latency + Duration::from_millis(extra), fail)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            return Err(WorkError::upstream("simulated upstream failure"));
        }
        let content = self.content(&req)?;
        let words = |s: &str| s.split_whitespace().count() as u64;
        Ok(Output {
            provider: "sim".into(),
            model: self.model(),
            usage: Some(Usage {
                input_tokens: words(&req.task) + req.context.as_deref().map_or(0, words),
                output_tokens: words(&content.to_string()),
            }),
            content,
        })
    }
}
