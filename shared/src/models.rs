//! Where the local GGUF model lives: one rule for `deploy/fetch-model.sh`, the
//! local provider's default `--local-model`, and `orch up`'s backend check.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable for the local provider's `--local-model`.
pub const ENV_LOCAL_MODEL: &str = "ORCH_LOCAL_MODEL";
/// Directory `deploy/fetch-model.sh` installs models into (and the default
/// model is looked up in).
pub const ENV_MODEL_DIR: &str = "ORCH_MODEL_DIR";

/// A model `deploy/fetch-model.sh` can install, by the name both accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name `fetch-model.sh` and `--local-model` take, e.g. `qwen2.5-coder-0.5b`.
    pub name: &'static str,
    /// The file it installs into the model directory.
    pub file: &'static str,
}

/// Every model `deploy/fetch-model.sh` installs (a test checks the two agree).
pub const MODELS: &[KnownModel] = &[
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        file: "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        file: "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
    },
    KnownModel {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct-Q4_1.gguf",
    },
];

/// The model the local provider runs by default: the best held-out pass rate
/// of `orch eval` whose p95 fits the reasoning budget on 2 cores (docs/benchmarks.md).
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";
/// The default model's file name, as `deploy/fetch-model.sh` installs it.
pub const DEFAULT_MODEL_FILE: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";

/// The catalogue entry called `name`.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The model directory: `$ORCH_MODEL_DIR`, else `$HOME/.cache/orch/models`.
pub fn model_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |key: &str| env(key).filter(|v| !v.is_empty());
    match non_empty(ENV_MODEL_DIR) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(PathBuf::from(non_empty("HOME")?).join(".cache/orch/models")),
    }
}

/// `--local-model`'s value as a file: a catalogue name (see [`MODELS`]) is
/// its file in [`model_dir`]; anything else is a path. `None` only for a
/// name when no model directory can be found.
pub fn resolve(value: &std::path::Path, env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    match value.to_str().and_then(known) {
        Some(m) => model_dir(env).map(|d| d.join(m.file)),
        None => Some(value.to_path_buf()),
    }
}

/// Where `deploy/fetch-model.sh` installs the default model:
/// `$ORCH_MODEL_DIR/<file>`, else `$HOME/.cache/orch/models/<file>`.
/// `None` when neither variable is set.
pub fn default_model_path(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    model_dir(env).map(|d| d.join(DEFAULT_MODEL_FILE))
}

/// The model file the local provider runs when no flag says otherwise:
/// `$ORCH_LOCAL_MODEL` (a path or a catalogue name), else [`default_model_path`].
pub fn local_model_path(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    match env(ENV_LOCAL_MODEL).filter(|v| !v.is_empty()) {
        Some(v) => resolve(std::path::Path::new(&v), env),
        None => default_model_path(env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn names_resolve_in_the_model_dir_and_paths_stay_paths() {
        let e = env(&[("ORCH_MODEL_DIR", "/m")]);
        assert_eq!(
            resolve(std::path::Path::new("smollm2-135m"), &e),
            Some(PathBuf::from("/m/SmolLM2-135M-Instruct-Q4_1.gguf"))
        );
        assert_eq!(
            resolve(std::path::Path::new("./smollm2-135m"), &e),
            Some(PathBuf::from("./smollm2-135m"))
        );
        let e = env(&[
            ("ORCH_MODEL_DIR", "/m"),
            ("ORCH_LOCAL_MODEL", "qwen2.5-coder-1.5b"),
        ]);
        assert_eq!(
            local_model_path(&e),
            Some(PathBuf::from("/m/Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"))
        );
        assert_eq!(
            resolve(std::path::Path::new("smollm2-135m"), &env(&[])),
            None
        );
    }

    /// `deploy/fetch-model.sh` installs exactly this catalogue, with the same default.
    #[test]
    fn the_fetch_script_agrees_with_the_catalogue() {
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/fetch-model.sh"
        ))
        .unwrap();
        assert!(
            script.contains(&format!("DEFAULT_MODEL=\"{DEFAULT_MODEL}\"")),
            "fetch-model.sh's DEFAULT_MODEL is not {DEFAULT_MODEL}"
        );
        assert_eq!(
            known(DEFAULT_MODEL).map(|m| m.file),
            Some(DEFAULT_MODEL_FILE)
        );
        for m in MODELS {
            let spec = script
                .split(&format!("        {})\n", m.name))
                .nth(1)
                .unwrap_or_else(|| panic!("fetch-model.sh has no case for {}", m.name));
            assert!(
                spec.starts_with(&format!("            FILE=\"{}\"", m.file)),
                "fetch-model.sh installs {} under another file name than {}",
                m.name,
                m.file
            );
        }
        let list = script
            .split("MODELS=(")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let names: Vec<&str> = list.split_whitespace().collect();
        assert_eq!(names, MODELS.iter().map(|m| m.name).collect::<Vec<_>>());
    }
}
