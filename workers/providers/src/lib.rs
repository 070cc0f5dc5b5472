//! Model backends for orch workers.
//!
//! - [`chat`]: the [`ChatModel`](chat::ChatModel) trait every language-model
//!   backend implements (OpenAI-compatible, Ollama, the local GGUF model, ...),
//!   with its request/response types and typed [`ProviderError`](chat::ProviderError).
#![forbid(unsafe_code)]

pub mod chat;
