//! Turning a model's reply text into a validated role output.
//!
//! Models wrap JSON in code fences, prose or `<think>` blocks even when told
//! not to (and always in `json_object` mode on some servers), so the outermost
//! JSON object is extracted first. It is then decoded into the wire type
//! ([`VisionAnalysis`], [`Plan`], [`Verdict`]) and checked for what a type
//! cannot say: confidences within 0..=1, non-empty answers. Over-long lists and
//! strings are cut to the schema's bounds rather than refused.

use orch_shared::Role;
use orch_shared::wire::{Plan, PlanStep, UiElement, Verdict, VisionAnalysis};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::schema::{
    MAX_ANSWER, MAX_ARG_NAME, MAX_ARG_VALUE, MAX_ARGS, MAX_DESCRIPTION, MAX_ELEMENT_KIND,
    MAX_ELEMENT_LABEL, MAX_ELEMENTS, MAX_LIST_ITEMS, MAX_SENTENCE, MAX_STEPS, MAX_TOOL_NAME,
};

/// How many `{` positions are tried before giving up on finding an object.
const MAX_CANDIDATES: usize = 16;

/// Parses and validates `text` as `role`'s output; returns the wire JSON.
///
/// # Errors
/// Why the text is not a valid output, phrased for the model (it is quoted
/// back to it in the repair request).
pub fn parse(role: Role, text: &str) -> Result<Value, String> {
    let value = extract_json(text).ok_or_else(|| {
        if text.trim().is_empty() {
            "the reply is empty".to_string()
        } else {
            "the reply contains no complete JSON object".to_string()
        }
    })?;
    let out = match role {
        Role::Vision => serde_json::to_value(vision(value)?),
        Role::Reasoner => serde_json::to_value(plan(value)?),
        Role::Verifier => serde_json::to_value(verdict(value)?),
        Role::Web => return Err("the web role does not use a language model".into()),
    };
    out.map_err(|e| format!("re-encoding the output failed: {e}"))
}

/// The outermost JSON object in `text`: the whole text, the inside of a code
/// fence, or the first balanced `{...}` that parses. `<think>` blocks are skipped.
pub fn extract_json(text: &str) -> Option<Value> {
    let text = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    };
    let trimmed = text.trim();
    if let Ok(v @ Value::Object(_)) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    if let Some(inner) = fenced(trimmed)
        && let Some(v) = first_object(inner)
    {
        return Some(v);
    }
    first_object(trimmed)
}

/// The body of the first ``` fence (with or without a language tag).
fn fenced(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let rest = &text[start + 3..];
    let body_start = rest.find('\n').map_or(0, |i| i + 1);
    let body = &rest[body_start..];
    let end = body.find("```").unwrap_or(body.len());
    Some(&body[..end])
}

/// The first balanced `{...}` (string-aware) that parses as an object.
fn first_object(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut from = 0;
    for _ in 0..MAX_CANDIDATES {
        let start = from + text[from..].find('{')?;
        if let Some(end) = balanced_end(&bytes[start..])
            && let Ok(v @ Value::Object(_)) = serde_json::from_str(&text[start..start + end])
        {
            return Some(v);
        }
        from = start + 1;
    }
    None
}

/// Length of the balanced object starting at `b[0] == b'{'`, if it closes.
fn balanced_end(b: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn cut(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn cut_list(v: Vec<String>, max_items: usize, max_len: usize) -> Vec<String> {
    v.into_iter()
        .map(|s| cut(&s, max_len))
        .filter(|s| !s.is_empty())
        .take(max_items)
        .collect()
}

fn check_confidence(c: f64) -> Result<f64, String> {
    if c.is_finite() && (0.0..=1.0).contains(&c) {
        Ok(c)
    } else {
        Err(format!(
            "`confidence` must be a number within 0..=1 (e.g. 0.7), got {c}"
        ))
    }
}

fn decode<T: for<'de> Deserialize<'de>>(v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("the object is not a valid {what}: {e}"))
}

fn vision(v: Value) -> Result<VisionAnalysis, String> {
    let a: VisionAnalysis = decode(v, "vision analysis")?;
    let description = cut(&a.description, MAX_DESCRIPTION);
    if description.is_empty() {
        return Err("`description` must not be empty".into());
    }
    Ok(VisionAnalysis {
        description,
        elements: a
            .elements
            .into_iter()
            .map(|e| UiElement {
                kind: cut(&e.kind, MAX_ELEMENT_KIND),
                label: cut(&e.label, MAX_ELEMENT_LABEL),
            })
            .take(MAX_ELEMENTS)
            .collect(),
        errors_detected: cut_list(a.errors_detected, MAX_LIST_ITEMS, MAX_SENTENCE),
        suggested_actions: cut_list(a.suggested_actions, MAX_LIST_ITEMS, MAX_SENTENCE),
    })
}

/// A plan as models write it: `args` as `{name, value}` pairs (the strict
/// schema's form) or, from less constrained models, as an object.
#[derive(Deserialize)]
struct ModelPlan {
    #[serde(default)]
    steps: Vec<ModelStep>,
    answer: String,
    confidence: f64,
}

#[derive(Deserialize)]
struct ModelStep {
    tool: String,
    #[serde(default)]
    args: ModelArgs,
    #[serde(default)]
    why: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ModelArgs {
    Pairs(Vec<ArgPair>),
    Object(Map<String, Value>),
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs::Object(Map::new())
    }
}

#[derive(Deserialize)]
struct ArgPair {
    name: String,
    value: Value,
}

fn bound_value(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(cut(&s, MAX_ARG_VALUE)),
        other => {
            if other.to_string().len() > MAX_ARG_VALUE {
                Value::String(cut(&other.to_string(), MAX_ARG_VALUE))
            } else {
                other
            }
        }
    }
}

fn plan(v: Value) -> Result<Plan, String> {
    let p: ModelPlan = decode(v, "plan")?;
    let confidence = check_confidence(p.confidence)?;
    let answer = cut(&p.answer, MAX_ANSWER);
    if answer.is_empty() {
        return Err("`answer` must not be empty".into());
    }
    let mut steps = Vec::new();
    for (i, s) in p.steps.into_iter().take(MAX_STEPS).enumerate() {
        let tool = cut(&s.tool, MAX_TOOL_NAME);
        if tool.is_empty() {
            return Err(format!("step {} has an empty `tool`", i + 1));
        }
        let args: Map<String, Value> = match s.args {
            ModelArgs::Pairs(pairs) => pairs
                .into_iter()
                .map(|a| (cut(&a.name, MAX_ARG_NAME), bound_value(a.value)))
                .filter(|(k, _)| !k.is_empty())
                .take(MAX_ARGS)
                .collect(),
            ModelArgs::Object(map) => map
                .into_iter()
                .map(|(k, v)| (cut(&k, MAX_ARG_NAME), bound_value(v)))
                .filter(|(k, _)| !k.is_empty())
                .take(MAX_ARGS)
                .collect(),
        };
        steps.push(PlanStep {
            tool,
            args,
            why: cut(&s.why, MAX_SENTENCE),
        });
    }
    Ok(Plan {
        steps,
        answer,
        confidence,
    })
}

fn verdict(mut v: Value) -> Result<Verdict, String> {
    // "Approved" and " approved " mean approved; anything else is refused by the enum.
    if let Some(Value::String(s)) = v.get_mut("verdict") {
        *s = s.trim().to_ascii_lowercase();
    }
    let d: Verdict = decode(v, "verdict")?;
    Ok(Verdict {
        verdict: d.verdict,
        issues: cut_list(d.issues, MAX_LIST_ITEMS, MAX_SENTENCE),
        confidence: check_confidence(d.confidence)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::VerdictKind;
    use serde_json::json;

    #[test]
    fn extracts_from_fences_prose_and_think_blocks() {
        let want = json!({"a": {"b": "}"}});
        for text in [
            r#"{"a": {"b": "}"}}"#,
            "```json\n{\"a\": {\"b\": \"}\"}}\n```",
            "Sure! Here is the plan:\n```\n{\"a\": {\"b\": \"}\"}}\n```\nHope it helps.",
            "Here you go: {\"a\": {\"b\": \"}\"}} -- done {not json}",
            "<think>maybe {\"x\": 1}</think>\n{\"a\": {\"b\": \"}\"}}",
            "{broken {\"a\": {\"b\": \"}\"}}",
        ] {
            assert_eq!(extract_json(text), Some(want.clone()), "{text}");
        }
        assert_eq!(extract_json("no json here"), None);
        assert_eq!(extract_json("{\"a\": 1"), None);
        assert_eq!(extract_json("[1, 2]"), None);
    }

    #[test]
    fn plans_accept_pairs_or_objects_and_are_bounded() {
        let v = parse(
            Role::Reasoner,
            &json!({
                "steps": [
                    {"tool": "nav", "args": [{"name": "url", "value": "https://x"}], "why": "go"},
                    {"tool": "extract", "args": {"limit": 5}, "why": "read"}
                ],
                "answer": "do it",
                "confidence": 0.75
            })
            .to_string(),
        )
        .unwrap();
        let p: Plan = serde_json::from_value(v).unwrap();
        assert_eq!(p.steps[0].args["url"], "https://x");
        assert_eq!(p.steps[1].args["limit"], 5);
        assert_eq!(p.confidence, 0.75);
        let many: Vec<Value> = (0..40)
            .map(|i| json!({"tool": "t", "args": [], "why": format!("{i}")}))
            .collect();
        let v = parse(
            Role::Reasoner,
            &json!({"steps": many, "answer": "x".repeat(10_000), "confidence": 1}).to_string(),
        )
        .unwrap();
        let p: Plan = serde_json::from_value(v).unwrap();
        assert_eq!(p.steps.len(), MAX_STEPS);
        assert_eq!(p.answer.len(), MAX_ANSWER);
    }

    #[test]
    fn semantic_checks() {
        let e = parse(
            Role::Reasoner,
            r#"{"steps": [], "answer": "a", "confidence": 85}"#,
        )
        .unwrap_err();
        assert!(e.contains("within 0..=1"), "{e}");
        let e = parse(
            Role::Reasoner,
            r#"{"steps": [], "answer": " ", "confidence": 0.5}"#,
        )
        .unwrap_err();
        assert!(e.contains("answer"), "{e}");
        let e = parse(Role::Reasoner, r#"{"steps": [], "confidence": 0.5}"#).unwrap_err();
        assert!(e.contains("missing field `answer`"), "{e}");
        let e = parse(
            Role::Verifier,
            r#"{"verdict": "maybe", "issues": [], "confidence": 0.5}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let v = parse(
            Role::Verifier,
            r#"{"verdict": "Rejected", "issues": ["wrong tool"], "confidence": 0.9}"#,
        )
        .unwrap();
        let d: Verdict = serde_json::from_value(v).unwrap();
        assert_eq!(d.verdict, VerdictKind::Rejected);
        let e = parse(Role::Vision, r#"{"description": ""}"#).unwrap_err();
        assert!(e.contains("description"), "{e}");
        let v = parse(Role::Vision, r#"{"description": "a login form"}"#).unwrap();
        assert_eq!(v["elements"], json!([]));
        assert_eq!(parse(Role::Vision, "").unwrap_err(), "the reply is empty");
    }
}
