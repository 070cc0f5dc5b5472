//! The runtime every orch worker shares: the [`Handler`] trait a role
//! implements, the NATS serve loop ([`serve`]) with bounded concurrency,
//! heartbeats, cancellation and graceful drain, the common flags
//! ([`WorkerArgs`]), and the documented simulator ([`sim`]).
#![forbid(unsafe_code)]

pub mod args;
pub mod error;
pub mod handler;
pub mod metrics;
mod queue;
pub mod run;
pub mod serve;
pub mod sim;
mod telemetry;

#[cfg(test)]
mod fuzz;

pub use args::WorkerArgs;
pub use error::WorkError;
pub use handler::{Handler, JobContext, NotConfigured, Output, ProviderInfo};
pub use serve::{ServeConfig, serve};
