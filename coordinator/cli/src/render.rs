//! Human-readable output: progress lines, result summaries, tables.

use std::fmt::Write as _;

use orch_client::ServiceInstance;
use orch_shared::wire::{Event, EventKind, OrchestratedResult, StatsReport};
use orch_shared::{ErrorCode, Role};

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One line describing an event, or `None` for events not worth a line.
pub fn progress_line(e: &Event) -> Option<String> {
    let d = &e.details;
    Some(match e.kind {
        EventKind::ActionStart => format!("started: roles {}", s(&d["roles"])),
        EventKind::PhaseStarted => format!("phase {} started ({})", s(&d["phase"]), s(&d["roles"])),
        EventKind::PhaseCompleted => format!(
            "phase {} done in {:.1} ms (ok {}, failed {})",
            s(&d["phase"]),
            d["duration_ms"].as_f64().unwrap_or(0.0),
            s(&d["succeeded"]),
            s(&d["failed"])
        ),
        EventKind::ModelAttempt => format!(
            "→ {}/{} (budget {} ms)",
            s(&d["role"]),
            s(&d["slot"]),
            s(&d["budget_ms"])
        ),
        EventKind::Fallback => format!("✗ {}/{}: {}", s(&d["role"]), s(&d["slot"]), s(&d["error"])),
        EventKind::Conflict => format!("conflict: {}", s(&d["conflict"])),
        EventKind::ActionComplete => format!("complete: confidence {}", s(&d["confidence"])),
        EventKind::ActionFailed => format!("failed: {}", s(&d["reason"])),
    })
}

/// Below this the seed asks for manual review.
const REVIEW_BELOW: f64 = 0.7;

/// A result summary, most useful first: the answer and its plan, how far to
/// trust it, then what failed (each failure once, in words) and what it cost.
pub fn result(r: &OrchestratedResult) -> String {
    let mut o = String::new();
    let label = |o: &mut String, name: &str, value: &str| {
        let _ = writeln!(o, "  {name:<11} {value}");
    };
    match r.plan() {
        Some(plan) => {
            label(&mut o, "answer", &plan.answer);
            for (i, step) in plan.steps.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {:<11} {}. {} {}",
                    if i == 0 { "plan" } else { "" },
                    i + 1,
                    step.tool,
                    serde_json::Value::Object(step.args.clone())
                );
                if !step.why.is_empty() {
                    let _ = writeln!(o, "  {:<11}    {}", "", step.why);
                }
            }
        }
        None if r.model_results.contains_key(&Role::Reasoner) => {
            label(
                &mut o,
                "answer",
                "none: no reasoner produced a plan (see failed)",
            );
        }
        None => {}
    }
    let review = if r.confidence < REVIEW_BELOW {
        " (below 70%: review by hand)"
    } else {
        ""
    };
    label(
        &mut o,
        "confidence",
        &format!("{:.0}%{review}", r.confidence * 100.0),
    );
    if let Some(v) = r.verdict() {
        label(
            &mut o,
            "verdict",
            &format!("{} ({:.0}%)", v.verdict.as_str(), v.confidence * 100.0),
        );
    }
    let used: Vec<String> = r
        .model_results
        .values()
        .filter(|m| m.success)
        .map(|m| {
            let model = if m.model.is_empty() {
                &m.provider
            } else {
                &m.model
            };
            format!("{} {} ({:.1} s)", m.role, model, m.latency_ms / 1000.0)
        })
        .collect();
    label(
        &mut o,
        "models",
        &if used.is_empty() {
            "none".into()
        } else {
            used.join(", ")
        },
    );
    // A role's final failure, once; then only the fallbacks it does not already say.
    let mut said: Vec<&str> = Vec::new();
    for (i, m) in r.model_results.values().filter(|m| !m.success).enumerate() {
        let error = m.error.as_deref().unwrap_or("no reason given");
        said.push(error);
        let what = match m.error_code {
            // The worker's reason already names the role and says what enables it.
            Some(ErrorCode::NotConfigured) => format!(
                "not configured: {}",
                error.rsplit("not_configured: ").next().unwrap_or(error)
            ),
            _ => format!("{}/{}: {error}", m.role, m.slot),
        };
        label(&mut o, if i == 0 { "failed" } else { "" }, &what);
    }
    let fallbacks: Vec<&String> = r
        .fallback_chain
        .iter()
        .filter(|f| !said.iter().any(|e| f.contains(e) || e.contains(f.as_str())))
        .collect();
    for (i, f) in fallbacks.iter().enumerate() {
        label(&mut o, if i == 0 { "fallbacks" } else { "" }, f);
    }
    if r.conflicts.is_empty() {
        label(&mut o, "conflicts", "none");
    }
    for (i, c) in r.conflicts.iter().enumerate() {
        label(&mut o, if i == 0 { "conflicts" } else { "" }, c);
    }
    label(
        &mut o,
        "time",
        &format!("{:.1} s", r.execution_time_ms / 1000.0),
    );
    label(&mut o, "task id", &r.task_id);
    o
}

/// A stats table.
pub fn stats(s: &StatsReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "scope                 {}", s.scope);
    let _ = writeln!(o, "total executions      {}", s.total_executions);
    let _ = writeln!(o, "success rate          {:.2}%", s.success_rate * 100.0);
    let _ = writeln!(o, "avg confidence        {:.2}", s.avg_confidence);
    let _ = writeln!(o, "avg execution time    {:.1} ms", s.avg_execution_time_ms);
    let _ = writeln!(o, "conflicts detected    {}", s.conflicts_detected);
    let _ = writeln!(o, "fallbacks triggered   {}", s.fallbacks_triggered);
    let _ = writeln!(o, "in flight             {}", s.in_flight);
    if s.slow_consumer_events > 0 {
        let _ = writeln!(
            o,
            "slow-consumer drops   {} (NATS messages this coordinator dropped)",
            s.slow_consumer_events
        );
    }
    let _ = writeln!(o, "model usage");
    for (m, n) in &s.model_usage {
        let _ = writeln!(o, "  {m:<30} {n}");
    }
    let _ = writeln!(
        o,
        "latency (ms)                     count      p50      p95      p99      max"
    );
    for (k, l) in &s.latency {
        let _ = writeln!(
            o,
            "  {k:<30} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        );
    }
    o
}

/// Errors a service answered with. Workers publish error replies with a JSON
/// body themselves, which `$SRV` does not count, and report them in their
/// stats data (`failed` while running a job, `rejected` before starting one).
fn errors(s: &ServiceInstance) -> u64 {
    let count = |k: &str| s.data.get(k).and_then(serde_json::Value::as_u64);
    match (count("failed"), count("rejected")) {
        (None, None) => s.errors,
        (f, r) => f.unwrap_or(0) + r.unwrap_or(0),
    }
}

/// A table of live services.
pub fn workers(found: &[ServiceInstance]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<18} {:<10} {:<10} {:<10} {:<28} {:>9} {:>9} {:>7}  id",
        "service", "role", "slot", "provider", "model", "in-flight", "requests", "errors"
    );
    for s in found {
        let in_flight = s
            .data
            .get("in_flight")
            .map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            o,
            "{:<18} {:<10} {:<10} {:<10} {:<28} {:>9} {:>9} {:>7}  {}",
            s.name,
            s.meta("role"),
            s.meta("slot"),
            s.meta("provider"),
            s.meta("model"),
            in_flight,
            s.requests,
            errors(s),
            s.id
        );
    }
    if found.is_empty() {
        let _ = writeln!(o, "(no services answered)");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrchestratedResult {
        serde_json::from_value(serde_json::json!({
            "task_id": "t1",
            "task": "Find Python developers on LinkedIn",
            "primary_answer": {
                "answer": "search LinkedIn people for Python",
                "confidence": 0.6,
                "steps": [
                    {"tool": "playwright_navigate", "args": {"url": "https://www.linkedin.com"}, "why": "open the site"},
                    {"tool": "playwright_extract_entities", "args": {}}
                ]
            },
            "model_results": {
                "web": {
                    "role": "web", "slot": "default", "provider": "not_configured", "model": "",
                    "success": false, "content": null,
                    "error": "not_configured: web: no SearxNG at http://127.0.0.1:8080; set ORCH_SEARXNG_URL",
                    "error_code": "not_configured",
                    "latency_ms": 1.0, "started_ms": 0.0, "finished_ms": 1.0
                },
                "reasoner": {
                    "role": "reasoner", "slot": "local", "provider": "llama", "model": "qwen",
                    "success": true, "content": null,
                    "latency_ms": 2500.0, "started_ms": 0.0, "finished_ms": 2500.0
                }
            },
            "confidence": 0.55,
            "conflicts": [],
            "execution_time_ms": 2600.0,
            "models_used": ["qwen"],
            "fallback_chain": [
                "web/default: not_configured: web: no SearxNG at http://127.0.0.1:8080; set ORCH_SEARXNG_URL",
                "reasoner/kimi_k2: no responders"
            ]
        }))
        .expect("a valid result")
    }

    #[test]
    fn the_answer_comes_first_and_each_failure_is_said_once() {
        let text = result(&sample());
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains("answer") && first.contains("search LinkedIn"),
            "{text}"
        );
        assert!(
            text.contains("1. playwright_navigate {\"url\":\"https://www.linkedin.com\"}"),
            "{text}"
        );
        assert!(text.contains("open the site"), "{text}");
        assert!(text.contains("55% (below 70%: review by hand)"), "{text}");
        assert!(text.contains("reasoner qwen (2.5 s)"), "{text}");
        assert_eq!(text.matches("no SearxNG").count(), 1, "{text}");
        assert!(text.contains("not configured: web: no SearxNG"), "{text}");
        // The fallback not already reported as a failure stays.
        assert!(text.contains("reasoner/kimi_k2: no responders"), "{text}");
    }

    #[test]
    fn confident_results_ask_for_no_review() {
        let mut r = sample();
        r.confidence = 0.9;
        let text = result(&r);
        assert!(
            text.contains("90%") && !text.contains("review by hand"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_reasoner_says_there_is_no_answer() {
        let mut r = sample();
        r.primary_answer = None;
        let text = result(&r);
        assert!(text.contains("none: no reasoner produced a plan"), "{text}");
    }
}
