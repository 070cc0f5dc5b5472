//! Measures the local model: load time, tokens per second with and without a
//! grammar, and resident memory of the model process. It is also the smallest
//! complete example of the production wiring: `maybe_run_child()` first in
//! `main`, then `LocalModel` re-executing this very binary.
//!
//! ```text
//! deploy/fetch-model.sh
//! cargo run --release -p orch-llama --example local_bench -- [JOBS]
//! ```
//! The model comes from `ORCH_LOCAL_MODEL` or the fetch script's default path;
//! `ORCH_LOCAL_THREADS` sets the threads.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use orch_llama::{LocalConfig, LocalModel};
use orch_providers::chat::{ChatModel, ChatRequest, OutputSchema};
use orch_worker::JobContext;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    orch_llama::maybe_run_child();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("local_bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench() -> Result<(), String> {
    let jobs: u32 = std::env::args()
        .nth(1)
        .map_or(Ok(3), |s| s.parse())
        .map_err(|e| format!("JOBS: {e}"))?;
    let path = std::env::var_os("ORCH_LOCAL_MODEL")
        .map(Into::into)
        .or_else(|| orch_llama::args::default_model_path(&|k| std::env::var_os(k)))
        .ok_or("set ORCH_LOCAL_MODEL")?;
    let mut config = LocalConfig::new(path);
    if let Some(t) = std::env::var("ORCH_LOCAL_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        config.threads = t;
    }
    config.temperature = 0.0;
    let threads = config.threads;
    let model = LocalModel::new(config)?;
    let started = Instant::now();
    model
        .warm_up(Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "model {} threads {threads}: loaded in {:?}",
        model.model_name(),
        started.elapsed()
    );

    let plain = ChatRequest {
        system: "You are a helpful assistant.".into(),
        user: "Write a long story about a lighthouse keeper.".into(),
        images: vec![],
        schema: None,
        max_tokens: Some(256),
        temperature: None,
    };
    let schema = json!({
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"type": "object", "properties": {
                "tool": {"type": "string", "enum": ["web_search", "open_page"]},
                "args": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": false},
                "why": {"type": "string"}}, "required": ["tool", "args", "why"], "additionalProperties": false}},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["steps", "answer", "confidence"],
        "additionalProperties": false
    });
    let structured = ChatRequest {
        system: "You plan how to answer a question with the tools web_search and open_page.".into(),
        user: "What is the weather in Paris today?".into(),
        schema: Some(OutputSchema {
            name: "plan".into(),
            schema,
        }),
        max_tokens: None,
        ..plain.clone()
    };
    for (label, request) in [("plain", &plain), ("grammar", &structured)] {
        let (mut tokens, mut prompt, mut elapsed, mut last) = (0, 0, Duration::ZERO, String::new());
        let cpu_before = model.child_pid().and_then(cpu_seconds);
        for _ in 0..jobs {
            let ctx = JobContext {
                deadline: std::time::Instant::now() + Duration::from_secs(300),
                cancel: CancellationToken::new(),
            };
            let t = Instant::now();
            let reply = model
                .chat(request, &ctx)
                .await
                .map_err(|e| format!("{label}: {e}"))?;
            elapsed += t.elapsed();
            let usage = reply.usage.unwrap_or_default();
            tokens += usage.output_tokens;
            prompt += usage.input_tokens;
            last = reply.text;
        }
        println!(
            "{label}: {jobs} jobs, {prompt} prompt + {tokens} generated tokens in {elapsed:?}: {:.1} generated tokens/s end to end",
            tokens as f64 / elapsed.as_secs_f64()
        );
        let cpu_after = model.child_pid().and_then(cpu_seconds);
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            // CPU time does not grow when other processes take the cores, so
            // this is what a busy machine hides: throughput per core-second.
            println!(
                "{label}: {:.1} s of model CPU time: {:.1} generated tokens per CPU-second",
                after - before,
                tokens as f64 / (after - before)
            );
        }
        println!("{label}: last answer: {}", last.replace('\n', " "));
    }
    let rss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    if let Some(pid) = model.child_pid() {
        println!(
            "model process RSS: {}; worker process RSS: {}",
            rss(pid),
            rss(std::process::id())
        );
    }
    Ok(())
}

/// User plus system CPU time of process `pid`, in seconds (Linux `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}
