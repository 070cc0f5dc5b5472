//! Human-readable output: progress lines, result summaries, tables.

use std::fmt::Write as _;

use orch_client::ServiceInstance;
use orch_shared::Role;
use orch_shared::wire::{Event, EventKind, OrchestratedResult, StatsReport};

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

/// A result summary.
pub fn result(r: &OrchestratedResult) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "result {}", r.task_id);
    let _ = writeln!(o, "  confidence  {:.0}%", r.confidence * 100.0);
    let models = if r.models_used.is_empty() {
        "none".into()
    } else {
        r.models_used.join(", ")
    };
    let _ = writeln!(o, "  models      {models}");
    if r.fallback_chain.is_empty() {
        let _ = writeln!(o, "  fallbacks   none");
    } else {
        for (i, f) in r.fallback_chain.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {}   {f}",
                if i == 0 { "fallbacks" } else { "         " }
            );
        }
    }
    if r.conflicts.is_empty() {
        let _ = writeln!(o, "  conflicts   none");
    } else {
        for (i, c) in r.conflicts.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {}   {c}",
                if i == 0 { "conflicts" } else { "         " }
            );
        }
    }
    let timings: Vec<String> = r
        .model_results
        .values()
        .map(|m| {
            format!(
                "{} {:.1} ms{}",
                m.role,
                m.latency_ms,
                if m.success { "" } else { " ✗" }
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "  time        {:.1} ms ({})",
        r.execution_time_ms,
        timings.join(", ")
    );
    for m in r.model_results.values().filter(|m| !m.success) {
        let _ = writeln!(
            o,
            "  {:<11} failed: {}",
            m.role.as_str(),
            m.error.as_deref().unwrap_or("?")
        );
    }
    if let Some(v) = r.verdict() {
        let _ = writeln!(
            o,
            "  verdict     {} ({:.0}%)",
            v.verdict.as_str(),
            v.confidence * 100.0
        );
    }
    match r.plan() {
        Some(plan) => {
            let _ = writeln!(o, "  answer      {}", plan.answer);
            for (i, step) in plan.steps.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  step {:<6} {} {} — {}",
                    i + 1,
                    step.tool,
                    serde_json::Value::Object(step.args.clone()),
                    step.why
                );
            }
        }
        None if r.model_results.contains_key(&Role::Reasoner) => {
            let _ = writeln!(o, "  answer      none (every reasoner failed)");
        }
        None => {}
    }
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
            s.errors,
            s.id
        );
    }
    if found.is_empty() {
        let _ = writeln!(o, "(no services answered)");
    }
    o
}
