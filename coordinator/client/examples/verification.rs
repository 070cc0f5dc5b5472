//! Multi-model verification: the plan is checked by a second model (ChatGPT slot first).

use orch_client::{Orchestrator, Role, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let orch = Orchestrator::connect(&url).await?;
    let request = SubmitRequest {
        tools: Some(vec!["kimi_k2".into(), "chatgpt".into()]),
        available_tools: vec!["playwright_navigate".into()],
        verify: Some(true),
        ..SubmitRequest::new("Complex task requiring verification")
    };
    let result = orch.execute(&request).await?;
    match result.model_results.get(&Role::Verifier) {
        Some(v) if v.success => {
            let verdict = result.verdict().map(|v| v.verdict.as_str()).unwrap_or("?");
            println!("Verification: {verdict} (by {}/{})", v.slot, v.model);
        }
        Some(v) => println!("Verification failed: {}", v.error.as_deref().unwrap_or("?")),
        None => println!("Verification did not run (no primary answer)"),
    }
    println!("Confidence: {:.2}", result.confidence);
    orch.close().await?;
    Ok(())
}
