//! Field names and values of the wire messages, for the mutations that
//! rename, retype and inject the words decoders look for. Words only: this
//! crate does not depend on the crates it fuzzes.

/// A worker reply's envelope.
pub const WORK_REPLY: &[&str] = &[
    "provider",
    "model",
    "content",
    "usage",
    "input_tokens",
    "output_tokens",
    "worker_id",
    "elapsed_ms",
];

/// The four role outputs: plan, verdict, vision analysis, web findings.
pub const ROLE_OUTPUTS: &[&str] = &[
    "steps",
    "tool",
    "args",
    "why",
    "answer",
    "confidence",
    "verdict",
    "approved",
    "rejected",
    "uncertain",
    "issues",
    "description",
    "elements",
    "kind",
    "label",
    "errors_detected",
    "suggested_actions",
    "query",
    "results",
    "pages",
    "title",
    "url",
    "snippet",
    "text",
];

/// Error bodies and their codes.
pub const ERRORS: &[&str] = &["error", "code", "message", "invalid_request", "timed_out"];

/// Roles, slots and the seed's tool aliases.
pub const ROLES_AND_SLOTS: &[&str] = &[
    "vision",
    "web",
    "reasoner",
    "verifier",
    "default",
    "kimi_k2",
    "chatgpt",
    "local",
    "web_search",
];

/// The words of all of the above.
pub fn wire() -> Vec<&'static str> {
    [WORK_REPLY, ROLE_OUTPUTS, ERRORS, ROLES_AND_SLOTS].concat()
}
