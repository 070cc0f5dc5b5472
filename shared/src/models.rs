//! Where the local GGUF model lives: one rule for `deploy/fetch-model.sh`, the
//! local provider's default `--local-model`, and `orch up`'s backend check.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable for the local provider's `--local-model`.
pub const ENV_LOCAL_MODEL: &str = "ORCH_LOCAL_MODEL";
/// Directory `deploy/fetch-model.sh` installs models into (and the default
/// model is looked up in).
pub const ENV_MODEL_DIR: &str = "ORCH_MODEL_DIR";
/// The default model's file name, as `deploy/fetch-model.sh` installs it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";

/// Where `deploy/fetch-model.sh` installs the default model:
/// `$ORCH_MODEL_DIR/<file>`, else `$HOME/.cache/orch/models/<file>`.
/// `None` when neither variable is set.
pub fn default_model_path(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |key: &str| env(key).filter(|v| !v.is_empty());
    let dir = match non_empty(ENV_MODEL_DIR) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(non_empty("HOME")?).join(".cache/orch/models"),
    };
    Some(dir.join(DEFAULT_MODEL_FILE))
}

/// The model file the local provider runs when no flag says otherwise:
/// `$ORCH_LOCAL_MODEL`, else [`default_model_path`].
pub fn local_model_path(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    env(ENV_LOCAL_MODEL)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| default_model_path(env))
}
