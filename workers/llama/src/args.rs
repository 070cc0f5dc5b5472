//! `--local-*` flags (each also an environment variable) and where the
//! default model lives.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use orch_providers::chat::ChatModel;
use orch_shared::config::Problems;

use crate::model::{ChildCommand, DEFAULT_ABORT_GRACE, LocalConfig, LocalModel, check_model_file};

pub use orch_shared::models::{
    DEFAULT_MODEL_FILE, ENV_LOCAL_MODEL, ENV_MODEL_DIR, default_model_path,
};
/// Room for the prompt — instructions and schema (~500 tokens) plus the web
/// findings the prompt carries (up to ~2,000 tokens) — and the answer; the KV
/// cache for it is ~100 MB with SmolLM2-135M.
pub const DEFAULT_CTX_SIZE: u32 = 4096;
/// Room for a bounded plan of four steps: SmolLM2 fills the bounds and took
/// 190 to 520 tokens per plan in trials, so a 384 cap cut plans off. At ~45
/// tokens/s with a grammar on two cores, at most ~17 s — inside the reasoning budget.
pub const DEFAULT_MAX_TOKENS: u32 = 768;
/// Small models wander at higher temperatures; a little randomness still
/// lets a retry differ.
pub const DEFAULT_TEMPERATURE: f32 = 0.2;
/// Beyond this llama.cpp's CPU threads stop helping a model this small.
const MAX_DEFAULT_THREADS: u32 = 8;

/// Flags of the `local` provider (a GGUF model run with llama.cpp).
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// GGUF model file, or the name of a model `deploy/fetch-model.sh` installs
    /// (`qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`, `smollm2-135m`), found in
    /// `$ORCH_MODEL_DIR` (default `~/.cache/orch/models`). Default: the default
    /// model there (`deploy/fetch-model.sh --list`).
    #[arg(id = "local_model", long = "local-model", env = ENV_LOCAL_MODEL, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// CPU threads for the model. Default: the available cores, at most 8.
    #[arg(
        id = "local_threads",
        value_name = "N",
        long = "local-threads",
        env = "ORCH_LOCAL_THREADS"
    )]
    pub threads: Option<u32>,
    /// Context window in tokens (prompt plus answer).
    #[arg(id = "local_ctx_size", value_name = "TOKENS", long = "local-ctx-size", env = "ORCH_LOCAL_CTX_SIZE", default_value_t = DEFAULT_CTX_SIZE)]
    pub ctx_size: u32,
    /// Cap on generated tokens per request.
    #[arg(id = "local_max_tokens", value_name = "TOKENS", long = "local-max-tokens", env = "ORCH_LOCAL_MAX_TOKENS", default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: u32,
    /// Sampling temperature when a request sets none (0 = always the likeliest token).
    #[arg(id = "local_temperature", value_name = "T", long = "local-temperature", env = "ORCH_LOCAL_TEMPERATURE", default_value_t = DEFAULT_TEMPERATURE)]
    pub temperature: f32,
}

impl LocalArgs {
    /// Checks the flags and the model file and builds the provider. Every
    /// problem is added to `problems`; `None` when there was any.
    pub fn build(&self, problems: &mut Problems) -> Option<Arc<dyn ChatModel>> {
        self.build_local(problems).map(|m| m as Arc<dyn ChatModel>)
    }

    /// Like [`LocalArgs::build`], keeping the concrete type (for
    /// [`LocalModel::warm_up`] or [`LocalModel::child_pid`]).
    pub fn build_local(&self, problems: &mut Problems) -> Option<Arc<LocalModel>> {
        let config = self.config(problems, &|key| std::env::var_os(key))?;
        match LocalModel::new(config) {
            Ok(model) => Some(Arc::new(model)),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    }

    /// Checks every flag and resolves the model path (with `env` standing in
    /// for the process environment), reporting every problem.
    pub fn config(
        &self,
        problems: &mut Problems,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Option<LocalConfig> {
        let before = problems.list().len();
        let model_path = match &self.model {
            Some(value) => {
                let path = orch_shared::models::resolve(value, env);
                if path.is_none() {
                    problems.push(format!(
                        "--local-model {}: a model name needs {ENV_MODEL_DIR} or HOME to find the model directory",
                        value.display()
                    ));
                }
                path
            }
            None => {
                let path = default_model_path(env);
                if path.is_none() {
                    problems.push(format!(
                        "--local-model: no model path given and neither {ENV_MODEL_DIR} nor HOME is set to find the default"
                    ));
                }
                path
            }
        };
        if let Some(path) = &model_path {
            if let Err(e) = check_model_file(path) {
                problems.push(format!("--local-model: {e}"));
            }
        }
        let threads = self.threads.unwrap_or_else(default_threads);
        problems.require(
            (1..=256).contains(&threads),
            format!("--local-threads must be 1..=256, got {threads}"),
        );
        problems.require(
            (256..=131_072).contains(&self.ctx_size),
            format!(
                "--local-ctx-size must be 256..=131072, got {}",
                self.ctx_size
            ),
        );
        problems.require(
            self.max_tokens >= 1 && self.max_tokens < self.ctx_size,
            format!(
                "--local-max-tokens must be at least 1 and below --local-ctx-size ({}), got {}",
                self.ctx_size, self.max_tokens
            ),
        );
        problems.require(
            (0.0..=2.0).contains(&self.temperature),
            format!(
                "--local-temperature must be within 0..=2, got {}",
                self.temperature
            ),
        );
        if problems.list().len() > before {
            return None;
        }
        Some(LocalConfig {
            model_path: model_path?,
            threads,
            ctx_size: self.ctx_size,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            child: ChildCommand::CurrentExe,
            abort_grace: DEFAULT_ABORT_GRACE,
        })
    }
}

/// Threads when `--local-threads` is not given.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(MAX_DEFAULT_THREADS))
        .unwrap_or(2)
        .min(MAX_DEFAULT_THREADS)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        local: LocalArgs,
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |key| map.get(key).cloned()
    }

    fn gguf(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, b"GGUF\x03\0\0\0").expect("write");
        path
    }

    #[test]
    fn the_default_model_is_where_the_fetch_script_puts_it() {
        assert_eq!(
            default_model_path(&env(&[("ORCH_MODEL_DIR", "/models"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/models").join(DEFAULT_MODEL_FILE))
        );
        assert_eq!(
            default_model_path(&env(&[("ORCH_MODEL_DIR", ""), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.cache/orch/models").join(DEFAULT_MODEL_FILE))
        );
        assert_eq!(default_model_path(&env(&[])), None);
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["w", "--local-model", "/m.gguf", "--local-threads", "3"])
            .expect("parse");
        assert_eq!(cli.local.model, Some(PathBuf::from("/m.gguf")));
        assert_eq!(cli.local.threads, Some(3));
        assert_eq!(cli.local.ctx_size, DEFAULT_CTX_SIZE);
        assert_eq!(cli.local.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(cli.local.temperature, DEFAULT_TEMPERATURE);
    }

    #[test]
    fn a_good_configuration_resolves_the_default_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = gguf(&dir, DEFAULT_MODEL_FILE);
        let args = Cli::try_parse_from(["w"]).expect("parse").local;
        let mut problems = Problems::default();
        let dir_str = dir.path().to_string_lossy().into_owned();
        let config = args
            .config(&mut problems, &env(&[("ORCH_MODEL_DIR", &dir_str)]))
            .expect("config");
        assert!(problems.is_empty(), "{:?}", problems.list());
        assert_eq!(config.model_path, path);
        assert_eq!(config.child, ChildCommand::CurrentExe);
        assert!(config.threads >= 1);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let args = LocalArgs {
            model: Some(PathBuf::from("/nowhere/x.gguf")),
            threads: Some(0),
            ctx_size: 100,
            max_tokens: 0,
            temperature: 9.0,
        };
        let mut problems = Problems::default();
        assert!(args.config(&mut problems, &env(&[])).is_none());
        let all = problems.list().join("\n");
        assert_eq!(problems.list().len(), 5, "{all}");
        for needle in [
            "/nowhere/x.gguf not found",
            "deploy/fetch-model.sh",
            "--local-threads",
            "--local-ctx-size",
            "--local-max-tokens",
            "--local-temperature",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn no_home_and_no_model_is_a_problem_not_a_panic() {
        let args = Cli::try_parse_from(["w"]).expect("parse").local;
        let mut problems = Problems::default();
        assert!(args.config(&mut problems, &env(&[])).is_none());
        assert!(
            problems.list()[0].contains("ORCH_MODEL_DIR"),
            "{:?}",
            problems.list()
        );
    }

    #[test]
    fn build_reports_a_missing_model_and_builds_a_present_one() {
        let mut problems = Problems::default();
        let missing = LocalArgs {
            model: Some(PathBuf::from("/nowhere/x.gguf")),
            ..Cli::try_parse_from(["w"]).expect("parse").local
        };
        assert!(missing.build(&mut problems).is_none());
        assert_eq!(problems.list().len(), 1);

        let dir = tempfile::tempdir().expect("tempdir");
        let present = LocalArgs {
            model: Some(gguf(&dir, "Other-Model.gguf")),
            ..missing
        };
        let mut problems = Problems::default();
        let model = present.build(&mut problems).expect("built");
        assert!(problems.is_empty());
        assert_eq!(model.info().model, "Other-Model");
    }
}
