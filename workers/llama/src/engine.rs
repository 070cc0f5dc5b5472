//! llama.cpp itself: load a GGUF model once, then run one generation at a
//! time on a reused context. Runs only inside the model child process
//! ([`crate::child`]), so anything llama.cpp does wrong (an abort from a C++
//! exception, a segfault) ends that process, not the worker.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::protocol::{ChildConfig, FailKind, Finish, GenerateRequest};

/// Prompt tokens evaluated per `llama_decode` call. Small enough that a cancel
/// is noticed within a fraction of a second even during a long prompt, large
/// enough to keep prompt processing near full speed.
const PROMPT_CHUNK: usize = 128;
/// Candidates kept before temperature sampling; the usual llama.cpp default.
const TOP_K: i32 = 40;
/// Nucleus kept before temperature sampling; the usual llama.cpp default.
const TOP_P: f32 = 0.95;
/// Recent tokens the repetition penalty looks at.
const PENALTY_LAST_N: i32 = 64;
/// Small models, greedy ones especially, fall into loops ("2022-06-20,
/// 2022-06-20, ...") until the token cap; a mild penalty breaks most of them.
const PENALTY_REPEAT: f32 = 1.15;

/// A failed job, as reported to the worker.
#[derive(Debug)]
pub struct JobError {
    /// Category.
    pub kind: FailKind,
    /// Details.
    pub message: String,
}

impl JobError {
    fn bad_request(message: impl Into<String>) -> JobError {
        JobError {
            kind: FailKind::BadRequest,
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> JobError {
        JobError {
            kind: FailKind::Internal,
            message: message.into(),
        }
    }
}

/// A finished generation.
#[derive(Debug)]
pub struct Generation {
    /// Generated text.
    pub text: String,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Why it stopped.
    pub finish: Finish,
    /// Prompt processing time.
    pub prompt_ms: u64,
    /// Generation time.
    pub generate_ms: u64,
}

/// The loaded model. llama.cpp's backend is a process-wide singleton, which is
/// one more reason the model lives in its own process.
pub struct Engine {
    // Field order is drop order: the model must go before the backend.
    model: LlamaModel,
    template: LlamaChatTemplate,
    backend: LlamaBackend,
    threads: i32,
    ctx_size: u32,
}

impl Engine {
    /// Initialises llama.cpp and loads the model.
    ///
    /// # Errors
    /// A message saying what failed (missing file, not a GGUF model, ...).
    pub fn load(config: &ChildConfig) -> Result<Engine, String> {
        let path = &config.model_path;
        // llama.cpp only says "failed to load"; say which file and why first.
        std::fs::metadata(path)
            .map_err(|e| format!("cannot read model file {}: {e}", path.display()))?;
        let threads = i32::try_from(config.threads)
            .map_err(|_| format!("thread count {} out of range", config.threads))?;
        let backend = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
        let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())
            .map_err(|e| {
                format!(
                    "llama.cpp could not load {} ({e}); is it a GGUF model?",
                    path.display()
                )
            })?;
        // The model's own template (ChatML for SmolLM2); ChatML when it has none.
        let template = match model.chat_template(None) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "model has no usable chat template; using ChatML");
                LlamaChatTemplate::new("chatml").map_err(|e| format!("chat template: {e}"))?
            }
        };
        Ok(Engine {
            model,
            template,
            backend,
            threads,
            ctx_size: config.ctx_size,
        })
    }

    /// Context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// Parameter count.
    pub fn n_params(&self) -> u64 {
        self.model.n_params()
    }

    /// Allocates the context (KV cache) that every job reuses.
    ///
    /// # Errors
    /// llama.cpp's refusal (for example an absurd context size for the memory).
    pub fn session(&self) -> Result<Session<'_>, String> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.ctx_size))
            .with_n_batch(PROMPT_CHUNK as u32)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = self
            .model
            .new_context(&self.backend, params)
            .map_err(|e| format!("llama.cpp context ({} tokens): {e}", self.ctx_size))?;
        Ok(Session { engine: self, ctx })
    }

    fn render_prompt(&self, request: &GenerateRequest) -> Result<String, JobError> {
        let message = |role: &str, content: &str| {
            LlamaChatMessage::new(role.into(), content.into())
                .map_err(|e| JobError::bad_request(format!("{role} message: {e}")))
        };
        let mut chat = Vec::with_capacity(2);
        if !request.system.is_empty() {
            chat.push(message("system", &request.system)?);
        }
        chat.push(message("user", &request.user)?);
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| JobError::internal(format!("applying the chat template: {e}")))
    }

    fn sampler(&self, request: &GenerateRequest) -> Result<LlamaSampler, JobError> {
        let mut chain = Vec::with_capacity(5);
        if let Some(schema) = &request.schema {
            let grammar =
                llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                    JobError::bad_request(format!(
                        "the local model cannot turn this schema into a grammar: {e}"
                    ))
                })?;
            // First in the chain: every later sampler only ever sees tokens the
            // grammar allows, so none of them can leave an empty candidate set.
            let grammar = LlamaSampler::grammar(&self.model, &grammar, "root")
                .map_err(|e| JobError::bad_request(format!("grammar from schema: {e}")))?;
            chain.push(grammar);
        }
        // Penalties only lower logits, so they cannot empty the candidate set.
        chain.push(LlamaSampler::penalties(
            self.model.n_vocab(),
            PENALTY_LAST_N,
            PENALTY_REPEAT,
            0.0,
            0.0,
        ));
        if request.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_k(TOP_K));
            chain.push(LlamaSampler::top_p(TOP_P, 1));
            chain.push(LlamaSampler::temp(request.temperature));
            chain.push(LlamaSampler::dist(request.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }
}

/// A context bound to the loaded model; serves jobs one after another.
pub struct Session<'m> {
    engine: &'m Engine,
    ctx: LlamaContext<'m>,
}

impl Session<'_> {
    /// Context size actually allocated.
    pub fn n_ctx(&self) -> u32 {
        self.ctx.n_ctx()
    }

    /// Runs one job. `aborted` is polled between prompt chunks and after every
    /// generated token; when it returns true the job ends with [`FailKind::Aborted`].
    ///
    /// # Errors
    /// [`JobError`]: bad request (prompt too long, schema unsupported), aborted,
    /// or a llama.cpp failure.
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        aborted: &dyn Fn() -> bool,
    ) -> Result<Generation, JobError> {
        let engine = self.engine;
        let vocab = engine.model.vocab();
        let prompt = engine.render_prompt(request)?;
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let n_ctx = self.ctx.n_ctx() as usize;
        if tokens.is_empty() || tokens.len() >= n_ctx {
            return Err(JobError::bad_request(format!(
                "the prompt is {} tokens but the local model's context holds {n_ctx} (raise --local-ctx-size)",
                tokens.len()
            )));
        }
        let budget = (request.max_tokens as usize).min(n_ctx - tokens.len());
        let mut sampler = engine.sampler(request)?;
        let abort = || JobError {
            kind: FailKind::Aborted,
            message: "cancelled by the worker".into(),
        };
        let decode_err = |e| JobError::internal(format!("llama_decode: {e}"));

        // Prompt, in chunks so a cancel is seen between them.
        let started = Instant::now();
        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(PROMPT_CHUNK, 1);
        let last = tokens.len() - 1;
        for (chunk_no, chunk) in tokens.chunks(PROMPT_CHUNK).enumerate() {
            batch.clear();
            for (i, token) in chunk.iter().enumerate() {
                let pos = chunk_no * PROMPT_CHUNK + i;
                batch
                    .add(*token, pos as i32, &[0], pos == last)
                    .map_err(|e| JobError::internal(format!("batch: {e}")))?;
            }
            self.ctx.decode(&mut batch).map_err(decode_err)?;
            if aborted() {
                return Err(abort());
            }
        }
        let prompt_ms = elapsed_ms(started);

        // Generation.
        let started = Instant::now();
        let mut out: Vec<u8> = Vec::new();
        let mut generated = 0usize;
        let mut pos = tokens.len();
        let finish = loop {
            let token: LlamaToken = sampler.sample(&self.ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break Finish::Stop;
            }
            out.extend(vocab.token_to_piece(token, false, None));
            generated += 1;
            if generated >= budget {
                break Finish::Length;
            }
            batch.clear();
            batch
                .add(token, pos as i32, &[0], true)
                .map_err(|e| JobError::internal(format!("batch: {e}")))?;
            pos += 1;
            self.ctx.decode(&mut batch).map_err(decode_err)?;
            if aborted() {
                return Err(abort());
            }
        };
        Ok(Generation {
            text: String::from_utf8_lossy(&out).trim().to_string(),
            prompt_tokens: tokens.len() as u64,
            completion_tokens: generated as u64,
            finish,
            prompt_ms,
            generate_ms: elapsed_ms(started),
        })
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
