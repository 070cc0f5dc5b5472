//! Model backends for orch workers, and the role handlers that use them.
//!
//! - [`chat`]: the [`ChatModel`](chat::ChatModel) trait every language-model
//!   backend implements (OpenAI-compatible, Ollama, the local GGUF model, ...),
//!   with its request/response types and typed [`ProviderError`](chat::ProviderError).
//! - [`openai`]: OpenAI-compatible Chat Completions (Kimi K2 on Moonshot,
//!   OpenAI, OpenRouter, vLLM, Ollama's `/v1`).
//! - [`ollama`]: Ollama's native `/api/chat`.
//! - [`roles`]: [`LlmHandler`](roles::LlmHandler), the vision, reasoner and
//!   verifier roles over any `ChatModel`: prompts, schemas, validation, repair.
//! - [`cli`]: the providers' flags and handler construction for the worker binaries.
//! - Plumbing: [`http`] (client, error mapping), [`retry`] (deadline-aware
//!   retries), [`stream`] (SSE/NDJSON with stall timeouts), [`image`]
//!   (screenshot validation); API keys are `orch_shared::secret::ApiKey`.
#![forbid(unsafe_code)]

pub mod chat;
pub mod cli;
pub mod http;
pub mod image;
pub mod ollama;
pub mod openai;
pub mod retry;
pub mod roles;
pub mod stream;

#[cfg(test)]
mod fuzz;
