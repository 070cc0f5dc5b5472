//! Conflict resolution: print the conflicts synthesis found and flag low confidence.

use orch_client::{Orchestrator, SubmitRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let orch = Orchestrator::connect(&url).await?;
    let request = SubmitRequest {
        context: Some("Previous attempts failed due to CAPTCHA".into()),
        web_search_query: Some("CAPTCHA bypass techniques".into()),
        available_tools: vec!["playwright_navigate".into()],
        verify: Some(true),
        ..SubmitRequest::new("Extract contacts")
    };
    let result = orch.execute(&request).await?;
    if result.conflicts.is_empty() {
        println!("No conflicts; confidence {:.2}", result.confidence);
    } else {
        println!("Conflicts detected:");
        for c in &result.conflicts {
            println!("  - {c}");
        }
        if result.confidence < 0.5 {
            println!(
                "Low confidence ({:.2}) - manual review recommended",
                result.confidence
            );
        }
    }
    orch.close().await?;
    Ok(())
}
