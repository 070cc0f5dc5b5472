//! Ollama's native chat API (`POST {base_url}/api/chat`): images as raw
//! base64 in `messages[].images`, the JSON Schema in `format`, sampling
//! settings in `options`, and either one JSON reply (`stream: false`) or
//! newline-delimited JSON objects ending with one that says `"done": true`.
//!
//! The native API rather than Ollama's `/v1` because it takes a schema in
//! `format` on every version that does structured output, and reports token
//! counts (`prompt_eval_count`, `eval_count`) on every reply.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orch_shared::wire::Usage;
use orch_worker::{JobContext, ProviderInfo};
use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{ChatModel, ChatRequest, ChatResponse, ProviderError};
use crate::http::{self, Failure};
use crate::openai::{StructuredOutput, schema_instructions};
use crate::retry::{self, RetryPolicy};
use crate::stream::{LineSplitter, MAX_TEXT_BYTES, StallTimer, read_frames};

/// Where `ollama serve` listens by default.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";
/// A small vision model that runs on a laptop CPU and reads UI text well.
pub const DEFAULT_VISION_MODEL: &str = "minicpm-v";
/// Streamed replies: the first token must come within this. Generous because
/// the first request after idle loads the model from disk first.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Streamed replies: the longest silence between two lines.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Provider kind reported in results and discovery.
pub const PROVIDER: &str = "ollama";

/// Everything an [`OllamaChat`] needs.
#[derive(Debug, Clone)]
pub struct OllamaConfig {
    /// Server root, e.g. `http://127.0.0.1:11434` (`/api/chat` is appended).
    pub base_url: Url,
    /// Model name, e.g. `minicpm-v`, `llava:13b`.
    pub model: String,
    /// Stream the reply (NDJSON).
    pub stream: bool,
    /// `JsonSchema`: the schema in `format`; `JsonObject`: `format: "json"` and
    /// the schema in the prompt (Ollama before 0.5).
    pub structured_output: StructuredOutput,
    /// How long Ollama keeps the model loaded after the request (`5m`, `-1`, ...).
    pub keep_alive: Option<String>,
    /// Context window (`options.num_ctx`); Ollama's default is small for screenshots.
    pub num_ctx: Option<u32>,
    /// Streams: limit for the first token.
    pub first_token_timeout: Duration,
    /// Streams: limit between lines.
    pub chunk_timeout: Duration,
    /// Retries of 429/5xx/connect errors.
    pub retry: RetryPolicy,
    /// TCP connect limit.
    pub connect_timeout: Duration,
}

impl OllamaConfig {
    /// A configuration with every default.
    pub fn new(base_url: Url, model: impl Into<String>) -> OllamaConfig {
        OllamaConfig {
            base_url,
            model: model.into(),
            stream: false,
            structured_output: StructuredOutput::JsonSchema,
            keep_alive: None,
            num_ctx: None,
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            retry: RetryPolicy::default(),
            connect_timeout: http::DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// An Ollama chat backend.
#[derive(Debug)]
pub struct OllamaChat {
    cfg: OllamaConfig,
    endpoint: Url,
    client: reqwest::Client,
}

impl OllamaChat {
    /// Builds the backend (and its connection pool).
    ///
    /// # Errors
    /// A base URL that cannot take a path, or an HTTP client setup failure.
    pub fn new(cfg: OllamaConfig) -> Result<OllamaChat, ProviderError> {
        let endpoint = http::endpoint(&cfg.base_url, "api/chat")?;
        Ok(OllamaChat {
            client: http::client(cfg.connect_timeout)?,
            endpoint,
            cfg,
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The JSON body for `req`.
    pub fn body(&self, req: &ChatRequest) -> Value {
        let mut system = req.system.clone();
        let mut body = json!({ "model": self.cfg.model, "stream": self.cfg.stream });
        if let Some(schema) = &req.schema {
            match self.cfg.structured_output {
                StructuredOutput::JsonSchema => body["format"] = schema.schema.clone(),
                StructuredOutput::JsonObject => {
                    body["format"] = json!("json");
                    system.push_str(&schema_instructions(&schema.schema));
                }
            }
        }
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(json!({ "role": "system", "content": system }));
        }
        let mut user = json!({ "role": "user", "content": req.user });
        if !req.images.is_empty() {
            user["images"] = req
                .images
                .iter()
                .map(|i| Value::String(STANDARD.encode(&i.data)))
                .collect();
        }
        messages.push(user);
        body["messages"] = Value::Array(messages);
        let mut options = serde_json::Map::new();
        if let Some(t) = req.temperature {
            options.insert("temperature".into(), json!(t));
        }
        if let Some(n) = req.max_tokens {
            options.insert("num_predict".into(), json!(n));
        }
        if let Some(n) = self.cfg.num_ctx {
            options.insert("num_ctx".into(), json!(n));
        }
        if !options.is_empty() {
            body["options"] = Value::Object(options);
        }
        if let Some(k) = &self.cfg.keep_alive {
            body["keep_alive"] = json!(k);
        }
        body
    }

    async fn exchange(&self, body: &Value) -> Result<ChatResponse, Failure> {
        let rb = self
            .client
            .post(self.endpoint.clone())
            .header(ACCEPT, "application/json, application/x-ndjson")
            .headers(trace_headers())
            .json(body);
        let timer = StallTimer::start(self.cfg.first_token_timeout, self.cfg.chunk_timeout);
        let first_token = self.cfg.stream.then_some(self.cfg.first_token_timeout);
        let resp = http::send_checked(rb, first_token, &|s| s.to_string()).await?;
        let r = if self.cfg.stream || http::content_type_is(&resp, "application/x-ndjson") {
            self.read_stream(resp, timer).await
        } else {
            self.read_json(resp).await
        };
        r.map_err(Failure::fatal)
    }

    async fn read_json(&self, mut resp: reqwest::Response) -> Result<ChatResponse, ProviderError> {
        let status = resp.status().as_u16();
        let bytes = http::read_bounded(&mut resp, http::MAX_BODY_BYTES).await?;
        parse_reply(status, &bytes, &self.cfg.model)
    }

    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        mut timer: StallTimer,
    ) -> Result<ChatResponse, ProviderError> {
        let mut answer = StreamedReply::default();
        read_frames::<LineSplitter>(&mut resp, &mut timer, |line| answer.push(line)).await?;
        answer.finish(&self.cfg.model)
    }
}

/// Parses a whole (non-streamed) `/api/chat` reply answered with `status`;
/// `default_model` names the model when the reply does not.
///
/// # Errors
/// `Upstream` for a body that is not a finished reply or reports an error.
pub fn parse_reply(
    status: u16,
    bytes: &[u8],
    default_model: &str,
) -> Result<ChatResponse, ProviderError> {
    let line: Line = serde_json::from_slice(bytes).map_err(|e| ProviderError::Upstream {
        status: Some(status),
        message: format!(
            "the response body is not a valid Ollama reply ({}): {}",
            http::bounded(&e.to_string()),
            http::bounded(&String::from_utf8_lossy(bytes))
        ),
    })?;
    if let Some(err) = line.error {
        return Err(ProviderError::Upstream {
            status: Some(status),
            message: http::bounded(&err),
        });
    }
    if !line.done {
        return Err(ProviderError::Upstream {
            status: Some(status),
            message: "the reply is not marked done".into(),
        });
    }
    Ok(ChatResponse {
        text: line.message.map(|m| m.content).unwrap_or_default(),
        model: line
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| default_model.to_string()),
        usage: Some(Usage {
            input_tokens: line.prompt_eval_count,
            output_tokens: line.eval_count,
        }),
    })
}

/// A streamed `/api/chat` reply being assembled from its NDJSON lines.
#[derive(Debug, Default)]
pub struct StreamedReply {
    text: String,
    model: Option<String>,
    usage: Option<Usage>,
}

impl StreamedReply {
    /// Whether the final `"done": true` line arrived.
    pub fn is_done(&self) -> bool {
        self.usage.is_some()
    }

    /// Takes one non-blank line; `Ok(true)` once it is the final one.
    ///
    /// # Errors
    /// `Upstream` for a malformed line, an error reported mid-stream or an
    /// answer longer than [`MAX_TEXT_BYTES`].
    pub fn push(&mut self, raw: &str) -> Result<bool, ProviderError> {
        let line: Line = serde_json::from_str(raw).map_err(|e| {
            ProviderError::stream(format!(
                "malformed stream line ({}): {}",
                http::bounded(&e.to_string()),
                http::bounded(raw)
            ))
        })?;
        if let Some(err) = line.error {
            return Err(ProviderError::stream(format!(
                "the server reported an error mid-stream: {}",
                http::bounded(&err)
            )));
        }
        if self.model.is_none() {
            self.model = line.model.filter(|m| !m.is_empty());
        }
        if let Some(m) = line.message {
            self.text.push_str(&m.content);
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(ProviderError::stream(format!(
                "the streamed answer exceeds {MAX_TEXT_BYTES} bytes"
            )));
        }
        if line.done {
            self.usage = Some(Usage {
                input_tokens: line.prompt_eval_count,
                output_tokens: line.eval_count,
            });
        }
        Ok(line.done)
    }

    /// The answer, once the stream has ended.
    ///
    /// # Errors
    /// `Upstream` when the final line never came.
    pub fn finish(self, default_model: &str) -> Result<ChatResponse, ProviderError> {
        let Some(usage) = self.usage else {
            return Err(ProviderError::stream(format!(
                "the stream ended before the final \"done\": true line ({} bytes of content received)",
                self.text.len()
            )));
        };
        Ok(ChatResponse {
            text: self.text,
            model: self.model.unwrap_or_else(|| default_model.to_string()),
            usage: Some(usage),
        })
    }
}

#[async_trait]
impl ChatModel for OllamaChat {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: PROVIDER.into(),
            model: self.cfg.model.clone(),
        }
    }

    fn gen_ai_provider(&self) -> String {
        PROVIDER.into()
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        ctx: &JobContext,
    ) -> Result<ChatResponse, ProviderError> {
        let body = self.body(request);
        let call = async {
            retry::run(&self.cfg.retry, ctx.deadline, "ollama chat", |_| {
                self.exchange(&body)
            })
            .await
            .map_err(|f| f.error)
        };
        http::under_deadline(ctx, "ollama chat", call).await
    }
}

/// One reply object (the whole reply, or one NDJSON line).
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
}

/// W3C trace context of the current span, for the model server.
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    orch_shared::trace::inject_http(&mut h);
    h
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::chat::{ImageInput, OutputSchema};

    fn request() -> ChatRequest {
        ChatRequest {
            system: "sys".into(),
            user: "what is on screen?".into(),
            images: vec![ImageInput {
                mime: "image/png",
                data: Bytes::from_static(b"\x89PNG"),
            }],
            schema: Some(OutputSchema {
                name: "vision_analysis".into(),
                schema: json!({"type": "object"}),
            }),
            max_tokens: Some(512),
            temperature: Some(0.1),
        }
    }

    #[test]
    fn body_uses_raw_base64_images_format_and_options() {
        let mut cfg =
            OllamaConfig::new(Url::parse(DEFAULT_BASE_URL).unwrap(), DEFAULT_VISION_MODEL);
        cfg.keep_alive = Some("10m".into());
        let c = OllamaChat::new(cfg).unwrap();
        assert_eq!(c.endpoint().as_str(), "http://127.0.0.1:11434/api/chat");
        let b = c.body(&request());
        assert_eq!(b["model"], "minicpm-v");
        assert_eq!(b["stream"], false);
        assert_eq!(b["format"], json!({"type": "object"}));
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(b["messages"][1]["images"], json!(["iVBORw=="]));
        assert_eq!(b["options"]["num_predict"], 512);
        assert!((b["options"]["temperature"].as_f64().unwrap() - 0.1).abs() < 1e-6);
        assert_eq!(b["keep_alive"], "10m");
    }

    #[test]
    fn json_mode_for_old_servers() {
        let mut cfg = OllamaConfig::new(Url::parse(DEFAULT_BASE_URL).unwrap(), "llava");
        cfg.structured_output = StructuredOutput::JsonObject;
        cfg.stream = true;
        let b = OllamaChat::new(cfg).unwrap().body(&request());
        assert_eq!(b["format"], "json");
        assert_eq!(b["stream"], true);
        assert!(
            b["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("JSON Schema")
        );
    }

    #[test]
    fn malformed_replies_give_bounded_errors() {
        // serde quotes the offending value; a megabyte of text where an object
        // belongs must not become a megabyte of error message.
        let long = "x".repeat(100_000);
        let body = json!({"message": long.clone(), "done": true}).to_string();
        let e = parse_reply(200, body.as_bytes(), "m").unwrap_err();
        assert!(
            e.to_string().len() < 4 * http::MAX_MESSAGE_CHARS,
            "{}",
            e.to_string().len()
        );
        let e = StreamedReply::default().push(&body).unwrap_err();
        assert!(
            e.to_string().len() < 4 * http::MAX_MESSAGE_CHARS,
            "{}",
            e.to_string().len()
        );
    }
}
