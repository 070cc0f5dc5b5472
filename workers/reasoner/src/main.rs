//! `orch-reasoner`: Planning worker (Kimi K2, OpenAI, local models) for one fallback slot.
//!
//! The worker itself is [`orch_llama::worker`], shared with the other model worker.

use std::process::ExitCode;

use orch_llama::worker::{ModelWorker, run};
use orch_shared::Role;

const WORKER: ModelWorker = ModelWorker {
    name: "orch-reasoner",
    role: Role::Reasoner,
    about: "Planning worker (Kimi K2, OpenAI, local models) for one fallback slot",
    hosted_slot: "kimi_k2",
};

fn main() -> ExitCode {
    // The local model runs in a child process: this same binary, re-executed.
    // In the child this call serves the model and never returns.
    orch_llama::maybe_run_child();
    serve()
}

#[global_allocator]
static ALLOC: orch_shared::Allocator = orch_shared::Allocator;

#[tokio::main]
async fn serve() -> ExitCode {
    run(WORKER).await
}
