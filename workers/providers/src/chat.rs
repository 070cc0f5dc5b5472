//! The interface between a role (vision, reasoner, verifier) and a language
//! model backend. A role builds a [`ChatRequest`] (prompt, images, the JSON
//! Schema its answer must follow); a backend sends it and returns text.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use orch_shared::ErrorCode;
use orch_shared::wire::Usage;
use orch_worker::{JobContext, ProviderInfo, WorkError};

/// An image attached to a request (already validated: PNG or JPEG).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    /// `image/png` or `image/jpeg`.
    pub mime: &'static str,
    /// The encoded image.
    pub data: Bytes,
}

/// The JSON Schema the answer must follow (structured output).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    /// Schema name (`vision_analysis`, `plan`, `verdict`): `[A-Za-z0-9_-]`, as OpenAI requires.
    pub name: String,
    /// The schema, in the strict subset OpenAI's `json_schema` accepts
    /// (every property required, `additionalProperties: false`).
    pub schema: serde_json::Value,
}

/// One chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// System prompt.
    pub system: String,
    /// User message text.
    pub user: String,
    /// Images sent with the user message.
    pub images: Vec<ImageInput>,
    /// Structured output, when the answer must be JSON of this shape.
    pub schema: Option<OutputSchema>,
    /// Cap on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (backends with a quirk may drop it).
    pub temperature: Option<f32>,
}

/// A backend's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The generated text (JSON text when a schema was given).
    pub text: String,
    /// The model that answered, as the backend reports it.
    pub model: String,
    /// Token counts, when reported.
    pub usage: Option<Usage>,
}

/// Why a backend call failed. The coordinator falls back on every one of them;
/// the code tells operators why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 429 (after retries that fit the deadline).
    #[error("rate limited: {message}")]
    RateLimited {
        /// What the server said.
        message: String,
        /// The server's requested wait, if any.
        retry_after: Option<Duration>,
    },
    /// The account has no quota (`insufficient_quota`); retrying will not help.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// HTTP 401/403.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Another HTTP 4xx: the request itself was refused.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// HTTP 5xx, a broken or truncated stream, or an unexpected body.
    #[error("upstream error{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Upstream {
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// Details.
        message: String,
    },
    /// The server could not be reached (connect, DNS, TLS).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed (including a stalled stream).
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The model answered, but not with valid output (after one repair attempt).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ProviderError {
    /// A broken or malformed reply stream (no HTTP status to report).
    pub fn stream(message: String) -> ProviderError {
        ProviderError::Upstream {
            status: None,
            message,
        }
    }

    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProviderError::RateLimited { .. } => ErrorCode::RateLimited,
            ProviderError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            ProviderError::Unauthorized(_) => ErrorCode::Unauthorized,
            ProviderError::BadRequest(_) => ErrorCode::BadRequest,
            ProviderError::Upstream { .. } => ErrorCode::Upstream,
            ProviderError::Unavailable(_) => ErrorCode::Unavailable,
            ProviderError::TimedOut(_) => ErrorCode::TimedOut,
            ProviderError::InvalidOutput(_) => ErrorCode::InvalidOutput,
            ProviderError::Cancelled => ErrorCode::Cancelled,
        }
    }
}

impl ProviderError {
    /// The explanation without the leading code word, for places that show the
    /// code separately (a [`WorkError`] is displayed as `code: message`, so
    /// this avoids `unauthorized: unauthorized: ...`).
    pub fn detail(&self) -> String {
        match self {
            ProviderError::RateLimited {
                message,
                retry_after,
            } => match retry_after {
                Some(d) => format!("{message} (server asked to wait {} ms)", d.as_millis()),
                None => message.clone(),
            },
            ProviderError::QuotaExceeded(m)
            | ProviderError::Unauthorized(m)
            | ProviderError::BadRequest(m)
            | ProviderError::Unavailable(m)
            | ProviderError::TimedOut(m)
            | ProviderError::InvalidOutput(m) => m.clone(),
            ProviderError::Upstream { status, message } => match status {
                Some(s) => format!("HTTP {s}: {message}"),
                None => message.clone(),
            },
            ProviderError::Cancelled => "the job was cancelled".into(),
        }
    }
}

impl From<ProviderError> for WorkError {
    fn from(e: ProviderError) -> WorkError {
        WorkError::new(e.code(), e.detail())
    }
}

/// A language-model backend. Implementations must honour `ctx.deadline`
/// (never wait past it; a retry whose wait would overrun it fails now) and
/// stop promptly when `ctx.cancel` fires. They never log or return secrets.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Provider kind and configured model, for discovery and results.
    fn info(&self) -> ProviderInfo;

    /// The OpenTelemetry `gen_ai.provider.name` of the service behind this
    /// backend (`openai`, `moonshot_ai`, `openrouter`, `ollama`, ...). Defaults
    /// to the provider kind.
    fn gen_ai_provider(&self) -> String {
        self.info().provider
    }

    /// Sends one request.
    ///
    /// # Errors
    /// Typed failures: see [`ProviderError`].
    async fn chat(
        &self,
        request: &ChatRequest,
        ctx: &JobContext,
    ) -> Result<ChatResponse, ProviderError>;
}
