//! The messages between a worker and its model child process: one JSON object
//! per line on the child's stdin (worker → child) and stdout (child → worker).
//!
//! Both ends are the same executable (the worker re-executes itself), so the
//! protocol needs no versioning. Logs do not travel here: the child writes them
//! to stderr as JSON lines and the worker re-emits them through `tracing`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest line either side accepts. A reply holds at most a few thousand
/// generated tokens and a request a prompt that fits the context, so anything
/// longer is a broken peer, not data.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// What reading one line into an empty buffer gave, with at most
/// `MAX_LINE_BYTES + 1` bytes taken: the line, `None` at end of input (nothing
/// read), an error when it is longer than [`MAX_LINE_BYTES`]. Both sides' line
/// readers end here.
pub(crate) fn checked_line(line: Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    Ok(Some(line))
}

/// How the child loads its model; sent once, as the first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// CPU threads for generation and prompt processing.
    pub threads: u32,
    /// Context window in tokens (prompt + generated).
    pub ctx_size: u32,
    /// The child's log filter (`tracing_subscriber::EnvFilter` syntax).
    pub log_filter: String,
}

/// One generation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Unique per worker process; replies and cancels name it.
    pub id: u64,
    /// System prompt (already carrying the schema instructions, if any).
    pub system: String,
    /// User message.
    pub user: String,
    /// JSON Schema the output must follow; the child turns it into a grammar.
    pub schema: Option<serde_json::Value>,
    /// Cap on generated tokens.
    pub max_tokens: u32,
    /// Sampling temperature; `0` means greedy.
    pub temperature: f32,
    /// Sampler seed.
    pub seed: u32,
}

/// Worker → child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToChild {
    /// Load the model (first message only).
    Init(ChildConfig),
    /// Run one job; the child answers with [`FromChild::Done`] or [`FromChild::Failed`].
    Generate(GenerateRequest),
    /// Stop job `id` at the next token; it then ends with [`FailKind::Aborted`].
    /// Ignored when that job is not running.
    Cancel {
        /// The job.
        id: u64,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model ended its turn (end-of-generation token).
    Stop,
    /// The token cap was reached first.
    Length,
}

/// Why a job failed in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// The request cannot be served (prompt too long, schema the grammar cannot express).
    BadRequest,
    /// The worker cancelled it.
    Aborted,
    /// llama.cpp reported an error.
    Internal,
}

/// Child → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromChild {
    /// The model is loaded; jobs may be sent.
    Ready {
        /// Context window actually allocated.
        n_ctx: u32,
        /// Context length the model was trained with.
        n_ctx_train: u32,
        /// Parameter count.
        n_params: u64,
        /// Time spent loading, in milliseconds.
        load_ms: u64,
    },
    /// The model could not be loaded; the child exits after sending this.
    LoadFailed {
        /// What went wrong.
        message: String,
    },
    /// Job `id` finished.
    Done {
        /// The job.
        id: u64,
        /// Generated text (special tokens not rendered).
        text: String,
        /// Tokens in the rendered prompt.
        prompt_tokens: u64,
        /// Tokens generated.
        completion_tokens: u64,
        /// Why generation stopped.
        finish: Finish,
        /// Prompt processing time, milliseconds.
        prompt_ms: u64,
        /// Generation time, milliseconds.
        generate_ms: u64,
    },
    /// Job `id` failed.
    Failed {
        /// The job.
        id: u64,
        /// Why.
        kind: FailKind,
        /// Details.
        message: String,
    },
}

impl FromChild {
    /// The job a reply belongs to (`None` for load-time messages).
    pub fn job_id(&self) -> Option<u64> {
        match self {
            FromChild::Done { id, .. } | FromChild::Failed { id, .. } => Some(*id),
            FromChild::Ready { .. } | FromChild::LoadFailed { .. } => None,
        }
    }
}

/// Serializes `msg` as one line (with the trailing newline).
///
/// # Errors
/// Only if serialization fails, which these plain types never do; surfaced
/// instead of unwrapped so a future field type cannot panic a worker.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_single_lines() {
        let msg = ToChild::Generate(GenerateRequest {
            id: 7,
            system: "line one\nline two".into(),
            user: "hi".into(),
            schema: Some(serde_json::json!({"type": "object"})),
            max_tokens: 10,
            temperature: 0.0,
            seed: 1,
        });
        let line = encode(&msg).expect("encode");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let text = std::str::from_utf8(&line).expect("utf8");
        assert!(text.starts_with(r#"{"type":"generate","id":7,"#), "{text}");
        let back: ToChild = serde_json::from_slice(&line).expect("decode");
        assert_eq!(back, msg);
    }

    #[test]
    fn replies_round_trip_and_name_their_job() {
        let done = FromChild::Done {
            id: 3,
            text: "{}".into(),
            prompt_tokens: 5,
            completion_tokens: 2,
            finish: Finish::Stop,
            prompt_ms: 1,
            generate_ms: 2,
        };
        let back: FromChild =
            serde_json::from_slice(&encode(&done).expect("encode")).expect("decode");
        assert_eq!(back, done);
        assert_eq!(back.job_id(), Some(3));
        let failed: FromChild =
            serde_json::from_str(r#"{"type":"failed","id":4,"kind":"aborted","message":"x"}"#)
                .expect("decode");
        assert_eq!(failed.job_id(), Some(4));
        let ready: FromChild = serde_json::from_str(
            r#"{"type":"ready","n_ctx":1,"n_ctx_train":2,"n_params":3,"load_ms":4}"#,
        )
        .expect("decode");
        assert_eq!(ready.job_id(), None);
    }
}
