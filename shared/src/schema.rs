//! JSON Schemas of the public messages, generated from the Rust types so they
//! cannot drift. The files under `shared/schemas/` are checked against these by
//! a test; regenerate with `ORCH_BLESS_SCHEMAS=1 cargo test -p orch-shared schemas`.

use schemars::{JsonSchema, Schema, schema_for};

use crate::error::ErrorBody;
use crate::wire::{
    Event, OrchestratedResult, Plan, ResultQuery, StatsReport, SubmitRequest, Verdict,
    VisionAnalysis, WebFindings, WorkReply, WorkRequest,
};

fn named<T: JsonSchema>(file: &'static str) -> (&'static str, Schema) {
    (file, schema_for!(T))
}

/// Every published schema with its file name.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        named::<SubmitRequest>("submit_request.json"),
        named::<OrchestratedResult>("orchestrated_result.json"),
        named::<ErrorBody>("error.json"),
        named::<ResultQuery>("result_query.json"),
        named::<StatsReport>("stats.json"),
        named::<Event>("event.json"),
        named::<WorkRequest>("work_request.json"),
        named::<WorkReply>("work_reply.json"),
        named::<VisionAnalysis>("vision_analysis.json"),
        named::<Plan>("plan.json"),
        named::<Verdict>("verdict.json"),
        named::<WebFindings>("web_findings.json"),
    ]
}

/// Pretty JSON text of a schema, as stored in the repository.
pub fn render(schema: &Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn schemas_are_up_to_date() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let bless = std::env::var_os("ORCH_BLESS_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (file, schema) in all() {
            let path = dir.join(file);
            let want = render(&schema);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                if bless {
                    std::fs::write(&path, want).unwrap();
                } else {
                    stale.push(file);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "schemas out of date: {stale:?}; run ORCH_BLESS_SCHEMAS=1 cargo test -p orch-shared schemas"
        );
    }
}
