//! Parallel context gathering: vision and web run at the same time in phase 1.

use orch_client::{Orchestrator, Role, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: parallel_context <screenshot.png>"))?;
    let orch = Orchestrator::connect(&url).await?;
    let request = SubmitRequest {
        tools: Some(vec!["vision".into(), "web_search".into(), "kimi_k2".into()]),
        screenshot: Some(std::fs::read(path)?.into()),
        web_search_query: Some("python developer communities".into()),
        ..SubmitRequest::new("Find Python developers")
    };
    let result = orch.execute(&request).await?;
    for role in [Role::Vision, Role::Web] {
        if let Some(m) = result.model_results.get(&role) {
            println!(
                "{role:<6} {:>8.1} .. {:>8.1} ms  success={}",
                m.started_ms, m.finished_ms, m.success
            );
        }
    }
    println!("total {:.1} ms", result.execution_time_ms);
    orch.close().await?;
    Ok(())
}
