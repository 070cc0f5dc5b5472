//! `orch-verifier`: Verification worker: a second model's verdict on the primary answer.
//!
//! The worker itself is [`orch_llama::worker`], shared with the other model worker.

orch_llama::model_worker_main!(orch_llama::worker::ModelWorker {
    name: "orch-verifier",
    role: orch_shared::Role::Verifier,
    about: "Verification worker: a second model's verdict on the primary answer",
    hosted_slot: "chatgpt",
});
