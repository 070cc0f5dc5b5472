//! `orch-llama-child`: a model child process and nothing else, for callers
//! whose own `main` cannot call `orch_llama::maybe_run_child` (the cargo test
//! harness owns the test binaries' `main`). Workers re-execute themselves instead.
//!
//! It speaks the child protocol on stdin/stdout only when `ORCH_LLAMA_CHILD`
//! is set, as `LocalModel` sets it.

use std::process::ExitCode;

fn main() -> ExitCode {
    orch_llama::maybe_run_child();
    eprintln!(
        "orch-llama-child: runs a local model for an orch worker; it is started by the worker \
         (LocalModel::with_child_command) with {} set, not by hand",
        orch_llama::ENV_CHILD
    );
    ExitCode::from(64)
}
