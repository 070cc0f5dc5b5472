//! `orch eval`: runs a labelled task set through the live fleet, as a plain
//! NATS client, and reports per variant how often the answers pass their
//! checks and how well the fleet's confidence predicts that.

mod score;
mod task;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use orch_client::{ClientError, Orchestrator, Role, TaskId};
use orch_shared::codec::error_from_reply;
use orch_shared::config::NatsArgs;
use orch_shared::headers;
use orch_shared::ids::Slot;
use orch_shared::subjects;
use orch_shared::wire::{OrchestratedResult, Verdict, WorkReply, WorkRequest};
use serde_json::json;

use crate::plot::{Chart, Series};
pub use score::{Outcome, VariantScore, by_variant};
use task::{EvalTask, Judgement, Observed};

/// Most tasks run at once (each is a whole fleet task).
const MAX_CONCURRENCY: usize = 64;
/// A verifier task's budget when its request sets no verification timeout
/// (the coordinator's default verification phase).
const DEFAULT_VERIFY_MS: u64 = 20_000;
/// Slack beyond a verifier's budget before eval stops waiting for its reply.
const VERIFY_MARGIN: Duration = Duration::from_secs(5);

/// `orch eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Labelled task file, JSON Lines: {"id", "request", "expect"} per line (docs/eval.md).
    #[arg(long, value_name = "FILE.jsonl")]
    pub tasks: PathBuf,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_CONCURRENCY as i64))]
    pub concurrency: u16,
    /// Name every task's outcome under this variant. Default: the model that
    /// answered (reasoner or, for verifier tasks, verifier), as provider/model.
    #[arg(long)]
    pub variant: Option<String>,
    /// Verifier slots tried in order for verifier tasks (`verify_plan`), as the coordinator would.
    #[arg(long, default_value = orch_coordinator::config::DEFAULT_VERIFIER_CHAIN)]
    pub verifier_chain: String,
    /// Write one JSON line per task (id, pass, failures, confidence, latency, model) to this file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// Write a reliability diagram (confidence bins against observed pass rate) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON line per task, then the summary as the last line.
    #[arg(long)]
    pub json: bool,
}

/// One finished task.
#[derive(Debug, Clone)]
struct Report {
    id: String,
    model: String,
    judgement: Judgement,
    outcome: Outcome,
}

pub async fn run(nats: &NatsArgs, a: EvalArgs) -> anyhow::Result<ExitCode> {
    let tasks = task::load(&a.tasks)?;
    let chain: Vec<Slot> = a
        .verifier_chain
        .split(',')
        .map(|s| s.trim().parse::<Slot>())
        .collect::<Result<_, _>>()
        .context("--verifier-chain")?;
    let (client, _) = nats.connect("orch-eval").await?;
    let orch = Arc::new(Orchestrator::from_client(client));
    let total = tasks.len();
    let progress = Progress::new(total, std::io::stderr().is_terminal());
    let mut reports: Vec<Report> = Vec::with_capacity(total);
    let mut runs = futures::stream::iter(tasks.into_iter().map(|t| {
        let orch = Arc::clone(&orch);
        let chain = chain.clone();
        let variant = a.variant.clone();
        async move { run_task(&orch, &chain, t, variant).await }
    }))
    .buffer_unordered(usize::from(a.concurrency));
    while let Some(report) = runs.next().await {
        let report = report?;
        progress.done(&report, &reports);
        reports.push(report);
    }
    progress.finish();
    drop(runs);
    if let Ok(orch) = Arc::try_unwrap(orch) {
        let _ = orch.close().await;
    }

    let outcomes: Vec<Outcome> = reports.iter().map(|r| r.outcome.clone()).collect();
    let scores = by_variant(&outcomes);
    if let Some(path) = &a.out {
        let mut lines = String::new();
        for r in &reports {
            lines.push_str(&task_json(r).to_string());
            lines.push('\n');
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        let svg = crate::plot::svg(&[reliability_chart(&scores)]).context("no tasks to plot")?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        for r in &reports {
            println!("{}", task_json(r));
        }
        println!("{}", json!({ "variants": scores }));
    } else {
        print!("{}", table(&reports, &scores));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_task(
    orch: &Orchestrator,
    chain: &[Slot],
    t: EvalTask,
    variant: Option<String>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (seen, model, confidence, tokens, fallbacks) = if t.verify_plan.is_some() {
        let (seen, model, fallbacks) = verify(orch, chain, &t).await?;
        let confidence = seen.verdict.as_ref().map_or(0.0, |v| v.confidence);
        (seen, model, confidence, None, fallbacks)
    } else {
        let mut request = t.request.clone();
        // The fleet is measured, not its cache.
        request.cache = request.cache.or(Some(false));
        request.task_id = None;
        match orch.execute(&request).await {
            Ok(r) => {
                let seen = Observed::from_result(&r);
                (
                    seen,
                    answering_model(&r, Role::Reasoner),
                    r.confidence,
                    tokens(&r),
                    r.fallback_chain.len() as u64,
                )
            }
            Err(e @ (ClientError::NoCoordinator(_) | ClientError::Connect(_))) => {
                bail!("task {}: {e}", t.id)
            }
            Err(e) => (
                Observed {
                    error: Some(e.to_string()),
                    ..Observed::default()
                },
                "(none)".to_string(),
                0.0,
                None,
                0,
            ),
        }
    };
    let judgement = t.judge(&seen);
    Ok(Report {
        outcome: Outcome {
            variant: variant.unwrap_or_else(|| model.clone()),
            pass: judgement.pass,
            valid: judgement.valid,
            confidence,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            tokens,
            fallbacks,
        },
        id: t.id,
        model,
        judgement,
    })
}

/// `provider/model` of the role's result, or `(none)`.
fn answering_model(r: &OrchestratedResult, role: Role) -> String {
    r.model_results.get(&role).map_or_else(
        || "(none)".into(),
        |m| format!("{}/{}", m.provider, m.model),
    )
}

fn tokens(r: &OrchestratedResult) -> Option<u64> {
    let used: Vec<u64> = r
        .model_results
        .values()
        .filter_map(|m| m.usage.as_ref())
        .map(|u| u.input_tokens + u.output_tokens)
        .collect();
    (!used.is_empty()).then(|| used.iter().sum())
}

/// Sends the task's planted plan to the verifier slots in order, as the
/// coordinator's verification phase would, and reads the first verdict.
async fn verify(
    orch: &Orchestrator,
    chain: &[Slot],
    t: &EvalTask,
) -> anyhow::Result<(Observed, String, u64)> {
    let budget_ms = t
        .request
        .timeouts
        .and_then(|x| x.verification_ms)
        .unwrap_or(DEFAULT_VERIFY_MS);
    let mut errors = Vec::new();
    for (n, slot) in chain.iter().enumerate() {
        let work = WorkRequest {
            task_id: TaskId::generate(),
            role: Role::Verifier,
            slot: slot.clone(),
            task: t.request.task.clone(),
            context: t.request.context.clone(),
            available_tools: t.request.available_tools.clone(),
            screenshot: None,
            query: None,
            screenshot_ref: None,
            vision: None,
            web: None,
            answer: t.verify_plan.clone(),
        };
        match work_request(orch, &work, budget_ms).await {
            Ok(reply) => {
                let model = format!("{}/{}", reply.provider, reply.model);
                let seen = match serde_json::from_value::<Verdict>(reply.content) {
                    Ok(v) => Observed {
                        verdict: Some(v),
                        ..Observed::default()
                    },
                    Err(e) => Observed {
                        malformed: true,
                        error: Some(format!("{model}: not a verdict: {e}")),
                        ..Observed::default()
                    },
                };
                return Ok((seen, model, n as u64));
            }
            Err(e) => errors.push(format!("{slot}: {e}")),
        }
    }
    Ok((
        Observed {
            error: Some(errors.join("; ")),
            ..Observed::default()
        },
        "(none)".into(),
        chain.len().saturating_sub(1) as u64,
    ))
}

/// One work request to a worker, skipping its heartbeats; the error is in words.
async fn work_request(
    orch: &Orchestrator,
    work: &WorkRequest,
    budget_ms: u64,
) -> Result<WorkReply, String> {
    let nats = orch.nats();
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::ORCH_BUDGET_MS, budget_ms.to_string().as_str());
    h.insert(headers::CONTENT_TYPE, "application/json");
    let body = serde_json::to_vec(work).map_err(|e| e.to_string())?;
    nats.publish_with_reply_and_headers(
        subjects::work(work.role, &work.slot),
        inbox,
        h,
        body.into(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let deadline = Duration::from_millis(budget_ms) + VERIFY_MARGIN;
    let wait = async {
        while let Some(msg) = replies.next().await {
            if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err("no worker serves this slot".to_string());
            }
            let kind = msg.headers.as_ref().and_then(|h| h.get(headers::ORCH_KIND));
            if kind.is_some_and(|k| k.as_str() == headers::KIND_HEARTBEAT) {
                continue;
            }
            if let Some(err) = error_from_reply(msg.headers.as_ref(), &msg.payload) {
                return Err(err.to_string());
            }
            return orch_shared::codec::Encoding::from_headers(msg.headers.as_ref())
                .map_err(|e| e.to_string())?
                .decode::<WorkReply>(&msg.payload)
                .map_err(|e| format!("undecodable reply: {}", e.message));
        }
        Err("the reply subscription closed".to_string())
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {} ms", deadline.as_millis())))
}

fn task_json(r: &Report) -> serde_json::Value {
    json!({
        "id": r.id,
        "variant": r.outcome.variant,
        "model": r.model,
        "pass": r.judgement.pass,
        "valid": r.judgement.valid,
        "failures": r.judgement.failures,
        "confidence": r.outcome.confidence,
        "latency_ms": r.outcome.latency_ms.round(),
        "tokens": r.outcome.tokens,
        "fallbacks": r.outcome.fallbacks,
    })
}

fn table(reports: &[Report], scores: &std::collections::BTreeMap<String, VariantScore>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.judgement.pass).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "failed tasks:");
        for r in failed {
            let _ = writeln!(
                out,
                "  {:<28} {:>4.0}%  {}",
                r.id,
                r.outcome.confidence * 100.0,
                r.judgement.failures.join("; ")
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:<44} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>5}",
        "variant",
        "tasks",
        "pass",
        "valid",
        "conf",
        "ECE",
        "Brier",
        "p50",
        "p95",
        "tokens",
        "fallb"
    );
    for (name, s) in scores {
        let _ = writeln!(
            out,
            "{:<44} {:>5} {:>5.1}% {:>5.1}% {:>5.1}% {:>6.3} {:>6.3} {:>7.1}s {:>7.1}s {:>8} {:>5}",
            name,
            s.tasks,
            s.pass_rate * 100.0,
            s.valid_rate * 100.0,
            s.mean_confidence * 100.0,
            s.ece,
            s.brier,
            s.p50_ms / 1e3,
            s.p95_ms / 1e3,
            s.tokens,
            s.tasks_with_fallback
        );
    }
    out
}

fn reliability_chart(scores: &std::collections::BTreeMap<String, VariantScore>) -> Chart {
    let mut series = vec![Series {
        name: "perfectly calibrated".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    }];
    series.extend(scores.iter().map(|(name, s)| {
        Series {
            name: format!("{name} (ECE {:.2}, n={})", s.ece, s.tasks),
            points: s
                .bins
                .iter()
                .map(|b| (b.mean_confidence, b.pass_rate))
                .collect(),
        }
    }));
    Chart {
        title: "Reliability: does confidence predict passing?".into(),
        x_label: "confidence (mean of each 0.1-wide bin)".into(),
        y_label: "observed pass rate".into(),
        log2_x: false,
        series,
        target: None,
    }
}

/// A progress bar on a terminal; one line per task elsewhere (CI logs).
struct Progress {
    total: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize, tty: bool) -> Progress {
        Progress { total, tty }
    }

    fn done(&self, r: &Report, before: &[Report]) {
        let n = before.len() + 1;
        let passed =
            before.iter().filter(|b| b.judgement.pass).count() + usize::from(r.judgement.pass);
        let mut err = std::io::stderr().lock();
        if self.tty {
            const WIDTH: usize = 30;
            let filled = n * WIDTH / self.total.max(1);
            let _ = write!(
                err,
                "\r[{}{}] {n}/{} passed {passed}  {:<30.30}",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                self.total,
                r.id
            );
        } else {
            let _ = writeln!(
                err,
                "eval: {n}/{} {} {} (confidence {:.0}%, {:.1} s)",
                self.total,
                r.id,
                if r.judgement.pass { "pass" } else { "FAIL" },
                r.outcome.confidence * 100.0,
                r.outcome.latency_ms / 1e3
            );
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
