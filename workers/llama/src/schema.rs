//! Preparing a request's JSON Schema for grammar-constrained sampling.
//!
//! llama.cpp turns a schema into a grammar, and the grammar guarantees the
//! shape — but only for what it can express, and only if the model finishes
//! before the token cap. An unbounded string or array lets a small model ramble
//! until the cap and end with truncated JSON; a `number` with `minimum` and
//! `maximum` is not bounded by the grammar at all. [`bound_schema`] therefore
//! narrows the schema before it becomes a grammar. Every rewrite only narrows,
//! so whatever the bounded schema accepts, the original accepts too.

use serde_json::{Map, Value};

/// Limits applied where a schema sets none (or a looser one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `maxLength` for strings.
    pub max_string_chars: u64,
    /// `maxItems` for arrays.
    pub max_items: u64,
}

impl Bounds {
    /// The bounds inside an array's items: halved (to at least 2 items and 32
    /// characters), because every item repeats them — a list of lists must
    /// not multiply out past the token cap.
    pub fn nested(self) -> Bounds {
        Bounds {
            max_string_chars: (self.max_string_chars / 2).max(32.min(self.max_string_chars)),
            max_items: (self.max_items / 2).max(2.min(self.max_items)),
        }
    }
}

/// Sized so a plan (an answer and up to four steps of tool, arguments and
/// reason) fits the default 768-token cap: a small model otherwise
/// fills strings and lists with repetitions until the cap cuts the JSON off.
pub const DEFAULT_BOUNDS: Bounds = Bounds {
    max_string_chars: 120,
    max_items: 4,
};

/// Points a bounded `number` range is sampled at (`minimum`, `maximum` and
/// evenly spaced values between): 0.05 steps for the usual 0..=1 confidence.
const NUMBER_STEPS: u32 = 20;

/// Returns a copy of `schema` that the grammar can enforce completely within a
/// token budget: strings get `maxLength`, arrays `maxItems`, free-form object
/// values become bounded strings, and `number`s with both `minimum` and
/// `maximum` become an `enum` of values in that range.
pub fn bound_schema(schema: &Value, bounds: Bounds) -> Value {
    let mut out = schema.clone();
    bound_node(&mut out, bounds);
    out
}

fn bound_node(node: &mut Value, bounds: Bounds) {
    let Value::Object(map) = node else {
        return;
    };
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            children.values_mut().for_each(|c| bound_node(c, bounds));
        }
    }
    for key in [
        "items",
        "prefixItems",
        "contains",
        "additionalProperties",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        let inner = match key {
            "items" | "prefixItems" | "contains" => bounds.nested(),
            _ => bounds,
        };
        match map.get_mut(key) {
            Some(Value::Array(children)) => children.iter_mut().for_each(|c| bound_node(c, inner)),
            Some(child @ Value::Object(_)) => bound_node(child, inner),
            _ => {}
        }
    }
    if ["enum", "const", "$ref"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        return;
    }
    let types = type_names(map);
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("string") && !map.contains_key("pattern") && !map.contains_key("format") {
        clamp_max(map, "maxLength", "minLength", bounds.max_string_chars);
    }
    if has("array") {
        clamp_max(map, "maxItems", "minItems", bounds.max_items);
    }
    if has("object") {
        let free_form = match map.get("additionalProperties") {
            Some(Value::Bool(true)) => true,
            None => !map.contains_key("properties"),
            Some(_) => false,
        };
        if free_form {
            let value = serde_json::json!({"type": "string", "maxLength": bounds.max_string_chars});
            map.insert("additionalProperties".into(), value);
        }
    }
    if types == ["number"] {
        if let Some(values) = number_steps(map) {
            map.insert("enum".into(), Value::Array(values));
        }
    }
}

/// The schema's `type` as a list (`"string"` or `["string", "null"]`).
fn type_names(map: &Map<String, Value>) -> Vec<String> {
    match map.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Sets `max_key` to at most `limit`, but never below `min_key`.
fn clamp_max(map: &mut Map<String, Value>, max_key: &str, min_key: &str, limit: u64) {
    let current = map.get(max_key).and_then(Value::as_u64).unwrap_or(u64::MAX);
    let floor = map.get(min_key).and_then(Value::as_u64).unwrap_or(0);
    map.insert(max_key.into(), Value::from(current.min(limit).max(floor)));
}

/// Evenly spaced values in `[minimum, maximum]` (exclusive bounds honoured),
/// or `None` unless both bounds are finite numbers with `minimum < maximum`.
fn number_steps(map: &Map<String, Value>) -> Option<Vec<Value>> {
    let bound = |inclusive: &str, exclusive: &str| {
        let excl = map.get(exclusive).and_then(Value::as_f64);
        match (map.get(inclusive).and_then(Value::as_f64), excl) {
            (_, Some(e)) => Some((e, true)),
            (Some(i), None) => Some((i, false)),
            (None, None) => None,
        }
    };
    let (lo, lo_excl) = bound("minimum", "exclusiveMinimum")?;
    let (hi, hi_excl) = bound("maximum", "exclusiveMaximum")?;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return None;
    }
    let values: Vec<Value> = (0..=NUMBER_STEPS)
        .map(|i| lo + (hi - lo) * f64::from(i) / f64::from(NUMBER_STEPS))
        .map(|v| (v * 1e4).round() / 1e4)
        .filter(|v| (!lo_excl || *v > lo) && (!hi_excl || *v < hi))
        .map(Value::from)
        .collect();
    (!values.is_empty()).then_some(values)
}

/// The instruction appended to the system prompt when the answer must follow
/// `schema`: the grammar enforces the shape, but the model writes better
/// content when it can read what the fields mean.
pub fn schema_instruction(name: &str, schema: &Value) -> String {
    format!(
        "Reply with a single JSON object (\"{name}\") that follows this JSON Schema, and nothing else:\n{schema}"
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const B: Bounds = Bounds {
        max_string_chars: 100,
        max_items: 4,
    };

    #[test]
    fn strings_and_arrays_get_bounds_everywhere() {
        let schema = json!({
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "short": {"type": "string", "maxLength": 10},
                "long": {"type": "string", "maxLength": 1000, "minLength": 500},
                "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}},
                "maybe": {"type": ["string", "null"]},
                "either": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
            },
            "$defs": {"Step": {"type": "object", "properties": {"why": {"type": "string"}}}}
        });
        let out = bound_schema(&schema, B);
        let p = &out["properties"];
        assert_eq!(p["answer"]["maxLength"], 100);
        assert_eq!(p["short"]["maxLength"], 10, "a tighter bound is kept");
        assert_eq!(p["long"]["maxLength"], 500, "never below minLength");
        assert_eq!(p["steps"]["maxItems"], 4);
        assert_eq!(p["maybe"]["maxLength"], 100);
        assert_eq!(p["either"]["anyOf"][0]["maxLength"], 100);
        assert_eq!(p["either"]["anyOf"][1]["maxItems"], 4);
        assert_eq!(
            p["either"]["anyOf"][1]["items"]["maxLength"], 50,
            "items: halved"
        );
        assert_eq!(out["$defs"]["Step"]["properties"]["why"]["maxLength"], 100);
        assert_eq!(
            schema["properties"]["answer"].get("maxLength"),
            None,
            "input untouched"
        );
    }

    #[test]
    fn bounds_shrink_inside_arrays() {
        let schema = json!({
            "type": "object",
            "properties": {
                "steps": {"type": "array", "maxItems": 12, "items": {
                    "type": "object",
                    "properties": {
                        "why": {"type": "string", "maxLength": 500},
                        "args": {"type": "array", "items": {"type": "object", "properties": {
                            "value": {"type": "string"}
                        }}}
                    }
                }}
            }
        });
        let out = bound_schema(&schema, B);
        let steps = &out["properties"]["steps"];
        assert_eq!(steps["maxItems"], 4);
        let step = &steps["items"]["properties"];
        assert_eq!(step["why"]["maxLength"], 50);
        assert_eq!(step["args"]["maxItems"], 2);
        assert_eq!(
            step["args"]["items"]["properties"]["value"]["maxLength"], 32,
            "floor"
        );
        let tiny = Bounds {
            max_string_chars: 10,
            max_items: 1,
        };
        assert_eq!(tiny.nested(), tiny, "never above the outer bounds");
    }

    #[test]
    fn enums_patterns_and_refs_are_left_alone() {
        let schema = json!({
            "type": "object",
            "properties": {
                "verdict": {"type": "string", "enum": ["approved", "rejected"]},
                "id": {"type": "string", "pattern": "^[a-z]+$"},
                "when": {"type": "string", "format": "date"},
                "step": {"$ref": "#/$defs/Step"}
            }
        });
        let out = bound_schema(&schema, B);
        assert_eq!(out["properties"], schema["properties"]);
    }

    #[test]
    fn free_form_objects_get_bounded_string_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "args": {"type": "object", "additionalProperties": true},
                "bare": {"type": "object"},
                "closed": {"type": "object", "properties": {}, "additionalProperties": false},
                "typed": {"type": "object", "additionalProperties": {"type": "integer"}}
            },
            "additionalProperties": false
        });
        let out = bound_schema(&schema, B);
        let p = &out["properties"];
        let bounded = json!({"type": "string", "maxLength": 100});
        assert_eq!(p["args"]["additionalProperties"], bounded);
        assert_eq!(p["bare"]["additionalProperties"], bounded);
        assert_eq!(p["closed"]["additionalProperties"], false);
        assert_eq!(
            p["typed"]["additionalProperties"],
            json!({"type": "integer"})
        );
        assert_eq!(out["additionalProperties"], false);
    }

    #[test]
    fn bounded_numbers_become_an_enum_inside_the_range() {
        let out = bound_schema(&json!({"type": "number", "minimum": 0, "maximum": 1}), B);
        let values: Vec<f64> = out["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(values.len(), 21);
        assert_eq!(values.first(), Some(&0.0));
        assert_eq!(values.get(3), Some(&0.15), "rounded, no float noise");
        assert_eq!(values.last(), Some(&1.0));

        let out = bound_schema(
            &json!({"type": "number", "exclusiveMinimum": 0, "maximum": 10}),
            B,
        );
        let values = out["enum"].as_array().expect("enum");
        assert!(
            values
                .iter()
                .filter_map(Value::as_f64)
                .all(|v| v > 0.0 && v <= 10.0)
        );
        assert_eq!(values.len(), 20);

        for open in [
            json!({"type": "number", "minimum": 0}),
            json!({"type": "number"}),
            json!({"type": "number", "minimum": 1, "maximum": 1}),
            json!({"type": "integer", "minimum": 0, "maximum": 5}),
        ] {
            assert_eq!(bound_schema(&open, B), open, "{open}");
        }
    }

    #[test]
    fn the_instruction_names_the_schema() {
        let text = schema_instruction("plan", &json!({"type": "object"}));
        assert!(text.contains("\"plan\""));
        assert!(text.ends_with(r#"{"type":"object"}"#), "{text}");
    }
}
