//! Every NATS subject the fleet uses, built only here.
//!
//! Layout (all under the `orch.v1` prefix so a v2 can run beside it):
//!
//! | subject                              | who publishes     | who listens              |
//! |--------------------------------------|-------------------|--------------------------|
//! | `orch.v1.submit`                     | clients           | coordinators (queue)     |
//! | `orch.v1.stats`                      | clients           | coordinators (queue)     |
//! | `orch.v1.work.<role>.<slot>`         | coordinators      | workers (queue per slot) |
//! | `orch.v1.cancel.<role>.<slot>`       | coordinators      | every worker of the slot |
//! | `orch.v1.events.<task_id>.<kind>`    | coordinators      | anyone                   |
//! | `orch.v1.tasks.<task_id>`            | clients (JetStream) | coordinators (durable pull consumer) |
//! | `orch.v1.results.<task_id>`          | coordinators      | clients waiting for one task |
//! | `orch.v1.results.get`                | clients           | coordinators (queue)     |
//! | `orch.v1.dead.<task_id>`             | coordinators      | operators (stream `ORCH_DEAD`) |
//! | `orch.v1.queue.<role>.<slot>`        | coordinators (JetStream) | workers pulling when free (stream `ORCH_WORK`) |
//! | `<inbox>.<role>.<n>`                 | workers (answers, heartbeats) | the coordinator that sent attempt `n` |
//!
//! Attempt replies carry the role as a token of their own (see
//! [`attempt_reply`]) so that NATS permissions can let a worker answer only
//! its own role's attempts (`_INBOX_coordinator.*.vision.*`, see
//! `deploy/nats/permissions.conf`).
//!
//! JetStream resources (names are fixed so any client can use them):
//! streams [`STREAM_TASKS`], [`STREAM_EVENTS`], [`STREAM_DEAD`]; key-value
//! buckets [`KV_RESULTS`], [`KV_CACHE`], [`KV_STATS`]; object store
//! [`OBJ_SCREENSHOTS`].

use crate::ids::{Slot, TaskId};
use crate::role::Role;
use crate::wire::EventKind;

/// Common prefix of every subject.
pub const PREFIX: &str = "orch.v1";
/// Request/reply task submission.
pub const SUBMIT: &str = "orch.v1.submit";
/// Request/reply statistics.
pub const STATS: &str = "orch.v1.stats";
/// Every event of every task (a subscription wildcard).
pub const EVENTS_ALL: &str = "orch.v1.events.>";

/// Request/reply lookup of a stored result: `{"task_id": "..."}`.
pub const RESULTS_GET: &str = "orch.v1.results.get";
/// Every durable task (the intake stream's subjects).
pub const TASKS_ALL: &str = "orch.v1.tasks.>";
/// Every dead-lettered task.
pub const DEAD_ALL: &str = "orch.v1.dead.>";

/// Every queued unit of work (pull dispatch).
pub const QUEUE_ALL: &str = "orch.v1.queue.>";
/// Work-queue stream for pull (least-loaded) dispatch.
pub const STREAM_WORK: &str = "ORCH_WORK";
/// Priority group of the pull consumers on [`STREAM_WORK`].
pub const WORK_PRIORITY_GROUP: &str = "workers";

/// Work-queue stream of durable tasks.
pub const STREAM_TASKS: &str = "ORCH_TASKS";
/// Stream capturing every task event.
pub const STREAM_EVENTS: &str = "ORCH_EVENTS";
/// `max_expires` of the ordered consumers that follow [`STREAM_EVENTS`] (the
/// stats projection, event replay): their pull requests expire this soon and
/// their idle heartbeat is half of it, so a consumer whose stream leader died
/// is noticed (two missed heartbeats) and recreated within seconds. With the
/// client's defaults (30 s expiry, 15 s heartbeat) a follower stalled for 30 s
/// after losing a cluster node.
pub const FOLLOW_MAX_EXPIRES: std::time::Duration = std::time::Duration::from_secs(4);
/// Dead-letter stream: tasks that could not be processed, with the reason.
pub const STREAM_DEAD: &str = "ORCH_DEAD";
/// Durable pull consumer all coordinators share on [`STREAM_TASKS`].
pub const CONSUMER_TASKS: &str = "orch-coordinators";
/// Key-value bucket of results, keyed by task id.
pub const KV_RESULTS: &str = "orch_results";
/// Key-value bucket of cached results, keyed by request digest.
pub const KV_CACHE: &str = "orch_cache";
/// Key-value bucket of shared statistics snapshots.
pub const KV_STATS: &str = "orch_stats";
/// Object store bucket for screenshots too large to travel inline.
pub const OBJ_SCREENSHOTS: &str = "orch_screenshots";

/// Task ids that would collide with fixed subjects.
pub const RESERVED_TASK_IDS: &[&str] = &["get"];

/// Queue group shared by all coordinators, so each submit is handled once.
pub const COORDINATOR_QUEUE: &str = "orch-coordinator";

/// The subject a worker of `role` serving `slot` listens on.
pub fn work(role: Role, slot: &Slot) -> String {
    format!("{PREFIX}.work.{}.{}", role.as_str(), slot.as_str())
}

/// The queue group of workers serving `role`/`slot`: all copies share the load.
pub fn work_queue(role: Role, slot: &Slot) -> String {
    format!("orch-{}-{}", role.as_str(), slot.as_str())
}

/// The queue subject of `role`/`slot` for pull dispatch.
pub fn queue(role: Role, slot: &Slot) -> String {
    format!("{PREFIX}.queue.{}.{}", role.as_str(), slot.as_str())
}

/// The durable pull consumer of `role`/`slot` on [`STREAM_WORK`], shared by its workers.
pub fn queue_consumer(role: Role, slot: &Slot) -> String {
    format!("orch-{}-{}", role.as_str(), slot.as_str())
}

/// The reply subject of attempt `n` to a `role` worker, under a coordinator's
/// inbox `inbox` (from `Client::new_inbox`, e.g. `_INBOX_coordinator.<nuid>`).
pub fn attempt_reply(inbox: &str, role: Role, n: u64) -> String {
    format!("{inbox}.{}.{n}", role.as_str())
}

/// Every attempt reply under `inbox` (the coordinator's one reply subscription).
pub fn attempt_replies(inbox: &str) -> String {
    format!("{inbox}.*.*")
}

/// The attempt number of a subject built by [`attempt_reply`].
pub fn parse_attempt_reply(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

/// Where coordinators broadcast cancellations for `role`/`slot` (every copy listens).
pub fn cancel(role: Role, slot: &Slot) -> String {
    format!("{PREFIX}.cancel.{}.{}", role.as_str(), slot.as_str())
}

/// The subject of one event of one task.
pub fn event(task_id: &TaskId, kind: EventKind) -> String {
    format!("{PREFIX}.events.{}.{}", task_id.as_str(), kind.as_str())
}

/// Every event of one task (a subscription wildcard).
pub fn task_events(task_id: &TaskId) -> String {
    format!("{PREFIX}.events.{}.>", task_id.as_str())
}

/// Where a client publishes a durable task.
pub fn task(task_id: &TaskId) -> String {
    format!("{PREFIX}.tasks.{}", task_id.as_str())
}

/// Where a finished task's result is announced.
pub fn result(task_id: &TaskId) -> String {
    format!("{PREFIX}.results.{}", task_id.as_str())
}

/// Where a dead-lettered task is kept.
pub fn dead(task_id: &str) -> String {
    format!("{PREFIX}.dead.{task_id}")
}

/// The task id of `orch.v1.tasks.<task_id>`.
pub fn parse_task(subject: &str) -> Option<&str> {
    subject.strip_prefix(PREFIX)?.strip_prefix(".tasks.")
}

/// Parses `orch.v1.work.<role>.<slot>` back into its parts.
pub fn parse_work(subject: &str) -> Option<(Role, Slot)> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix(".work.")?;
    let (role, slot) = rest.split_once('.')?;
    Some((role.parse().ok()?, slot.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_subjects_round_trip() {
        let slot: Slot = "kimi_k2".parse().unwrap();
        let s = work(Role::Reasoner, &slot);
        assert_eq!(s, "orch.v1.work.reasoner.kimi_k2");
        assert_eq!(parse_work(&s), Some((Role::Reasoner, slot)));
        assert_eq!(parse_work("orch.v1.work.nope.x"), None);
    }

    #[test]
    fn attempt_replies_name_the_role() {
        let inbox = "_INBOX_coordinator.abc";
        let s = attempt_reply(inbox, Role::Vision, 42);
        assert_eq!(s, "_INBOX_coordinator.abc.vision.42");
        assert_eq!(parse_attempt_reply(&s), Some(42));
        assert_eq!(attempt_replies(inbox), "_INBOX_coordinator.abc.*.*");
        assert_eq!(parse_attempt_reply("_INBOX_coordinator.abc.vision.x"), None);
    }

    #[test]
    fn event_subjects() {
        let id: TaskId = "t1".parse().unwrap();
        assert_eq!(
            event(&id, EventKind::ActionStart),
            "orch.v1.events.t1.action_start"
        );
        assert_eq!(task_events(&id), "orch.v1.events.t1.>");
    }
}
