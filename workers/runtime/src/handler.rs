//! What a role implements: turn a [`WorkRequest`] into the role's output.

use std::time::Instant;

use async_trait::async_trait;
use orch_shared::Role;
use orch_shared::wire::{Usage, WorkRequest};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::WorkError;

/// Which backend a worker uses, for discovery (`$SRV.INFO` metadata) and results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Provider kind: `openai`, `ollama`, `local`, `searxng`, `sim`, ...
    pub provider: String,
    /// Model id (or search backend name).
    pub model: String,
}

/// A successful unit of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Provider kind that produced it.
    pub provider: String,
    /// Model id that produced it (may differ from the configured one, e.g. an alias resolved upstream).
    pub model: String,
    /// The role output, already validated against the role's schema.
    pub content: Value,
    /// Token counts, when known.
    pub usage: Option<Usage>,
}

/// Per-job context handed to a handler.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job must be finished by then; the serve loop enforces it too.
    pub deadline: Instant,
    /// Cancelled when the coordinator cancels the job or the drain deadline passes.
    pub cancel: CancellationToken,
}

impl JobContext {
    /// Time left before the deadline.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// One role's work. Implementations must not panic on any input: every
/// problem is a [`WorkError`].
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The role served.
    fn role(&self) -> Role;

    /// The backend, for discovery.
    fn info(&self) -> ProviderInfo;

    /// Does the work. The future is dropped when the deadline passes or the job is
    /// cancelled, which aborts any in-flight HTTP call.
    ///
    /// # Errors
    /// Any failure, typed so the coordinator can decide to fall back.
    async fn handle(&self, request: WorkRequest, ctx: JobContext) -> Result<Output, WorkError>;
}

/// A slot served without a backend: every job fails at once with
/// `not_configured` and the reason given (what would enable the role).
#[derive(Debug, Clone)]
pub struct NotConfigured {
    role: Role,
    reason: String,
}

impl NotConfigured {
    /// A handler for `role` that refuses every job with `reason`.
    pub fn new(role: Role, reason: impl Into<String>) -> NotConfigured {
        NotConfigured {
            role,
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl Handler for NotConfigured {
    fn role(&self) -> Role {
        self.role
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "not_configured".into(),
            model: "none".into(),
        }
    }

    async fn handle(&self, _request: WorkRequest, _ctx: JobContext) -> Result<Output, WorkError> {
        Err(WorkError::new(
            orch_shared::ErrorCode::NotConfigured,
            self.reason.clone(),
        ))
    }
}
