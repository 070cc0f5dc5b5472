//! The process-wide shared handle, like the seed's `get_orchestrator()`.

use orch_client::get_orchestrator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let a = get_orchestrator(&url).await?;
    let b = get_orchestrator("ignored: the first call's connection is reused").await?;
    assert!(std::ptr::eq(a, b));
    let stats = b.stats().await?;
    println!("Total Executions: {}", stats.total_executions);
    println!("Success Rate: {:.2}%", stats.success_rate * 100.0);
    println!("Avg Confidence: {:.2}", stats.avg_confidence);
    println!("Avg Execution Time: {:.1}ms", stats.avg_execution_time_ms);
    println!("Conflicts Detected: {}", stats.conflicts_detected);
    println!("Fallbacks Triggered: {}", stats.fallbacks_triggered);
    for (model, count) in &stats.model_usage {
        println!("  {model}: {count}");
    }
    Ok(())
}
