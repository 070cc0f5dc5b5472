//! Flags of the model-backed providers (each also an environment variable)
//! and the construction of their handlers, so worker binaries stay thin:
//! a binary flattens [`ModelArgs`] and calls [`ModelArgs::openai`] or
//! [`ModelArgs::ollama`] for the `--provider` it was given.
//!
//! Every configuration problem is reported to the caller's [`Problems`]
//! (the binary prints them all and exits 64). API keys are read from the
//! environment variable or file the flags name; a missing key names the
//! variable, never a value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orch_shared::Role;
use orch_shared::config::{Problems, parse_duration, redact_url};
use orch_worker::Handler;
use reqwest::Url;

use crate::chat::ChatModel;
use crate::image::{DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_SIDE, ImageLimits};
use crate::ollama::{self, OllamaChat, OllamaConfig};
use crate::openai::{self, MaxTokensField, OpenAiChat, OpenAiConfig, Quirks, StructuredOutput};
use crate::retry::{DEFAULT_MAX_RETRIES, RetryPolicy};
use crate::roles::{DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, LlmHandler, RoleOptions};
use orch_shared::secret::ApiKey;

/// Largest API key file read: keys are tens of bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Most retries accepted: each retry spends the fallback chain's budget.
const MAX_RETRIES_LIMIT: u32 = 10;

/// How a model call behaves, whatever the backend.
#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// Stream replies (SSE for openai, NDJSON for ollama), so stalls are caught per chunk.
    #[arg(long, env = "ORCH_MODEL_STREAM")]
    pub stream: bool,
    /// Streams: the first token must arrive within this [default: 30s openai, 120s ollama].
    #[arg(long, env = "ORCH_MODEL_FIRST_TOKEN_TIMEOUT", value_parser = parse_duration)]
    pub first_token_timeout: Option<Duration>,
    /// Streams: the longest silence between chunks [default: 15s openai, 30s ollama].
    #[arg(long, env = "ORCH_MODEL_CHUNK_TIMEOUT", value_parser = parse_duration)]
    pub chunk_timeout: Option<Duration>,
    /// Retries of 429/5xx/connect errors, never past the job's deadline.
    #[arg(long, env = "ORCH_MODEL_MAX_RETRIES", default_value_t = DEFAULT_MAX_RETRIES)]
    pub max_retries: u32,
    /// TCP/TLS connect limit for the model API.
    #[arg(long, env = "ORCH_MODEL_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub model_connect_timeout: Duration,
    /// Token cap per model call.
    #[arg(long, env = "ORCH_MODEL_MAX_TOKENS", default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: u32,
    /// Sampling temperature (0..=2).
    #[arg(long, env = "ORCH_MODEL_TEMPERATURE", default_value_t = DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Vision: largest screenshot accepted, in bytes.
    #[arg(long, env = "ORCH_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,
    /// Vision: largest screenshot width/height accepted, in pixels.
    #[arg(long, env = "ORCH_MAX_IMAGE_SIDE", default_value_t = DEFAULT_MAX_IMAGE_SIDE)]
    pub max_image_side: u32,
}

impl Default for CallArgs {
    fn default() -> Self {
        CallArgs {
            stream: false,
            first_token_timeout: None,
            chunk_timeout: None,
            max_retries: DEFAULT_MAX_RETRIES,
            model_connect_timeout: crate::http::DEFAULT_CONNECT_TIMEOUT,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: DEFAULT_TEMPERATURE,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_side: DEFAULT_MAX_IMAGE_SIDE,
        }
    }
}

impl CallArgs {
    /// Adds every invalid value to `problems`.
    pub fn check(&self, problems: &mut Problems) {
        for (flag, d) in [
            ("--first-token-timeout", self.first_token_timeout),
            ("--chunk-timeout", self.chunk_timeout),
            ("--model-connect-timeout", Some(self.model_connect_timeout)),
        ] {
            problems.require(
                d.is_none_or(|d| !d.is_zero()),
                format!("{flag} must be positive"),
            );
        }
        problems.require(
            self.max_retries <= MAX_RETRIES_LIMIT,
            format!(
                "--max-retries must be at most {MAX_RETRIES_LIMIT}, got {}",
                self.max_retries
            ),
        );
        problems.require(self.max_tokens > 0, "--max-tokens must be positive");
        problems.require(
            self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature),
            format!(
                "--temperature must be within 0..=2, got {}",
                self.temperature
            ),
        );
        problems.require(
            self.max_image_bytes > 0,
            "--max-image-bytes must be positive",
        );
        problems.require(self.max_image_side > 0, "--max-image-side must be positive");
    }

    /// The retry policy these flags describe.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            ..RetryPolicy::default()
        }
    }

    /// The role options these flags describe.
    pub fn role_options(&self) -> RoleOptions {
        RoleOptions {
            max_tokens: Some(self.max_tokens),
            temperature: Some(self.temperature),
            image_limits: ImageLimits {
                max_bytes: self.max_image_bytes,
                max_side: self.max_image_side,
            },
        }
    }
}

/// Flags of `--provider openai` (OpenAI-compatible Chat Completions).
#[derive(clap::Args, Debug, Clone)]
pub struct OpenAiArgs {
    /// openai: API root. Moonshot: https://api.moonshot.ai/v1; OpenRouter:
    /// https://openrouter.ai/api/v1; Ollama: http://127.0.0.1:11434/v1; vLLM: http://HOST:8000/v1.
    #[arg(long = "base-url", env = "ORCH_OPENAI_BASE_URL", default_value = openai::DEFAULT_BASE_URL)]
    pub base_url: String,
    /// openai: model id, e.g. kimi-k2.6 (Moonshot), moonshotai/kimi-k2 (OpenRouter), gpt-4o-mini.
    #[arg(id = "openai_model", long = "model", value_name = "MODEL", env = "ORCH_OPENAI_MODEL", default_value = openai::DEFAULT_MODEL)]
    pub model: String,
    /// openai: name of the environment variable holding the API key
    /// [default: MOONSHOT_API_KEY for Moonshot, OPENROUTER_API_KEY for OpenRouter, else OPENAI_API_KEY].
    #[arg(long, env = "ORCH_OPENAI_API_KEY_ENV", value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// openai: file holding the API key (instead of --api-key-env).
    #[arg(long, env = "ORCH_OPENAI_API_KEY_FILE", value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// openai: send no key (local vLLM or Ollama servers).
    #[arg(long, env = "ORCH_OPENAI_NO_API_KEY")]
    pub no_api_key: bool,
    /// openai: how to ask for JSON. json-schema (strict) switches itself to
    /// json-object once if the server refuses it.
    #[arg(long, env = "ORCH_OPENAI_STRUCTURED_OUTPUT", value_enum, default_value_t = StructuredOutput::JsonSchema)]
    pub structured_output: StructuredOutput,
    /// openai: never send `temperature` (models that reject it; implied for Moonshot).
    #[arg(long, env = "ORCH_OPENAI_NO_TEMPERATURE")]
    pub no_temperature: bool,
    /// openai: the token-cap field (max-completion-tokens for OpenAI reasoning models).
    #[arg(long, env = "ORCH_OPENAI_MAX_TOKENS_FIELD", value_enum, default_value_t = MaxTokensField::MaxTokens)]
    pub max_tokens_field: MaxTokensField,
    /// openai: strip maxLength/minLength from schemas (servers whose strict mode
    /// refuses them; implied for api.openai.com).
    #[arg(long, env = "ORCH_OPENAI_NO_SCHEMA_LENGTH_LIMITS")]
    pub no_schema_length_limits: bool,
}

impl Default for OpenAiArgs {
    fn default() -> Self {
        OpenAiArgs {
            base_url: openai::DEFAULT_BASE_URL.into(),
            model: openai::DEFAULT_MODEL.into(),
            api_key_env: None,
            api_key_file: None,
            no_api_key: false,
            structured_output: StructuredOutput::JsonSchema,
            no_temperature: false,
            max_tokens_field: MaxTokensField::MaxTokens,
            no_schema_length_limits: false,
        }
    }
}

/// The environment variable a key is read from when `--api-key-env` is not given.
pub fn default_key_env(base_url: &Url) -> &'static str {
    let host = base_url.host_str().unwrap_or("").to_ascii_lowercase();
    if host.contains("moonshot") {
        "MOONSHOT_API_KEY"
    } else if host.contains("openrouter") {
        "OPENROUTER_API_KEY"
    } else {
        "OPENAI_API_KEY"
    }
}

fn parse_base_url(flag: &str, s: &str, problems: &mut Problems) -> Option<Url> {
    match Url::parse(s.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => Some(u),
        Ok(u) => {
            problems.push(format!(
                "{flag}: `{}` must be an http:// or https:// URL",
                redact_url(u.as_str())
            ));
            None
        }
        Err(e) => {
            problems.push(format!("{flag}: `{}` is not a URL ({e})", redact_url(s)));
            None
        }
    }
}

fn read_key_file(path: &Path, problems: &mut Problems) -> Option<ApiKey> {
    let flag = "--api-key-file";
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_KEY_FILE_BYTES => {
            problems.push(format!(
                "{flag}: {} is {} bytes; an API key file holds only the key",
                path.display(),
                m.len()
            ));
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            problems.push(format!("{flag}: cannot read {}: {e}", path.display()));
            return None;
        }
    }
    match std::fs::read_to_string(path) {
        Ok(text) => match ApiKey::new(text) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(format!("{flag}: {}: {e}", path.display()));
                None
            }
        },
        Err(e) => {
            problems.push(format!("{flag}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

impl OpenAiArgs {
    /// Validates the flags and builds the backend configuration, reading the
    /// key through `env` (tests inject it; binaries use the process environment).
    pub fn config_with_env(
        &self,
        call: &CallArgs,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<OpenAiConfig> {
        let before = problems.list().len();
        let base_url = parse_base_url("--base-url", &self.base_url, problems);
        problems.require(!self.model.trim().is_empty(), "--model must not be empty");
        let sources = [
            self.no_api_key,
            self.api_key_env.is_some(),
            self.api_key_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            problems.push("use only one of --api-key-env, --api-key-file and --no-api-key");
        }
        let api_key = if self.no_api_key {
            None
        } else if let Some(path) = &self.api_key_file {
            read_key_file(path, problems)
        } else {
            let var = match (&self.api_key_env, &base_url) {
                (Some(v), _) => v.trim().to_string(),
                (None, Some(u)) => default_key_env(u).to_string(),
                (None, None) => "OPENAI_API_KEY".to_string(),
            };
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                problems.push(format!(
                    "--api-key-env: `{var}` is not an environment variable name"
                ));
                None
            } else {
                match env(&var).filter(|v| !v.trim().is_empty()) {
                    None => {
                        problems.push(format!(
                            "no API key for --provider openai: environment variable {var} is not set \
                             (set it, name another with --api-key-env, use --api-key-file, \
                             or --no-api-key for a keyless local server)"
                        ));
                        None
                    }
                    Some(value) => match ApiKey::new(value) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            problems.push(format!("environment variable {var}: {e}"));
                            None
                        }
                    },
                }
            }
        };
        let base_url = base_url?;
        if problems.list().len() > before {
            return None;
        }
        let mut quirks = Quirks::for_url(&base_url);
        quirks.no_temperature |= self.no_temperature;
        quirks.drop_length_limits |= self.no_schema_length_limits;
        quirks.max_tokens_field = self.max_tokens_field;
        let mut cfg = OpenAiConfig::new(base_url, self.model.trim());
        cfg.api_key = api_key;
        cfg.stream = call.stream;
        cfg.structured_output = self.structured_output;
        cfg.quirks = quirks;
        cfg.first_token_timeout = call
            .first_token_timeout
            .unwrap_or(openai::DEFAULT_FIRST_TOKEN_TIMEOUT);
        cfg.chunk_timeout = call.chunk_timeout.unwrap_or(openai::DEFAULT_CHUNK_TIMEOUT);
        cfg.retry = call.retry();
        cfg.connect_timeout = call.model_connect_timeout;
        Some(cfg)
    }

    /// Builds the backend, reading the key through `env`.
    pub fn build_with_env(
        &self,
        call: &CallArgs,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Arc<dyn ChatModel>> {
        let cfg = self.config_with_env(call, env, problems)?;
        let key_source = match (&cfg.api_key, &self.api_key_file) {
            (None, _) => "none".to_string(),
            (Some(_), Some(p)) => format!("file {}", p.display()),
            (Some(_), None) => format!(
                "env {}",
                self.api_key_env
                    .clone()
                    .unwrap_or_else(|| default_key_env(&cfg.base_url).to_string())
            ),
        };
        tracing::info!(
            base_url = %redact_url(cfg.base_url.as_str()),
            model = %cfg.model,
            stream = cfg.stream,
            structured_output = ?cfg.structured_output,
            key = %key_source,
            "openai-compatible backend configured"
        );
        match OpenAiChat::new(cfg) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                problems.push(format!("--provider openai: {e}"));
                None
            }
        }
    }

    /// Builds the backend, reading the key from the process environment.
    pub fn build(&self, call: &CallArgs, problems: &mut Problems) -> Option<Arc<dyn ChatModel>> {
        self.build_with_env(call, &|k| std::env::var(k).ok(), problems)
    }
}

/// Flags of `--provider ollama` (Ollama's native API).
#[derive(clap::Args, Debug, Clone)]
pub struct OllamaArgs {
    /// ollama: server root.
    #[arg(long = "ollama-url", env = "ORCH_OLLAMA_URL", default_value = ollama::DEFAULT_BASE_URL)]
    pub ollama_url: String,
    /// ollama: model name [default for vision: minicpm-v; required for the other roles].
    #[arg(long = "ollama-model", env = "ORCH_OLLAMA_MODEL")]
    pub ollama_model: Option<String>,
    /// ollama: json-schema puts the schema in `format` (Ollama >= 0.5); json-object
    /// sends `format: "json"` and the schema in the prompt.
    #[arg(long = "ollama-format", env = "ORCH_OLLAMA_FORMAT", value_enum, default_value_t = StructuredOutput::JsonSchema)]
    pub ollama_format: StructuredOutput,
    /// ollama: how long the model stays loaded after a request (e.g. 10m, -1 for ever).
    #[arg(long = "ollama-keep-alive", env = "ORCH_OLLAMA_KEEP_ALIVE")]
    pub ollama_keep_alive: Option<String>,
    /// ollama: context window in tokens (options.num_ctx).
    #[arg(long = "ollama-num-ctx", env = "ORCH_OLLAMA_NUM_CTX")]
    pub ollama_num_ctx: Option<u32>,
}

impl Default for OllamaArgs {
    fn default() -> Self {
        OllamaArgs {
            ollama_url: ollama::DEFAULT_BASE_URL.into(),
            ollama_model: None,
            ollama_format: StructuredOutput::JsonSchema,
            ollama_keep_alive: None,
            ollama_num_ctx: None,
        }
    }
}

impl OllamaArgs {
    /// Validates the flags and builds the backend configuration for `role`.
    pub fn config(
        &self,
        role: Role,
        call: &CallArgs,
        problems: &mut Problems,
    ) -> Option<OllamaConfig> {
        let base_url = parse_base_url("--ollama-url", &self.ollama_url, problems);
        let model = match (self.ollama_model.as_deref().map(str::trim), role) {
            (Some(m), _) if !m.is_empty() => Some(m.to_string()),
            (_, Role::Vision) => Some(ollama::DEFAULT_VISION_MODEL.to_string()),
            _ => {
                problems.push(format!(
                    "--ollama-model is required for the {role} role (e.g. qwen2.5:7b)"
                ));
                None
            }
        };
        problems.require(
            self.ollama_num_ctx.is_none_or(|n| n > 0),
            "--ollama-num-ctx must be positive",
        );
        let (base_url, model) = (base_url?, model?);
        let mut cfg = OllamaConfig::new(base_url, model);
        cfg.stream = call.stream;
        cfg.structured_output = self.ollama_format;
        cfg.keep_alive = self
            .ollama_keep_alive
            .clone()
            .filter(|k| !k.trim().is_empty());
        cfg.num_ctx = self.ollama_num_ctx.filter(|n| *n > 0);
        cfg.first_token_timeout = call
            .first_token_timeout
            .unwrap_or(ollama::DEFAULT_FIRST_TOKEN_TIMEOUT);
        cfg.chunk_timeout = call.chunk_timeout.unwrap_or(ollama::DEFAULT_CHUNK_TIMEOUT);
        cfg.retry = call.retry();
        cfg.connect_timeout = call.model_connect_timeout;
        Some(cfg)
    }

    /// Builds the backend for `role`.
    pub fn build(
        &self,
        role: Role,
        call: &CallArgs,
        problems: &mut Problems,
    ) -> Option<Arc<dyn ChatModel>> {
        let cfg = self.config(role, call, problems)?;
        tracing::info!(
            base_url = %redact_url(cfg.base_url.as_str()),
            model = %cfg.model,
            stream = cfg.stream,
            "ollama backend configured"
        );
        match OllamaChat::new(cfg) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                problems.push(format!("--provider ollama: {e}"));
                None
            }
        }
    }
}

/// Every model-provider flag; worker binaries flatten this once.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub call: CallArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub openai: OpenAiArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ollama: OllamaArgs,
}

impl ModelArgs {
    /// The `role` handler over an OpenAI-compatible backend, or `None` after
    /// recording every problem.
    pub fn openai(&self, role: Role, problems: &mut Problems) -> Option<Arc<dyn Handler>> {
        self.call.check(problems);
        let model = self.openai.build(&self.call, problems)?;
        self.handler(role, model, problems)
    }

    /// The `role` handler over Ollama, or `None` after recording every problem.
    pub fn ollama(&self, role: Role, problems: &mut Problems) -> Option<Arc<dyn Handler>> {
        self.call.check(problems);
        let model = self.ollama.build(role, &self.call, problems)?;
        self.handler(role, model, problems)
    }

    /// The `role` handler over any backend (for providers built elsewhere).
    pub fn handler(
        &self,
        role: Role,
        model: Arc<dyn ChatModel>,
        problems: &mut Problems,
    ) -> Option<Arc<dyn Handler>> {
        match LlmHandler::new(role, model, self.call.role_options()) {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// Flattened next to every other flag group a worker binary has, so a
    /// clash of argument ids is caught here and not at a binary's startup.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        _worker: orch_worker::WorkerArgs,
        #[command(flatten)]
        _sim: orch_worker::sim::SimArgs,
        #[command(flatten)]
        m: ModelArgs,
    }

    fn parse(args: &[&str]) -> ModelArgs {
        let mut v = vec!["w"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().m
    }

    const SECRET: &str = "sk-test-0123456789abcdef";

    #[test]
    fn missing_key_names_the_variable() {
        let m = parse(&[
            "--base-url",
            "https://api.moonshot.ai/v1",
            "--model",
            "kimi-k2.6",
        ]);
        let mut p = Problems::default();
        assert!(
            m.openai
                .build_with_env(&m.call, &|_| None, &mut p)
                .is_none()
        );
        assert_eq!(p.list().len(), 1, "{:?}", p.list());
        assert!(p.list()[0].contains("MOONSHOT_API_KEY"), "{:?}", p.list());
    }

    #[test]
    fn key_from_named_env_var_is_used_and_never_shown() {
        let m = parse(&["--api-key-env", "MY_KEY", "--stream", "--max-retries", "4"]);
        let env = |k: &str| (k == "MY_KEY").then(|| SECRET.to_string());
        let mut p = Problems::default();
        let cfg = m.openai.config_with_env(&m.call, &env, &mut p).unwrap();
        assert!(p.is_empty());
        assert_eq!(cfg.api_key.as_ref().map(ApiKey::expose), Some(SECRET));
        assert!(cfg.stream);
        assert_eq!(cfg.retry.max_retries, 4);
        assert_eq!(cfg.model, "gpt-4o-mini");
        assert!(!format!("{cfg:?}").contains(SECRET));
        assert!(!format!("{m:?}").contains(SECRET));
    }

    #[test]
    fn key_file_and_conflicts() {
        let dir = std::env::temp_dir().join(format!("orch-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let m = parse(&["--api-key-file", path.to_str().unwrap()]);
        let mut p = Problems::default();
        let cfg = m
            .openai
            .config_with_env(&m.call, &|_| None, &mut p)
            .unwrap();
        assert_eq!(cfg.api_key.unwrap().expose(), SECRET);
        let m = parse(&[
            "--api-key-file",
            "/nonexistent/key",
            "--api-key-env",
            "X",
            "--temperature",
            "9",
        ]);
        let mut p = Problems::default();
        m.call.check(&mut p);
        assert!(
            m.openai
                .config_with_env(&m.call, &|_| None, &mut p)
                .is_none()
        );
        assert_eq!(p.list().len(), 3, "{:?}", p.list());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keyless_local_servers_and_bad_urls() {
        let m = parse(&["--base-url", "http://127.0.0.1:8000/v1", "--no-api-key"]);
        let mut p = Problems::default();
        assert!(
            m.openai
                .build_with_env(&m.call, &|_| None, &mut p)
                .is_some()
        );
        assert!(p.is_empty(), "{:?}", p.list());
        let m = parse(&["--base-url", "ftp://x", "--no-api-key"]);
        let mut p = Problems::default();
        assert!(
            m.openai
                .build_with_env(&m.call, &|_| None, &mut p)
                .is_none()
        );
        assert!(p.list()[0].contains("--base-url"));
    }

    #[test]
    fn ollama_model_defaults_for_vision_only() {
        let m = parse(&[]);
        let mut p = Problems::default();
        let cfg = m.ollama.config(Role::Vision, &m.call, &mut p).unwrap();
        assert_eq!(cfg.model, "minicpm-v");
        assert_eq!(cfg.base_url.as_str(), "http://127.0.0.1:11434/");
        assert!(m.ollama.config(Role::Reasoner, &m.call, &mut p).is_none());
        assert!(
            p.list()[0].contains("--ollama-model is required"),
            "{:?}",
            p.list()
        );
        let m = parse(&["--ollama-model", "qwen2.5:7b"]);
        let mut p = Problems::default();
        assert!(m.ollama(Role::Reasoner, &mut p).is_some());
        assert!(p.is_empty());
    }
}
