//! Basic orchestration: Kimi K2 (reasoner) + vision, like the seed's first example.
//! Needs a running fleet (`orch up`); NATS_URL defaults to nats://127.0.0.1:4222.

use orch_client::{Orchestrator, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let orch = Orchestrator::connect(&url).await?;
    let request = SubmitRequest {
        tools: Some(vec!["kimi_k2".into(), "vision".into()]),
        available_tools: vec![
            "playwright_navigate".into(),
            "playwright_extract_entities".into(),
        ],
        context: Some("Building talent pipeline".into()),
        ..SubmitRequest::new("Find Python developers on LinkedIn")
    };
    let result = orch.execute(&request).await?;
    println!("Confidence: {:.2}%", result.confidence * 100.0);
    println!("Models Used: {:?}", result.models_used);
    println!("Execution Time: {:.1}ms", result.execution_time_ms);
    if let Some(plan) = result.plan() {
        println!("Answer: {}", plan.answer);
        for (i, step) in plan.steps.iter().enumerate() {
            println!("  {}. {} — {}", i + 1, step.tool, step.why);
        }
    }
    orch.close().await?;
    Ok(())
}
