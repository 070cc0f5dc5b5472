//! The JSON Schemas the models must answer in, one per role.
//!
//! They are the strict subset every structured-output engine accepts (OpenAI
//! `strict: true`, Ollama `format`, llama.cpp grammars): every property
//! required, `additionalProperties: false`, and every array and string
//! bounded (`maxItems`, `maxLength`), so a grammar-constrained local model
//! always reaches the end of the object. The reasoner's `tool` is an `enum` of
//! the request's `available_tools`, so a constrained model cannot invent one.
//!
//! A plan step's free-form `args` object cannot be expressed in the strict
//! subset, so models write it as a list of `{name, value}` pairs;
//! [`super::output`] turns that back into the wire's object.

use serde_json::{Value, json};

use crate::chat::OutputSchema;

/// Longest screen description (characters).
pub const MAX_DESCRIPTION: usize = 2000;
/// Most UI elements listed.
pub const MAX_ELEMENTS: usize = 30;
/// Longest element kind.
pub const MAX_ELEMENT_KIND: usize = 40;
/// Longest element label.
pub const MAX_ELEMENT_LABEL: usize = 200;
/// Most entries in a list of short sentences (errors, actions, issues).
pub const MAX_LIST_ITEMS: usize = 10;
/// Longest short sentence.
pub const MAX_SENTENCE: usize = 500;
/// Most plan steps.
pub const MAX_STEPS: usize = 12;
/// Longest tool name (the coordinator's limit for `available_tools` entries).
pub const MAX_TOOL_NAME: usize = 128;
/// Most arguments per step.
pub const MAX_ARGS: usize = 8;
/// Longest argument name.
pub const MAX_ARG_NAME: usize = 64;
/// Longest argument value.
pub const MAX_ARG_VALUE: usize = 1000;
/// Longest answer in prose.
pub const MAX_ANSWER: usize = 4000;

fn string(max: usize, description: &str) -> Value {
    json!({ "type": "string", "maxLength": max, "description": description })
}

fn list(max: usize, items: Value, description: &str) -> Value {
    json!({ "type": "array", "maxItems": max, "items": items, "description": description })
}

fn object(properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(k, _)| *k).collect();
    let props: serde_json::Map<String, Value> = properties
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

fn confidence(description: &str) -> Value {
    json!({ "type": "number", "minimum": 0, "maximum": 1, "description": description })
}

/// The vision role's answer: [`orch_shared::wire::VisionAnalysis`].
pub fn vision() -> OutputSchema {
    let element = object(&[
        (
            "kind",
            string(
                MAX_ELEMENT_KIND,
                "button, link, input, text, image, dialog, ...",
            ),
        ),
        (
            "label",
            string(MAX_ELEMENT_LABEL, "its visible label or text"),
        ),
    ]);
    OutputSchema {
        name: "vision_analysis".into(),
        schema: object(&[
            (
                "description",
                string(MAX_DESCRIPTION, "one paragraph describing the screen"),
            ),
            (
                "elements",
                list(MAX_ELEMENTS, element, "notable UI elements"),
            ),
            (
                "errors_detected",
                list(
                    MAX_LIST_ITEMS,
                    string(MAX_SENTENCE, "one visible error"),
                    "errors visible on screen; empty if none",
                ),
            ),
            (
                "suggested_actions",
                list(
                    MAX_LIST_ITEMS,
                    string(MAX_SENTENCE, "one action"),
                    "what to do next on this screen",
                ),
            ),
        ]),
    }
}

/// The reasoner's answer: [`orch_shared::wire::Plan`], with `tool` limited to `tools`.
pub fn plan(tools: &[String]) -> OutputSchema {
    let mut names: Vec<&str> = tools
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    let tool = if names.is_empty() {
        string(MAX_TOOL_NAME, "a tool name")
    } else {
        json!({ "type": "string", "enum": names, "description": "one of the available tools" })
    };
    let arg = object(&[
        ("name", string(MAX_ARG_NAME, "argument name")),
        ("value", string(MAX_ARG_VALUE, "argument value")),
    ]);
    let step = object(&[
        ("tool", tool),
        ("args", list(MAX_ARGS, arg, "the tool's arguments")),
        ("why", string(MAX_SENTENCE, "why this step")),
    ]);
    // No tools: no steps. The model explains in `answer` instead.
    let max_steps = if names.is_empty() { 0 } else { MAX_STEPS };
    OutputSchema {
        name: "plan".into(),
        schema: object(&[
            ("steps", list(max_steps, step, "ordered steps")),
            ("answer", string(MAX_ANSWER, "the answer in prose")),
            (
                "confidence",
                confidence("confidence that the plan accomplishes the task, 0 to 1"),
            ),
        ]),
    }
}

/// The verifier's answer: [`orch_shared::wire::Verdict`].
pub fn verdict() -> OutputSchema {
    OutputSchema {
        name: "verdict".into(),
        schema: object(&[
            (
                "verdict",
                json!({ "type": "string", "enum": ["approved", "rejected", "uncertain"] }),
            ),
            (
                "issues",
                list(
                    MAX_LIST_ITEMS,
                    string(MAX_SENTENCE, "one problem"),
                    "problems found; empty when approved",
                ),
            ),
            (
                "confidence",
                confidence("confidence in the verdict, 0 to 1"),
            ),
        ]),
    }
}

/// Checks that `schema` is in the strict, bounded subset described in the
/// module docs. Returns the first violation with its JSON path.
///
/// # Errors
/// A description of the first violation.
pub fn check_strict(schema: &Value) -> Result<(), String> {
    fn walk(s: &Value, path: &str) -> Result<(), String> {
        let ty = s.get("type").and_then(Value::as_str);
        match ty {
            Some("object") => {
                if s.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return Err(format!("{path}: additionalProperties must be false"));
                }
                let props = s
                    .get("properties")
                    .and_then(Value::as_object)
                    .ok_or_else(|| format!("{path}: object without properties"))?;
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (k, v) in props {
                    if !required.contains(&k.as_str()) {
                        return Err(format!("{path}.{k}: not required"));
                    }
                    walk(v, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            Some("array") => {
                if s.get("maxItems").and_then(Value::as_u64).is_none() {
                    return Err(format!("{path}: array without maxItems"));
                }
                let items = s
                    .get("items")
                    .ok_or_else(|| format!("{path}: array without items"))?;
                walk(items, &format!("{path}[]"))
            }
            Some("string") => {
                if s.get("maxLength").is_none() && s.get("enum").is_none() {
                    return Err(format!("{path}: string without maxLength or enum"));
                }
                Ok(())
            }
            Some("number" | "integer" | "boolean") => Ok(()),
            other => Err(format!("{path}: unsupported type {other:?}")),
        }
    }
    walk(schema, "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_schema_is_strict_and_bounded() {
        for s in [
            vision(),
            plan(&[]),
            plan(&["playwright_navigate".into(), "search".into()]),
            verdict(),
        ] {
            check_strict(&s.schema).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert!(
                s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
    }

    #[test]
    fn plan_tools_are_an_enum_and_no_tools_means_no_steps() {
        let s = plan(&["b".into(), "a".into(), "a".into(), " ".into()]).schema;
        assert_eq!(
            s["properties"]["steps"]["items"]["properties"]["tool"]["enum"],
            json!(["a", "b"])
        );
        assert_eq!(s["properties"]["steps"]["maxItems"], MAX_STEPS);
        assert_eq!(plan(&[]).schema["properties"]["steps"]["maxItems"], 0);
    }

    #[test]
    fn the_checker_catches_violations() {
        assert!(check_strict(&json!({"type": "object", "properties": {}})).is_err());
        assert!(check_strict(&json!({"type": "array", "items": {"type": "number"}})).is_err());
        assert!(check_strict(&json!({"type": "string"})).is_err());
        let not_required = json!({"type": "object", "properties": {"a": {"type": "number"}}, "required": [], "additionalProperties": false});
        assert!(check_strict(&not_required).is_err());
    }
}
