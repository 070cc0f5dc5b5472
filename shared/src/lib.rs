//! Everything every orch process and every client needs, and nothing more:
//! roles and slots, NATS subject names, wire types, the JSON/MessagePack codec,
//! error codes, NATS connection options, telemetry setup and shutdown signals.
//!
//! This crate never depends on the coordinator or the workers, so a client
//! (or a worker written by someone else) can depend on it alone.
// Denied, not forbidden: `process::die_with_parent` needs one `pre_exec`
// (a parent-death signal has no safe std API); nothing else may use unsafe.
#![deny(unsafe_code)]

pub mod blob;
pub mod codec;
pub mod config;
pub mod error;
pub mod headers;
pub mod ids;
pub mod models;
pub mod process;
pub mod reconnect;
pub mod role;
pub mod schema;
pub mod secret;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod trace;
pub mod wire;

#[cfg(test)]
mod fuzz;

pub use blob::Blob;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{Slot, TaskId};
/// The allocator every orch binary installs (`#[global_allocator]` in its
/// `main.rs`): mimalloc's per-thread heaps instead of glibc's locked arenas,
/// which many small short-lived allocations across tokio threads contend on.
pub use mimalloc::MiMalloc as Allocator;
pub use role::Role;
