//! Header names the fleet puts on NATS messages.

/// MIME type of the payload: [`crate::codec::JSON`] (default) or [`crate::codec::MSGPACK`].
pub const CONTENT_TYPE: &str = "Content-Type";
/// On error replies: the [`crate::ErrorCode`] wire name.
pub const ORCH_ERROR: &str = "Orch-Error";
/// On work requests: milliseconds left in the task's budget when the request was sent.
pub const ORCH_BUDGET_MS: &str = "Orch-Budget-Ms";
/// On messages to a reply inbox: `heartbeat` while work is in progress; absent on the final reply.
pub const ORCH_KIND: &str = "Orch-Kind";
/// Value of [`ORCH_KIND`] for progress heartbeats.
pub const KIND_HEARTBEAT: &str = "heartbeat";
/// On work requests: an id the coordinator can later cancel by.
pub const ORCH_REQUEST_ID: &str = "Orch-Request-Id";
/// On worker replies and heartbeats: the id of the worker instance that did the work.
pub const ORCH_WORKER_ID: &str = "Orch-Worker-Id";
/// On work requests: the task id (for logs and traces on the worker side).
pub const ORCH_TASK_ID: &str = "Orch-Task-Id";
/// NATS micro's error description header (set on worker error replies).
pub const NATS_SERVICE_ERROR: &str = "Nats-Service-Error";
/// NATS micro's numeric error code header.
pub const NATS_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// On queued work (pull dispatch): the inbox to send heartbeats and the reply to.
pub const ORCH_REPLY_TO: &str = "Orch-Reply-To";
