//! The coordinator: accepts tasks on `orch.v1.submit`, runs the seed's
//! four-phase pipeline against workers over NATS, and answers with one
//! [`OrchestratedResult`](orch_shared::wire::OrchestratedResult).
//!
//! Where each rule lives:
//! - [`pipeline`]: the phases, their order and parallelism, the fallback chains.
//! - [`dispatch`]: one attempt to one slot — request, heartbeats, deadline, typed failure.
//! - [`synthesis`]: confidence and conflict rules (pure functions).
//! - [`events`]: the seed's EventBus on `orch.v1.events.<task_id>.<kind>`.
//! - [`stats`]: the seed's `get_stats()` numbers plus latency percentiles.
//! - [`service`]: the NATS endpoints, admission control and graceful drain.
//! - [`durable`], [`intake`], [`results`], [`projection`], [`cache`]: the
//!   JetStream side — durable intake with exactly-once results, stored results,
//!   shared stats, the result cache.
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod dispatch;
pub mod durable;
pub mod events;
pub mod intake;
pub mod pipeline;
pub mod projection;
pub mod results;
pub mod service;
pub mod stats;
pub mod synthesis;
pub mod telemetry;

#[cfg(test)]
mod fuzz;

pub use config::{CoordinatorArgs, CoordinatorConfig};
pub use service::{Coordinator, serve};
