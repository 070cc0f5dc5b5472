//! Finding live services through the NATS micro protocol: `$SRV.INFO` says
//! who is there (name, id, metadata: role, slot, provider, model), `$SRV.STATS`
//! how busy each one is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt as _;
use serde::Deserialize;

use crate::ClientError;

/// One running service instance (a worker or a coordinator).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInstance {
    /// Service name (`orch-vision`, `orch-coordinator`, ...).
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Metadata (`role`, `slot`, `provider`, `model`, `concurrency`, ...).
    pub metadata: HashMap<String, String>,
    /// Subjects of its endpoints.
    pub subjects: Vec<String>,
    /// Requests handled, summed over endpoints.
    pub requests: u64,
    /// Errors, summed over endpoints.
    pub errors: u64,
    /// Custom stats of the first endpoint (`in_flight`, `running`, `capacity`, ...).
    pub data: serde_json::Value,
}

impl ServiceInstance {
    /// A metadata value, or `""`.
    pub fn meta(&self, key: &str) -> &str {
        self.metadata.get(key).map_or("", String::as_str)
    }
}

#[derive(Deserialize)]
struct InfoEndpoint {
    subject: String,
}

#[derive(Deserialize)]
struct Info {
    name: String,
    id: String,
    version: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    endpoints: Vec<InfoEndpoint>,
}

#[derive(Deserialize)]
struct StatsEndpoint {
    #[serde(default)]
    num_requests: u64,
    #[serde(default)]
    num_errors: u64,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Stats {
    id: String,
    #[serde(default)]
    endpoints: Vec<StatsEndpoint>,
}

async fn gather(
    client: &Client,
    subject: &str,
    wait: Duration,
) -> Result<Vec<async_nats::Message>, ClientError> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ClientError::Nats(e.to_string()))?;
    client
        .publish_with_reply(subject.to_string(), inbox, bytes::Bytes::new())
        .await
        .map_err(|e| ClientError::Nats(e.to_string()))?;
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline.into(), sub.next()).await {
        out.push(m);
    }
    Ok(out)
}

/// Asks every micro service for its info and stats, collecting replies for `wait`.
///
/// # Errors
/// When NATS fails.
pub async fn discover(
    client: &Client,
    wait: Duration,
) -> Result<Vec<ServiceInstance>, ClientError> {
    let (infos, stats) = tokio::try_join!(
        gather(client, "$SRV.INFO", wait),
        gather(client, "$SRV.STATS", wait)
    )?;
    let mut stats_by_id: HashMap<String, Stats> = HashMap::new();
    for m in stats {
        if let Ok(s) = serde_json::from_slice::<Stats>(&m.payload) {
            stats_by_id.insert(s.id.clone(), s);
        }
    }
    let mut out: Vec<ServiceInstance> = infos
        .into_iter()
        .filter_map(|m| serde_json::from_slice::<Info>(&m.payload).ok())
        .map(|i| {
            let st = stats_by_id.remove(&i.id);
            let (requests, errors, data) = st.map_or((0, 0, serde_json::Value::Null), |s| {
                (
                    s.endpoints.iter().map(|e| e.num_requests).sum(),
                    s.endpoints.iter().map(|e| e.num_errors).sum(),
                    s.endpoints
                        .into_iter()
                        .find_map(|e| e.data)
                        .unwrap_or(serde_json::Value::Null),
                )
            });
            ServiceInstance {
                name: i.name,
                id: i.id,
                version: i.version,
                metadata: i.metadata.unwrap_or_default(),
                subjects: i.endpoints.into_iter().map(|e| e.subject).collect(),
                requests,
                errors,
                data,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.name.as_str(), a.meta("slot"), a.id.as_str()).cmp(&(
            b.name.as_str(),
            b.meta("slot"),
            b.id.as_str(),
        ))
    });
    Ok(out)
}
