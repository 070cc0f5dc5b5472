//! `orch-verifier`: Verification worker: a second model's verdict on the primary answer.
//!
//! The worker itself is [`orch_llama::worker`], shared with the other model worker.

use std::process::ExitCode;

use orch_llama::worker::{ModelWorker, run};
use orch_shared::Role;

const WORKER: ModelWorker = ModelWorker {
    name: "orch-verifier",
    role: Role::Verifier,
    about: "Verification worker: a second model's verdict on the primary answer",
    hosted_slot: "chatgpt",
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
