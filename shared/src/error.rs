//! Error codes and the structured error body every orch reply uses.
//!
//! A failed request always gets `{"error": {"code": "...", "message": "..."}}`
//! and an `Orch-Error: <code>` header, so callers in any language can branch on
//! the header without parsing the body.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable error codes. New codes may be added; unknown ones decode as
/// [`ErrorCode::Unknown`] so old clients keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload could not be decoded at all (broken JSON/MessagePack).
    Malformed,
    /// The payload decoded but is not a valid request (missing/empty field, bad value).
    InvalidRequest,
    /// A `tools` entry names no known tool.
    UnknownTool,
    /// A payload or field is larger than the configured limit.
    PayloadTooLarge,
    /// `Content-Type` is neither JSON nor MessagePack.
    UnsupportedContentType,
    /// The input (e.g. a screenshot) is not usable: not an image, bad dimensions, ...
    InvalidInput,
    /// The work could not finish before its deadline.
    TimedOut,
    /// The remaining budget is too short to even start the work.
    DeadlineTooShort,
    /// At capacity; try again or elsewhere.
    Overloaded,
    /// The process is draining and takes no new work.
    ShuttingDown,
    /// The work was cancelled by the coordinator.
    Cancelled,
    /// The upstream model API rate-limited us (HTTP 429).
    RateLimited,
    /// The upstream account has no quota left.
    QuotaExceeded,
    /// The upstream API refused our credentials (401/403).
    Unauthorized,
    /// The upstream API refused the request as invalid (other 4xx).
    BadRequest,
    /// The upstream API failed (5xx, broken stream, unexpected body).
    Upstream,
    /// The upstream API could not be reached (connect error, DNS, TLS).
    Unavailable,
    /// The model answered, but not with the required structure.
    InvalidOutput,
    /// The worker has no usable backend (no API key, no reachable service); the
    /// message says, in words, what would enable it. Sent at once, never retried.
    NotConfigured,
    /// No result is stored for that task id.
    NotFound,
    /// The task is known but has not finished yet.
    Pending,
    /// A bug or an unexpected failure on our side.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownTool => "unknown_tool",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedContentType => "unsupported_content_type",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::DeadlineTooShort => "deadline_too_short",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Upstream => "upstream",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidOutput => "invalid_output",
            ErrorCode::NotConfigured => "not_configured",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Pending => "pending",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Parses a wire name; anything unrecognised is [`ErrorCode::Unknown`].
    pub fn parse(s: &str) -> ErrorCode {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .unwrap_or(ErrorCode::Unknown)
    }

    /// An HTTP-like status number, used for the NATS micro `Nats-Service-Error-Code` header.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::Malformed
            | ErrorCode::InvalidRequest
            | ErrorCode::UnknownTool
            | ErrorCode::InvalidInput
            | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::QuotaExceeded => 402,
            ErrorCode::NotFound => 404,
            ErrorCode::TimedOut | ErrorCode::DeadlineTooShort => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedContentType => 415,
            ErrorCode::InvalidOutput => 422,
            ErrorCode::Pending => 425,
            ErrorCode::RateLimited => 429,
            ErrorCode::Cancelled => 499,
            ErrorCode::Upstream => 502,
            ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::Unavailable
            | ErrorCode::NotConfigured => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }

    /// Whether the same request may succeed if sent again to another copy of the
    /// same slot (the failure was about that copy, not about the request).
    pub const fn is_retryable_elsewhere(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::ShuttingDown)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inner object of an error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// An error reply: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error.code, self.error.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_is_tolerated() {
        for code in [
            ErrorCode::Malformed,
            ErrorCode::UnknownTool,
            ErrorCode::QuotaExceeded,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
            let j = serde_json::to_string(&code).unwrap();
            assert_eq!(j, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(ErrorCode::parse("from_the_future"), ErrorCode::Unknown);
    }

    #[test]
    fn body_shape() {
        let b = ErrorBody::new(ErrorCode::InvalidRequest, "missing field `task`");
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({"error": {"code": "invalid_request", "message": "missing field `task`"}})
        );
    }
}
