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
//!
//! # What a task in flight holds
//!
//! A coordinator may hold many thousands of tasks waiting on workers, each as
//! the state of its future: its tokio task, the submit handler, the pipeline,
//! the phase, the chain and the attempt nested inside one another. So the
//! functions on that path return an `async` block (`fn f(..) -> impl Future {
//! async move { .. } }`, with `#[allow(clippy::manual_async_fn)]`) instead of
//! being `async fn`s: an `async fn` keeps its arguments in its state twice,
//! as captured and as moved into its body. They also box what only lives until
//! the first wait (sending, events) and keep long-lived values small; unit
//! tests pin the size of each of these futures.
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
