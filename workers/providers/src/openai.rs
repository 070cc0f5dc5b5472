//! OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`):
//! one implementation for Moonshot's Kimi K2, OpenAI, OpenRouter, vLLM and
//! Ollama's `/v1`.
//!
//! What differs between those services is configuration, not code: the base
//! URL, the model id, the key, the structured-output mode (`json_schema`
//! strict, or `json_object` with the schema in the prompt where a server lacks
//! it — and an automatic switch, once, when a server says so with a 400) and
//! a few [`Quirks`]. Retries follow [`crate::retry`]; streamed replies follow
//! the rules of [`crate::stream`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orch_shared::wire::Usage;
use orch_worker::{JobContext, ProviderInfo};
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{ChatModel, ChatRequest, ChatResponse, ProviderError};
use crate::http::{self, ErrorInfo, Failure};
use crate::retry::{self, RetryPolicy};
use crate::stream::{MAX_TEXT_BYTES, SseDecoder, StallTimer, read_frames};
use orch_shared::secret::ApiKey;

/// OpenAI's own endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// A cheap model with strict structured outputs and vision.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// Streamed replies: the first token must come within this. Thinking models
/// (Kimi K2.6) stream their reasoning, so a long silence really is a stall.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Streamed replies: the longest silence between two chunks.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(15);
/// Provider kind reported in results and discovery.
pub const PROVIDER: &str = "openai";

/// How the answer's JSON shape is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StructuredOutput {
    /// `response_format: {type: json_schema, json_schema: {name, strict: true, schema}}`.
    JsonSchema,
    /// `response_format: {type: json_object}` and the schema in the system prompt,
    /// for servers without `json_schema`.
    JsonObject,
}

/// Which request field carries the token cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaxTokensField {
    /// `max_tokens`: understood by every compatible server.
    MaxTokens,
    /// `max_completion_tokens`: required by OpenAI's reasoning models.
    MaxCompletionTokens,
}

/// Per-provider deviations from the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// Never send `temperature` (models that reject any value but their default).
    pub no_temperature: bool,
    /// The token-cap field.
    pub max_tokens_field: MaxTokensField,
    /// Remove `maxLength`/`minLength` from schemas (OpenAI's strict mode refuses them).
    pub drop_length_limits: bool,
}

impl Quirks {
    /// Known quirks of the service at `base_url`.
    pub fn for_url(base_url: &Url) -> Quirks {
        let host = base_url.host_str().unwrap_or("").to_ascii_lowercase();
        Quirks {
            // Kimi K2 thinking models run with fixed sampling settings; omitting
            // temperature is always accepted.
            no_temperature: host.ends_with("moonshot.ai") || host.ends_with("moonshot.cn"),
            max_tokens_field: MaxTokensField::MaxTokens,
            drop_length_limits: host == "api.openai.com",
        }
    }
}

/// The OpenTelemetry `gen_ai.provider.name` for a base URL.
pub fn gen_ai_provider_for(base_url: &Url) -> &'static str {
    let host = base_url.host_str().unwrap_or("").to_ascii_lowercase();
    if host.contains("moonshot") {
        "moonshot_ai"
    } else if host.contains("openrouter") {
        "openrouter"
    } else if base_url.port() == Some(11434) || host.contains("ollama") {
        "ollama"
    } else {
        "openai"
    }
}

/// Everything an [`OpenAiChat`] needs.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// API root, e.g. `https://api.moonshot.ai/v1` (`/chat/completions` is appended).
    pub base_url: Url,
    /// Model id, e.g. `kimi-k2.6`, `gpt-4o-mini`, `moonshotai/kimi-k2`.
    pub model: String,
    /// Sent as `Authorization: Bearer`; `None` for keyless local servers.
    pub api_key: Option<ApiKey>,
    /// Stream the reply (SSE).
    pub stream: bool,
    /// Structured-output mode to start with.
    pub structured_output: StructuredOutput,
    /// Provider deviations.
    pub quirks: Quirks,
    /// Streams: limit for the first token.
    pub first_token_timeout: Duration,
    /// Streams: limit between chunks.
    pub chunk_timeout: Duration,
    /// Retries of 429/5xx/connect errors.
    pub retry: RetryPolicy,
    /// TCP + TLS connect limit.
    pub connect_timeout: Duration,
}

impl OpenAiConfig {
    /// A configuration with every default and the quirks known for `base_url`.
    pub fn new(base_url: Url, model: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            quirks: Quirks::for_url(&base_url),
            base_url,
            model: model.into(),
            api_key: None,
            stream: false,
            structured_output: StructuredOutput::JsonSchema,
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            retry: RetryPolicy::default(),
            connect_timeout: http::DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// An OpenAI-compatible chat backend.
#[derive(Debug)]
pub struct OpenAiChat {
    cfg: OpenAiConfig,
    endpoint: Url,
    client: reqwest::Client,
    /// Set once the server refused `json_schema`; later calls use `json_object`.
    downgraded: AtomicBool,
    gen_ai: &'static str,
}

impl OpenAiChat {
    /// Builds the backend (and its connection pool).
    ///
    /// # Errors
    /// A base URL that cannot take a path, or a TLS setup failure.
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAiChat, ProviderError> {
        let endpoint = http::endpoint(&cfg.base_url, "chat/completions")?;
        Ok(OpenAiChat {
            client: http::client(cfg.connect_timeout)?,
            gen_ai: gen_ai_provider_for(&cfg.base_url),
            endpoint,
            downgraded: AtomicBool::new(false),
            cfg,
        })
    }

    /// The structured-output mode the next request will use.
    pub fn structured_output(&self) -> StructuredOutput {
        if self.downgraded.load(Ordering::Relaxed) {
            StructuredOutput::JsonObject
        } else {
            self.cfg.structured_output
        }
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The JSON body for `req` in `mode`.
    pub fn body(&self, req: &ChatRequest, mode: StructuredOutput) -> Value {
        let mut system = req.system.clone();
        let mut body = json!({ "model": self.cfg.model });
        if let Some(schema) = &req.schema {
            let mut s = schema.schema.clone();
            if self.cfg.quirks.drop_length_limits {
                drop_length_limits(&mut s);
            }
            match mode {
                StructuredOutput::JsonSchema => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": { "name": schema.name, "strict": true, "schema": s },
                    });
                }
                StructuredOutput::JsonObject => {
                    body["response_format"] = json!({ "type": "json_object" });
                    system.push_str(&schema_instructions(&schema.schema));
                }
            }
        }
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(json!({ "role": "system", "content": system }));
        }
        let user = if req.images.is_empty() {
            json!(req.user)
        } else {
            let mut parts = vec![json!({ "type": "text", "text": req.user })];
            for img in &req.images {
                parts.push(json!({
                    "type": "image_url",
                    "image_url": {
                        "url": format!("data:{};base64,{}", img.mime, STANDARD.encode(&img.data)),
                    },
                }));
            }
            Value::Array(parts)
        };
        messages.push(json!({ "role": "user", "content": user }));
        body["messages"] = Value::Array(messages);
        if let Some(n) = req.max_tokens {
            let field = match self.cfg.quirks.max_tokens_field {
                MaxTokensField::MaxTokens => "max_tokens",
                MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            };
            body[field] = json!(n);
        }
        if let Some(t) = req.temperature
            && !self.cfg.quirks.no_temperature
        {
            body["temperature"] = json!(t);
        }
        body["stream"] = json!(self.cfg.stream);
        if self.cfg.stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    fn scrub(&self, s: &str) -> String {
        match &self.cfg.api_key {
            Some(k) => k.scrub(s),
            None => s.to_string(),
        }
    }

    async fn call(
        &self,
        req: &ChatRequest,
        ctx: &JobContext,
    ) -> Result<ChatResponse, ProviderError> {
        let mut mode = self.structured_output();
        loop {
            let body = self.body(req, mode);
            let result = retry::run(&self.cfg.retry, ctx.deadline, "chat completion", |_| {
                self.exchange(&body)
            })
            .await;
            match result {
                Ok(r) => return Ok(r),
                Err(f)
                    if f.rejects_response_format
                        && mode == StructuredOutput::JsonSchema
                        && req.schema.is_some() =>
                {
                    tracing::warn!(
                        model = %self.cfg.model,
                        error = %f.error,
                        "the server refused response_format json_schema; using json_object with the schema in the prompt from now on"
                    );
                    self.downgraded.store(true, Ordering::Relaxed);
                    mode = StructuredOutput::JsonObject;
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// One HTTP exchange: send, check the status, read the reply.
    async fn exchange(&self, body: &Value) -> Result<ChatResponse, Failure> {
        let mut rb = self.client.post(self.endpoint.clone()).json(body);
        if let Some(auth) = self.cfg.api_key.as_ref().map(ApiKey::bearer) {
            rb = rb.header(AUTHORIZATION, auth);
        }
        rb = rb.header(
            ACCEPT,
            if self.cfg.stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
        // W3C trace context: the model server's spans join the task's trace.
        let mut trace_headers = reqwest::header::HeaderMap::new();
        orch_shared::trace::inject_http(&mut trace_headers);
        rb = rb.headers(trace_headers);
        let timer = StallTimer::start(self.cfg.first_token_timeout, self.cfg.chunk_timeout);
        // A server that does not even send headers within the first-token limit has stalled.
        let first_token = self.cfg.stream.then_some(self.cfg.first_token_timeout);
        let resp = http::send_checked(rb, first_token, &|s| self.scrub(s)).await?;
        let r = if http::content_type_is(&resp, "text/event-stream") {
            self.read_stream(resp, timer).await
        } else {
            self.read_json(resp).await
        };
        r.map_err(Failure::fatal)
    }

    async fn read_json(&self, mut resp: reqwest::Response) -> Result<ChatResponse, ProviderError> {
        let status = resp.status().as_u16();
        let bytes = http::read_bounded(&mut resp, http::MAX_BODY_BYTES).await?;
        parse_completion(status, &bytes, &self.cfg.model, &|s| self.scrub(s))
    }

    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        mut timer: StallTimer,
    ) -> Result<ChatResponse, ProviderError> {
        let scrub = |s: &str| self.scrub(s);
        let mut answer = StreamedCompletion::default();
        read_frames::<SseDecoder>(&mut resp, &mut timer, |data| answer.push(data, &scrub)).await?;
        answer.finish(&self.cfg.model)
    }
}

/// Parses a whole (non-streamed) chat completion body answered with `status`.
/// `default_model` names the model when the body does not; `scrub` removes
/// the API key from text quoted in errors.
///
/// # Errors
/// `Upstream` for a body that is not a completion (or reports an error),
/// `InvalidOutput` for a refusal.
pub fn parse_completion(
    status: u16,
    bytes: &[u8],
    default_model: &str,
    scrub: &dyn Fn(&str) -> String,
) -> Result<ChatResponse, ProviderError> {
    let malformed = |what: String| ProviderError::Upstream {
        status: Some(status),
        message: what,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        malformed(format!(
            "the response body is not valid JSON ({e}): {}",
            http::bounded(&scrub(&String::from_utf8_lossy(bytes)))
        ))
    })?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let info = ErrorInfo::parse(json!({ "error": err }).to_string().as_bytes());
        return Err(malformed(format!(
            "error in a 200 reply: {}",
            http::bounded(&scrub(&info.message))
        )));
    }
    // serde quotes the offending value: bound it and take the key out.
    let c: Completion = serde_json::from_value(v).map_err(|e| {
        malformed(format!(
            "unexpected response shape: {}",
            http::bounded(&scrub(&e.to_string()))
        ))
    })?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| malformed("the response has no choices".into()))?;
    let message = choice.message.unwrap_or_default();
    let text = content_text(message.content.as_ref());
    if text.is_empty()
        && let Some(refusal) = message.refusal.filter(|r| !r.is_empty())
    {
        return Err(ProviderError::InvalidOutput(format!(
            "the model refused: {}",
            http::bounded(&refusal)
        )));
    }
    Ok(ChatResponse {
        text,
        model: c
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| default_model.to_string()),
        usage: c.usage.map(UsageBody::into_usage),
    })
}

/// A streamed chat completion being assembled from its SSE events' data.
#[derive(Debug, Default)]
pub struct StreamedCompletion {
    text: String,
    model: Option<String>,
    usage: Option<Usage>,
    refusal: String,
    done: bool,
}

impl StreamedCompletion {
    /// Whether `[DONE]` arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes one event's data; `Ok(true)` once it is `[DONE]`. `scrub`
    /// removes the API key from text quoted in errors.
    ///
    /// # Errors
    /// `Upstream` for a malformed chunk, an error reported mid-stream or an
    /// answer longer than [`MAX_TEXT_BYTES`].
    pub fn push(
        &mut self,
        data: &str,
        scrub: &dyn Fn(&str) -> String,
    ) -> Result<bool, ProviderError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::stream(format!(
                "malformed stream chunk ({e}): {}",
                http::bounded(&scrub(data))
            ))
        })?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let info = ErrorInfo::parse(json!({ "error": err }).to_string().as_bytes());
            return Err(ProviderError::stream(format!(
                "the server reported an error mid-stream: {}",
                http::bounded(&scrub(&info.message))
            )));
        }
        let chunk: StreamChunk = serde_json::from_value(v).map_err(|e| {
            ProviderError::stream(format!(
                "malformed stream chunk: {}",
                http::bounded(&scrub(&e.to_string()))
            ))
        })?;
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into_usage());
        }
        if let Some(delta) = chunk.choices.into_iter().next().and_then(|c| c.delta) {
            self.text.push_str(&content_text(delta.content.as_ref()));
            if let Some(r) = delta.refusal {
                self.refusal.push_str(&r);
            }
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(ProviderError::stream(format!(
                "the streamed answer exceeds {MAX_TEXT_BYTES} bytes"
            )));
        }
        Ok(false)
    }

    /// The answer, once the stream has ended.
    ///
    /// # Errors
    /// `Upstream` when `[DONE]` never came, `InvalidOutput` for a refusal.
    pub fn finish(self, default_model: &str) -> Result<ChatResponse, ProviderError> {
        if !self.done {
            return Err(ProviderError::stream(format!(
                "the stream ended before [DONE] ({} bytes of content received)",
                self.text.len()
            )));
        }
        if self.text.is_empty() && !self.refusal.is_empty() {
            return Err(ProviderError::InvalidOutput(format!(
                "the model refused: {}",
                http::bounded(&self.refusal)
            )));
        }
        Ok(ChatResponse {
            text: self.text,
            model: self.model.unwrap_or_else(|| default_model.to_string()),
            usage: self.usage,
        })
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: PROVIDER.into(),
            model: self.cfg.model.clone(),
        }
    }

    fn gen_ai_provider(&self) -> String {
        self.gen_ai.to_string()
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        ctx: &JobContext,
    ) -> Result<ChatResponse, ProviderError> {
        http::under_deadline(ctx, "chat completion", self.call(request, ctx)).await
    }
}

/// The sentence appended to the system prompt when the schema cannot be sent
/// as `response_format` (also used by Ollama's `json` mode).
pub fn schema_instructions(schema: &Value) -> String {
    format!(
        "\n\nReply with one JSON object and nothing else (no prose, no code fences). \
         It must validate against this JSON Schema:\n{schema}"
    )
}

/// Removes `maxLength`/`minLength` everywhere in a schema.
pub fn drop_length_limits(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            map.remove("maxLength");
            map.remove("minLength");
            map.values_mut().for_each(drop_length_limits);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_length_limits),
        _ => {}
    }
}

/// Message content as text: a string, or the text parts of a part list.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
}

#[derive(Debug, Default, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl UsageBody {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<StreamChoice>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Debug, Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::chat::{ImageInput, OutputSchema};

    fn chat(url: &str, f: impl FnOnce(&mut OpenAiConfig)) -> OpenAiChat {
        let mut cfg = OpenAiConfig::new(Url::parse(url).unwrap(), "kimi-k2.6");
        f(&mut cfg);
        OpenAiChat::new(cfg).unwrap()
    }

    fn request() -> ChatRequest {
        ChatRequest {
            system: "sys".into(),
            user: "look".into(),
            images: vec![ImageInput {
                mime: "image/png",
                data: Bytes::from_static(b"\x89PNG"),
            }],
            schema: Some(OutputSchema {
                name: "plan".into(),
                schema: json!({"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}, "required": ["a"], "additionalProperties": false}),
            }),
            max_tokens: Some(100),
            temperature: Some(0.2),
        }
    }

    #[test]
    fn body_has_schema_images_and_stream_options() {
        let c = chat("https://example.test/v1/", |c| c.stream = true);
        assert_eq!(
            c.endpoint().as_str(),
            "https://example.test/v1/chat/completions"
        );
        let b = c.body(&request(), StructuredOutput::JsonSchema);
        assert_eq!(b["model"], "kimi-k2.6");
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["name"], "plan");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["properties"]["a"]["maxLength"],
            5
        );
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(
            b["messages"][1]["content"][0],
            json!({"type": "text", "text": "look"})
        );
        assert_eq!(
            b["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw=="
        );
        assert_eq!(b["max_tokens"], 100);
        assert!((b["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
    }

    #[test]
    fn json_object_mode_puts_the_schema_in_the_prompt() {
        let c = chat("http://127.0.0.1:8000/v1", |_| {});
        let b = c.body(&request(), StructuredOutput::JsonObject);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        let sys = b["messages"][0]["content"].as_str().unwrap();
        assert!(sys.starts_with("sys"));
        assert!(
            sys.contains("JSON Schema") && sys.contains("\"maxLength\":5"),
            "{sys}"
        );
        assert_eq!(b["stream"], false);
        assert!(b.get("stream_options").is_none());
    }

    #[test]
    fn quirks_follow_the_host() {
        let moonshot = chat("https://api.moonshot.ai/v1", |_| {});
        let b = moonshot.body(&request(), StructuredOutput::JsonSchema);
        assert!(b.get("temperature").is_none());
        assert_eq!(moonshot.gen_ai_provider(), "moonshot_ai");
        let openai = chat("https://api.openai.com/v1", |c| {
            c.quirks.max_tokens_field = MaxTokensField::MaxCompletionTokens;
        });
        let b = openai.body(&request(), StructuredOutput::JsonSchema);
        assert!(
            b["response_format"]["json_schema"]["schema"]["properties"]["a"]
                .get("maxLength")
                .is_none()
        );
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none());
        assert_eq!(openai.gen_ai_provider(), "openai");
        assert_eq!(
            chat("https://openrouter.ai/api/v1", |_| {}).gen_ai_provider(),
            "openrouter"
        );
        assert_eq!(
            chat("http://127.0.0.1:11434/v1", |_| {}).gen_ai_provider(),
            "ollama"
        );
    }

    #[test]
    fn text_only_requests_use_a_plain_string() {
        let c = chat("http://127.0.0.1:8000/v1", |_| {});
        let mut r = request();
        r.images.clear();
        r.schema = None;
        r.system.clear();
        let b = c.body(&r, StructuredOutput::JsonSchema);
        assert_eq!(b["messages"], json!([{"role": "user", "content": "look"}]));
        assert!(b.get("response_format").is_none());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = chat("http://127.0.0.1:8000/v1", |c| {
            c.api_key = Some(ApiKey::new("sk-very-secret").unwrap());
        });
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    #[test]
    fn shape_errors_are_bounded_and_never_quote_the_key() {
        // serde quotes the offending value; a server echoing the key (or a
        // megabyte of text) where an object belongs must not put either into
        // the error (found by the `providers.openai_completion` fuzz target).
        let scrub = |s: &str| s.replace("sk-very-secret", "***");
        let long = "x".repeat(100_000);
        for body in [
            json!({"choices": format!("sk-very-secret {long}")}),
            json!(format!("sk-very-secret {long}")),
        ] {
            let e = parse_completion(200, body.to_string().as_bytes(), "m", &scrub).unwrap_err();
            let msg = e.to_string();
            assert!(!msg.contains("sk-very-secret"), "{msg}");
            assert!(
                msg.len() < 2 * http::MAX_MESSAGE_CHARS,
                "{} bytes",
                msg.len()
            );
        }
        let mut stream = StreamedCompletion::default();
        let chunk = json!({"choices": [{"delta": {"content": 7, "refusal": format!("sk-very-secret {long}")}}], "usage": "sk-very-secret"});
        let e = stream.push(&chunk.to_string(), &scrub).unwrap_err();
        assert!(!e.to_string().contains("sk-very-secret"), "{e}");
        assert!(e.to_string().len() < 2 * http::MAX_MESSAGE_CHARS);
    }
}
