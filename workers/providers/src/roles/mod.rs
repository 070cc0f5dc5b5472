//! The vision, reasoner and verifier roles over any [`ChatModel`].
//!
//! [`LlmHandler`] implements the worker runtime's [`Handler`]: it validates
//! the input (the screenshot, for vision), builds the role's prompts
//! ([`prompt`]) and output schema ([`schema`]), calls the model, and turns the
//! reply into a validated role output ([`output`]). An invalid reply gets one
//! repair request that quotes it and says what is wrong; a second invalid
//! reply is `invalid_output`, so the coordinator falls back.
//!
//! Each model call runs in a tracing span named and shaped per the
//! OpenTelemetry GenAI conventions (`chat {model}`, `gen_ai.*` attributes) so
//! an OTel layer exports it as a client span. Spans and logs never carry
//! prompts, replies or keys.

pub mod output;
pub mod prompt;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_shared::wire::{Usage, WorkRequest};
use orch_shared::{ErrorCode, Role};
use orch_worker::{Handler, JobContext, Output, ProviderInfo, WorkError};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::chat::{ChatModel, ChatRequest, ChatResponse, OutputSchema};
use crate::image::{self, ImageLimits};

/// Token cap per call. The role schemas bound the answer to a few thousand
/// tokens; thinking models spend part of the cap on reasoning first.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Low randomness: the answers are structured data, not prose for its own sake.
pub const DEFAULT_TEMPERATURE: f32 = 0.2;
/// Below this much remaining budget a repair request cannot finish; the
/// invalid output is reported at once instead of a timeout later.
pub const MIN_REPAIR_TIME: Duration = Duration::from_millis(200);

/// Settings of a role handler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleOptions {
    /// Token cap per model call.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (backends with a quirk may drop it).
    pub temperature: Option<f32>,
    /// Screenshot limits (vision).
    pub image_limits: ImageLimits,
}

impl Default for RoleOptions {
    fn default() -> Self {
        RoleOptions {
            max_tokens: Some(DEFAULT_MAX_TOKENS),
            temperature: Some(DEFAULT_TEMPERATURE),
            image_limits: ImageLimits::default(),
        }
    }
}

/// Returned when a role has no language-model handler (web).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {0} role does not use a language model")]
pub struct UnsupportedRole(pub Role);

/// A role served by a language model.
pub struct LlmHandler {
    role: Role,
    model: Arc<dyn ChatModel>,
    options: RoleOptions,
}

impl std::fmt::Debug for LlmHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmHandler")
            .field("role", &self.role)
            .field("model", &self.model.info())
            .field("options", &self.options)
            .finish()
    }
}

impl LlmHandler {
    /// A handler for `role` (vision, reasoner or verifier) over `model`.
    ///
    /// # Errors
    /// [`UnsupportedRole`] for the web role.
    pub fn new(
        role: Role,
        model: Arc<dyn ChatModel>,
        options: RoleOptions,
    ) -> Result<LlmHandler, UnsupportedRole> {
        if role == Role::Web {
            return Err(UnsupportedRole(role));
        }
        Ok(LlmHandler {
            role,
            model,
            options,
        })
    }

    /// The schema the answer must follow for `req`.
    pub fn schema(&self, req: &WorkRequest) -> OutputSchema {
        match self.role {
            Role::Reasoner => schema::plan(&req.available_tools),
            Role::Verifier => schema::verdict(),
            _ => schema::vision(),
        }
    }

    /// The first request sent for `req`.
    ///
    /// # Errors
    /// `invalid_input` / `invalid_request` when the request lacks what the role needs.
    pub fn request(&self, req: &WorkRequest) -> Result<ChatRequest, WorkError> {
        let images = match self.role {
            Role::Vision => {
                let shot = req
                    .screenshot
                    .as_ref()
                    .ok_or_else(|| WorkError::invalid_input("no screenshot in the request"))?;
                vec![image::validate(&shot.0, &self.options.image_limits)?.input]
            }
            _ => Vec::new(),
        };
        if self.role == Role::Verifier && req.answer.is_none() {
            return Err(WorkError::invalid_request(
                "the verifier needs `answer` (the plan to verify)",
            ));
        }
        Ok(ChatRequest {
            system: prompt::system(self.role).to_string(),
            user: prompt::user(self.role, req),
            images,
            schema: Some(self.schema(req)),
            max_tokens: self.options.max_tokens,
            temperature: self.options.temperature,
        })
    }

    /// One model call in a GenAI span.
    async fn call(
        &self,
        request: &ChatRequest,
        ctx: &JobContext,
        attempt: u32,
        task_id: &str,
    ) -> Result<ChatResponse, WorkError> {
        let info = self.model.info();
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {}", info.model),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = %self.model.gen_ai_provider(),
            gen_ai.request.model = %info.model,
            gen_ai.request.max_tokens = request.max_tokens.map(u64::from),
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.input.messages = Empty,
            gen_ai.output.messages = Empty,
            orch.role = %self.role,
            orch.attempt = attempt,
            orch.task_id = %task_id,
        );
        let capture = orch_shared::telemetry::capture_content();
        if capture {
            // Opt-in only (--otel-capture-content): prompts may hold personal data.
            let input = serde_json::json!([
                {"role": "system", "parts": [{"type": "text", "content": request.system}]},
                {"role": "user", "parts": [{"type": "text", "content": request.user}]},
            ]);
            span.record("gen_ai.input.messages", input.to_string().as_str());
        }
        let started = Instant::now();
        let result = self.model.chat(request, ctx).instrument(span.clone()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(r) => {
                span.record("gen_ai.response.model", r.model.as_str());
                if capture {
                    let output = serde_json::json!([
                        {"role": "assistant", "parts": [{"type": "text", "content": r.text}]},
                    ]);
                    span.record("gen_ai.output.messages", output.to_string().as_str());
                }
                if let Some(u) = r.usage {
                    span.record("gen_ai.usage.input_tokens", u.input_tokens);
                    span.record("gen_ai.usage.output_tokens", u.output_tokens);
                }
                span.in_scope(|| tracing::debug!(elapsed_ms, "model call done"));
            }
            Err(e) => {
                orch_shared::trace::record_error(&span, e.code().as_str(), &e.to_string());
                span.in_scope(|| {
                    tracing::info!(elapsed_ms, code = %e.code(), error = %e, "model call failed")
                });
            }
        }
        result.map_err(WorkError::from)
    }

    fn output(
        &self,
        resp: ChatResponse,
        content: serde_json::Value,
        usage: Option<Usage>,
    ) -> Output {
        Output {
            provider: self.model.info().provider,
            model: resp.model,
            content,
            usage,
        }
    }
}

/// Adds token counts; `None` only when neither side reported any.
pub fn add_usage(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (None, None) => None,
        (a, b) => {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            Some(Usage {
                input_tokens: a.input_tokens.saturating_add(b.input_tokens),
                output_tokens: a.output_tokens.saturating_add(b.output_tokens),
            })
        }
    }
}

#[async_trait]
impl Handler for LlmHandler {
    fn role(&self) -> Role {
        self.role
    }

    fn info(&self) -> ProviderInfo {
        self.model.info()
    }

    async fn handle(&self, req: WorkRequest, ctx: JobContext) -> Result<Output, WorkError> {
        if req.role != self.role {
            return Err(WorkError::invalid_request(format!(
                "a {} request reached the {} handler",
                req.role, self.role
            )));
        }
        let task_id = req.task_id.to_string();
        let first = self.request(&req)?;
        let resp = self.call(&first, &ctx, 1, &task_id).await?;
        let mut usage = resp.usage;
        let error = match output::parse(self.role, &resp.text) {
            Ok(content) => return Ok(self.output(resp, content, usage)),
            Err(e) => e,
        };
        if ctx.remaining() < MIN_REPAIR_TIME {
            return Err(WorkError::new(
                ErrorCode::InvalidOutput,
                format!(
                    "the model's {} output is invalid and no time is left for a repair attempt: {error}",
                    self.role
                ),
            ));
        }
        tracing::info!(
            task_id,
            role = %self.role,
            error = %error,
            "the model's output is invalid; asking once for a repair"
        );
        let mut repair = first.clone();
        repair.user = prompt::repair(&first.user, &resp.text, &error);
        let resp = self.call(&repair, &ctx, 2, &task_id).await?;
        usage = add_usage(usage, resp.usage);
        match output::parse(self.role, &resp.text) {
            Ok(content) => Ok(self.output(resp, content, usage)),
            Err(e) => Err(WorkError::new(
                ErrorCode::InvalidOutput,
                format!(
                    "the model's {} output is invalid after one repair attempt: {e}",
                    self.role
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use orch_shared::Blob;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::chat::ProviderError;

    /// A scripted model: answers in order, records requests.
    struct Scripted {
        replies: Mutex<Vec<Result<ChatResponse, ProviderError>>>,
        seen: Mutex<Vec<ChatRequest>>,
    }

    impl Scripted {
        fn new(replies: Vec<Result<&str, ProviderError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                replies: Mutex::new(
                    replies
                        .into_iter()
                        .rev()
                        .map(|r| {
                            r.map(|t| ChatResponse {
                                text: t.to_string(),
                                model: "m-2025".into(),
                                usage: Some(Usage {
                                    input_tokens: 10,
                                    output_tokens: 5,
                                }),
                            })
                        })
                        .collect(),
                ),
                seen: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl ChatModel for Scripted {
        fn info(&self) -> ProviderInfo {
            ProviderInfo {
                provider: "scripted".into(),
                model: "m".into(),
            }
        }

        async fn chat(
            &self,
            r: &ChatRequest,
            _: &JobContext,
        ) -> Result<ChatResponse, ProviderError> {
            self.seen.lock().unwrap().push(r.clone());
            self.replies
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| Err(ProviderError::Cancelled))
        }
    }

    fn ctx() -> JobContext {
        JobContext {
            deadline: Instant::now() + Duration::from_secs(5),
            cancel: CancellationToken::new(),
        }
    }

    fn work(role: Role) -> WorkRequest {
        WorkRequest {
            task_id: "t1".parse().unwrap(),
            role,
            slot: orch_shared::Slot::default_slot(),
            task: "plan it".into(),
            context: None,
            available_tools: vec!["search".into()],
            screenshot: None,
            query: None,
            screenshot_ref: None,
            vision: None,
            web: None,
            answer: None,
        }
    }

    const PLAN: &str = r#"{"steps":[{"tool":"search","args":[{"name":"q","value":"x"}],"why":"w"}],"answer":"done","confidence":0.8}"#;

    #[tokio::test]
    async fn valid_output_on_the_first_try() {
        let m = Scripted::new(vec![Ok(PLAN)]);
        let h = LlmHandler::new(Role::Reasoner, m.clone(), RoleOptions::default()).unwrap();
        let out = h.handle(work(Role::Reasoner), ctx()).await.unwrap();
        assert_eq!(out.provider, "scripted");
        assert_eq!(out.model, "m-2025");
        assert_eq!(out.content["steps"][0]["args"], json!({"q": "x"}));
        assert_eq!(out.usage.unwrap().input_tokens, 10);
        let seen = m.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].schema.as_ref().unwrap().name, "plan");
        assert!(seen[0].user.contains("Available tools: search"));
    }

    #[tokio::test]
    async fn one_repair_then_success_sums_usage() {
        let m = Scripted::new(vec![Ok("Sure, here it is: {\"answer\": "), Ok(PLAN)]);
        let h = LlmHandler::new(Role::Reasoner, m.clone(), RoleOptions::default()).unwrap();
        let out = h.handle(work(Role::Reasoner), ctx()).await.unwrap();
        assert_eq!(
            out.usage,
            Some(Usage {
                input_tokens: 20,
                output_tokens: 10
            })
        );
        let seen = m.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(
            seen[1]
                .user
                .contains("could not be used: the reply contains no complete JSON object")
        );
        assert!(seen[1].user.contains("Sure, here it is"));
    }

    #[tokio::test]
    async fn two_invalid_replies_are_invalid_output() {
        let bad = r#"{"steps":[],"answer":"x","confidence":7}"#;
        let m = Scripted::new(vec![Ok(bad), Ok(bad), Ok(PLAN)]);
        let h = LlmHandler::new(Role::Reasoner, m.clone(), RoleOptions::default()).unwrap();
        let e = h.handle(work(Role::Reasoner), ctx()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOutput);
        assert!(e.message.contains("within 0..=1"), "{e}");
        assert_eq!(m.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn no_repair_when_the_budget_is_nearly_spent() {
        let m = Scripted::new(vec![Ok("not json"), Ok(PLAN)]);
        let h = LlmHandler::new(Role::Reasoner, m.clone(), RoleOptions::default()).unwrap();
        let short = JobContext {
            deadline: Instant::now() + MIN_REPAIR_TIME / 2,
            cancel: CancellationToken::new(),
        };
        let e = h.handle(work(Role::Reasoner), short).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOutput);
        assert!(e.message.contains("no time is left"), "{e}");
        assert_eq!(m.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn provider_errors_pass_through_without_repair() {
        let m = Scripted::new(vec![Err(ProviderError::Unauthorized("bad key".into()))]);
        let h = LlmHandler::new(Role::Reasoner, m.clone(), RoleOptions::default()).unwrap();
        let e = h.handle(work(Role::Reasoner), ctx()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(e.to_string(), "unauthorized: bad key");
        assert_eq!(m.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn vision_validates_the_screenshot_before_calling_the_model() {
        let m = Scripted::new(vec![Ok(
            r#"{"description":"a form","elements":[],"errors_detected":[],"suggested_actions":[]}"#,
        )]);
        let h = LlmHandler::new(Role::Vision, m.clone(), RoleOptions::default()).unwrap();
        let mut w = work(Role::Vision);
        w.screenshot = Some(Blob::from(b"GIF89a nope".to_vec()));
        let e = h.handle(w.clone(), ctx()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(m.seen.lock().unwrap().is_empty());
        w.screenshot = Some(Blob(image::test_png(10, 10)));
        let out = h.handle(w, ctx()).await.unwrap();
        assert_eq!(out.content["description"], "a form");
        let seen = m.seen.lock().unwrap();
        assert_eq!(seen[0].images[0].mime, "image/png");
        assert_eq!(seen[0].schema.as_ref().unwrap().name, "vision_analysis");
    }

    #[tokio::test]
    async fn verifier_needs_a_plan() {
        let m = Scripted::new(vec![]);
        let h = LlmHandler::new(Role::Verifier, m, RoleOptions::default()).unwrap();
        let e = h.handle(work(Role::Verifier), ctx()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(LlmHandler::new(Role::Web, Scripted::new(vec![]), RoleOptions::default()).is_err());
    }
}
