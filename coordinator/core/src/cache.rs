//! The result cache (the seed's "caching of model outputs for identical
//! tasks"): optional (`--cache-ttl`), keyed by a SHA-256 of the normalized
//! request — task, roles, available tools (as a set), context, web query,
//! screenshot digest, verification, and the slots each role would try — so a
//! change of fallback chain is a different key. Requests opt out with
//! `"cache": false`. Only results with a primary answer are cached; a cached
//! answer carries `cached: true`.

use async_nats::jetstream::kv;
use bytes::Bytes;
use orch_shared::Role;
use orch_shared::wire::OrchestratedResult;
use sha2::{Digest as _, Sha256};

use crate::config::CoordinatorConfig;
use crate::pipeline::TaskSpec;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of a task.
pub fn key(spec: &TaskSpec, config: &CoordinatorConfig) -> String {
    let mut tools = spec.available_tools.clone();
    tools.sort();
    tools.dedup();
    let screenshot = match (&spec.screenshot, &spec.screenshot_ref) {
        (Some(b), _) => Some(hex(&Sha256::digest(&b.0))),
        (None, Some(r)) => Some(format!("ref:{}", r.name)),
        (None, None) => None,
    };
    let slots: Vec<(Role, Vec<String>)> = spec
        .roles
        .iter()
        .map(|r| (r, config.chain(r).iter().map(ToString::to_string).collect()))
        .collect();
    let normalized = serde_json::json!({
        "v": 1,
        "task": spec.task.trim(),
        "roles": slots,
        "available_tools": tools,
        "context": spec.context.as_deref().map(str::trim),
        "web_query": spec.roles.contains(Role::Web).then(|| spec.web_query().trim()),
        "screenshot": screenshot,
    });
    hex(&Sha256::digest(normalized.to_string().as_bytes()))
}

/// A cached result for `key`, if any.
pub async fn lookup(store: &kv::Store, key: &str) -> Option<OrchestratedResult> {
    match store.get(key).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cache lookup failed; running the task");
            None
        }
    }
}

/// Caches `result` under `key` (only results with a primary answer).
pub async fn store(store: &kv::Store, key: &str, result: &OrchestratedResult) {
    if !result.succeeded() || result.cached {
        return;
    }
    match serde_json::to_vec(result) {
        Ok(bytes) => {
            if let Err(e) = store.put(key, Bytes::from(bytes)).await {
                tracing::warn!(error = %e, "cache store failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cache encode failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::SubmitRequest;

    fn spec(v: serde_json::Value) -> TaskSpec {
        TaskSpec::from_request(
            serde_json::from_value::<SubmitRequest>(v).unwrap(),
            &CoordinatorConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn equal_requests_share_a_key_and_differences_do_not() {
        let c = CoordinatorConfig::default();
        let a = key(
            &spec(serde_json::json!({"task": "t", "available_tools": ["b", "a"], "task_id": "x1"})),
            &c,
        );
        let b = key(
            &spec(
                serde_json::json!({"task": " t ", "available_tools": ["a", "b"], "task_id": "x2"}),
            ),
            &c,
        );
        assert_eq!(a, b, "ids, whitespace and tool order do not matter");
        let d = key(
            &spec(serde_json::json!({"task": "t", "available_tools": ["a"]})),
            &c,
        );
        assert_ne!(a, d);
        let e = key(
            &spec(serde_json::json!({"task": "t", "available_tools": ["a", "b"], "verify": true})),
            &c,
        );
        assert_ne!(a, e, "verification changes the answer");
        let mut other = CoordinatorConfig::default();
        other
            .chains
            .insert(Role::Reasoner, vec!["local".parse().unwrap()]);
        assert_ne!(
            a,
            key(
                &spec(serde_json::json!({"task": "t", "available_tools": ["a", "b"]})),
                &other
            )
        );
    }
}
