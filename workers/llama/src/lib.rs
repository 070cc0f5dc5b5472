//! The `local` provider: a GGUF model run with llama.cpp (through the
//! `llama-cpp-2` crate) — the fleet's fallback of last resort and its default
//! when no API keys are configured.
//!
//! llama.cpp runs in a child process, never in the worker: an abort inside it
//! (it reports some errors by aborting) must not take the worker's NATS loop
//! down, and a generation cannot otherwise be stopped from outside. The child
//! is the worker binary itself, re-executed with [`ENV_CHILD`] set, so a
//! worker's `main` must call [`maybe_run_child`] first thing.
//!
//! - [`args`]: `--local-*` flags and the default model location.
//! - [`model`]: [`LocalModel`], the [`orch_providers::chat::ChatModel`] the worker uses.
//! - [`process`]: the worker's handle on one child process.
//! - [`child`] and [`engine`]: what runs inside the child.
//! - [`protocol`]: the JSON lines between the two.
//! - [`schema`]: narrowing a JSON Schema so the grammar can enforce all of it.
#![forbid(unsafe_code)]

pub mod args;
pub mod child;
pub mod engine;
pub mod model;
pub mod process;
pub mod protocol;
pub mod schema;
pub mod worker;

pub use args::LocalArgs;
pub use child::{ENV_CHILD, maybe_run_child};
pub use model::{ChildCommand, LocalConfig, LocalModel};
