//! Vision analysis of a screenshot: `cargo run -p orch-client --example vision -- page.png`.

use orch_client::{Orchestrator, Role, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: vision <screenshot.png>"))?;
    let screenshot = std::fs::read(&path)?;
    // MessagePack sends the screenshot as raw bytes instead of base64.
    let orch = Orchestrator::connect(&url).await?.with_msgpack();
    let request = SubmitRequest {
        tools: Some(vec!["vision".into(), "kimi_k2".into()]),
        screenshot: Some(screenshot.into()),
        available_tools: vec!["playwright_click".into(), "playwright_fill".into()],
        ..SubmitRequest::new("Analyze current page state")
    };
    let result = orch.execute(&request).await?;
    if let Some(vision) = result.model_results.get(&Role::Vision) {
        println!(
            "Visual Analysis: {}",
            serde_json::to_string_pretty(&vision.content)?
        );
    }
    orch.close().await?;
    Ok(())
}
