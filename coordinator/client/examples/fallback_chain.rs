//! Fallback chain handling: see which slots failed and which one answered.

use orch_client::{Orchestrator, Role, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let orch = Orchestrator::connect(&url).await?;
    let result = orch
        .execute(&SubmitRequest::new("Plan a product launch"))
        .await?;
    for entry in &result.fallback_chain {
        println!("fallback: {entry}");
    }
    for (role, m) in &result.model_results {
        if !m.success {
            println!("{role} failed: {}", m.error.as_deref().unwrap_or("?"));
        }
    }
    match result.model_results.get(&Role::Reasoner) {
        Some(m) if m.success => println!(
            "answered by reasoner/{} ({} {})",
            m.slot, m.provider, m.model
        ),
        _ => println!("All models failed - fallback to manual execution"),
    }
    orch.close().await?;
    Ok(())
}
