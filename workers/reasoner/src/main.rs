//! `orch-reasoner`: Planning worker (Kimi K2, OpenAI, local models) for one fallback slot.
//!
//! The worker itself is [`orch_llama::worker`], shared with the other model worker.

orch_llama::model_worker_main!(orch_llama::worker::ModelWorker {
    name: "orch-reasoner",
    role: orch_shared::Role::Reasoner,
    about: "Planning worker (Kimi K2, OpenAI, local models) for one fallback slot",
    hosted_slot: "kimi_k2",
});
