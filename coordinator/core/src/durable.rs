//! JetStream resources, created or updated idempotently at startup:
//!
//! | resource | kind | what for |
//! |---|---|---|
//! | `ORCH_TASKS` | work-queue stream on `orch.v1.tasks.>` | durable task intake (dedup by `Nats-Msg-Id`) |
//! | `orch-coordinators` | durable pull consumer on it | shared by every coordinator |
//! | `ORCH_EVENTS` | stream on `orch.v1.events.>` | replayable events, source of shared stats |
//! | `ORCH_DEAD` | stream on `orch.v1.dead.>` | tasks that could not be processed, with the reason |
//! | `orch_results` | KV | results by task id (TTL) |
//! | `orch_stats` | KV | snapshots of the stats projection |
//! | `orch_cache` | KV | cached results by request digest (only with `--cache-ttl`) |
//! | `orch_screenshots` | object store | screenshots too large to send inline |
//! | `ORCH_WORK` | work-queue stream on `orch.v1.queue.>` | pull (least-loaded) dispatch; workers create their consumers |
//!
//! Startup fails with one clear line when the server is older than 2.10 or
//! has JetStream off.

use async_nats::Client;
use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use orch_shared::subjects;

use crate::config::DurableConfig;

/// Oldest server the JetStream features are tested with.
pub const MIN_SERVER: (u64, u64) = (2, 10);

/// Why the JetStream resources could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server is too old.
    #[error("nats-server {found} is too old: orch needs >= {}.{} for its JetStream features (or run with --no-jetstream)", MIN_SERVER.0, MIN_SERVER.1)]
    TooOld {
        /// The version the server reported.
        found: String,
    },
    /// JetStream is disabled on the server or account.
    #[error(
        "JetStream is not enabled for this account on the NATS server (start nats-server with -js, or run with --no-jetstream): {0}"
    )]
    NoJetStream(String),
    /// Creating or updating a resource failed.
    #[error("creating {what} `{name}`: {message}")]
    Create {
        /// Stream, consumer, bucket, ...
        what: &'static str,
        /// Its name.
        name: String,
        /// Server's answer.
        message: String,
    },
}

fn create_err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(String) -> SetupError + 'a {
    move |message| SetupError::Create {
        what,
        name: name.to_string(),
        message,
    }
}

/// Handles to every JetStream resource the coordinator uses.
#[derive(Clone)]
pub struct Durable {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// Settings.
    pub config: DurableConfig,
    /// The task intake stream.
    pub tasks: stream::Stream,
    /// The event stream.
    pub events: stream::Stream,
    /// Results by task id.
    pub results: kv::Store,
    /// Stats snapshots.
    pub stats: kv::Store,
    /// Cached results (when enabled).
    pub cache: Option<kv::Store>,
    /// Large screenshots.
    pub screenshots: object_store::ObjectStore,
}

/// Parses `major.minor` out of a server version string.
pub fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Durable {
    /// Checks the server and creates or updates every resource.
    ///
    /// # Errors
    /// See [`SetupError`].
    pub async fn setup(client: &Client, config: &DurableConfig) -> Result<Durable, SetupError> {
        let version = client.server_info().version;
        match parse_version(&version) {
            Some(v) if v >= MIN_SERVER => {}
            _ => return Err(SetupError::TooOld { found: version }),
        }
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .map_err(|e| SetupError::NoJetStream(e.to_string()))?;
        let r = config.replicas;

        let tasks = js
            .create_or_update_stream(stream::Config {
                name: subjects::STREAM_TASKS.into(),
                description: Some("orch durable task intake (work queue)".into()),
                subjects: vec![subjects::TASKS_ALL.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: r,
                duplicate_window: config.dedup_window,
                max_age: config.task_max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| create_err("stream", subjects::STREAM_TASKS)(e.to_string()))?;
        let _ = tasks;
        let tasks = js
            .get_stream(subjects::STREAM_TASKS)
            .await
            .map_err(|e| create_err("stream", subjects::STREAM_TASKS)(e.to_string()))?;
        tasks
            .create_consumer(consumer::pull::Config {
                durable_name: Some(subjects::CONSUMER_TASKS.into()),
                description: Some("every orch coordinator pulls tasks from here".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: config.max_ack_pending,
                num_replicas: r,
                ..Default::default()
            })
            .await
            .map_err(|e| create_err("consumer", subjects::CONSUMER_TASKS)(e.to_string()))?;

        js.create_or_update_stream(stream::Config {
            name: subjects::STREAM_EVENTS.into(),
            description: Some("orch task events".into()),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: r,
            max_age: config.events_max_age,
            max_bytes: config.events_max_bytes,
            duplicate_window: config.dedup_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| create_err("stream", subjects::STREAM_EVENTS)(e.to_string()))?;
        let events = js
            .get_stream(subjects::STREAM_EVENTS)
            .await
            .map_err(|e| create_err("stream", subjects::STREAM_EVENTS)(e.to_string()))?;

        js.create_or_update_stream(stream::Config {
            name: subjects::STREAM_WORK.into(),
            description: Some("orch queued work for pull (least-loaded) dispatch".into()),
            subjects: vec![subjects::QUEUE_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: r,
            // Queued work is useless once its budget ran out; ten minutes bounds leftovers.
            max_age: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(|e| create_err("stream", subjects::STREAM_WORK)(e.to_string()))?;

        js.create_or_update_stream(stream::Config {
            name: subjects::STREAM_DEAD.into(),
            description: Some("orch tasks that could not be processed".into()),
            subjects: vec![subjects::DEAD_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: r,
            max_age: config.dead_max_age,
            ..Default::default()
        })
        .await
        .map_err(|e| create_err("stream", subjects::STREAM_DEAD)(e.to_string()))?;

        let kv = |bucket: &str, max_age, history| kv::Config {
            bucket: bucket.into(),
            history,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: r,
            ..Default::default()
        };
        let results = js
            .create_or_update_key_value(kv(subjects::KV_RESULTS, config.results_ttl, 1))
            .await
            .map_err(|e| create_err("key-value bucket", subjects::KV_RESULTS)(e.to_string()))?;
        let stats = js
            .create_or_update_key_value(kv(subjects::KV_STATS, std::time::Duration::ZERO, 1))
            .await
            .map_err(|e| create_err("key-value bucket", subjects::KV_STATS)(e.to_string()))?;
        let cache = match config.cache_ttl {
            Some(ttl) => Some(
                js.create_or_update_key_value(kv(subjects::KV_CACHE, ttl, 1))
                    .await
                    .map_err(|e| {
                        create_err("key-value bucket", subjects::KV_CACHE)(e.to_string())
                    })?,
            ),
            None => None,
        };
        let screenshots = match js.get_object_store(subjects::OBJ_SCREENSHOTS).await {
            Ok(store) => store,
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: subjects::OBJ_SCREENSHOTS.into(),
                    description: Some("orch screenshots too large to send inline".into()),
                    max_age: config.screenshots_ttl,
                    storage: stream::StorageType::File,
                    num_replicas: r,
                    ..Default::default()
                })
                .await
                .map_err(|e| create_err("object store", subjects::OBJ_SCREENSHOTS)(e.to_string()))?
            }
        };
        Ok(Durable {
            js,
            config: config.clone(),
            tasks,
            events,
            results,
            stats,
            cache,
            screenshots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert_eq!(parse_version("v2.10.0-beta.3"), Some((2, 10)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }
}
