//! The typed error a handler returns; the serve loop turns it into an error
//! reply the coordinator can match on.

use orch_shared::ErrorCode;

/// A failed unit of work: a code the coordinator branches on, and a message for humans.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WorkError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation (never contains secrets).
    pub message: String,
}

impl WorkError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WorkError {
        WorkError {
            code,
            message: message.into(),
        }
    }

    /// The request could not be used.
    pub fn invalid_request(message: impl Into<String>) -> WorkError {
        WorkError::new(ErrorCode::InvalidRequest, message)
    }

    /// The input (image, query, ...) is not usable.
    pub fn invalid_input(message: impl Into<String>) -> WorkError {
        WorkError::new(ErrorCode::InvalidInput, message)
    }

    /// The deadline passed.
    pub fn timed_out(message: impl Into<String>) -> WorkError {
        WorkError::new(ErrorCode::TimedOut, message)
    }

    /// The upstream service failed.
    pub fn upstream(message: impl Into<String>) -> WorkError {
        WorkError::new(ErrorCode::Upstream, message)
    }

    /// Something on our side failed.
    pub fn internal(message: impl Into<String>) -> WorkError {
        WorkError::new(ErrorCode::Internal, message)
    }
}
