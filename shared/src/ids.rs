//! Validated identifiers that end up inside NATS subjects: task ids and slot names.
//!
//! Both become a single subject token, so both are restricted to
//! `[A-Za-z0-9_-]`; anything else would let a client inject wildcards or extra
//! tokens into a subject.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn token_schema(max: usize, desc: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]+$",
        "minLength": 1,
        "maxLength": max,
        "description": desc,
    })
}

/// Longest task id we accept; ids are subject tokens and KV keys.
pub const MAX_TASK_ID_LEN: usize = 128;
/// Longest slot name we accept.
pub const MAX_SLOT_LEN: usize = 64;

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: use 1-{max} characters from A-Z a-z 0-9 _ -")]
pub struct InvalidId {
    /// Which kind of identifier.
    pub what: &'static str,
    /// The refused value (truncated for display).
    pub value: String,
    /// The length limit.
    pub max: usize,
}

fn invalid(what: &'static str, value: &str, max: usize) -> InvalidId {
    InvalidId {
        what,
        value: value.chars().take(80).collect(),
        max,
    }
}

/// A task identifier: one subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh, time-ordered id (UUIDv7, so ids sort by creation time).
    pub fn generate() -> TaskId {
        TaskId(uuid::Uuid::now_v7().simple().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TaskId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_token(s, MAX_TASK_ID_LEN) && !crate::subjects::RESERVED_TASK_IDS.contains(&s) {
            Ok(TaskId(s.to_string()))
        } else {
            Err(invalid("task_id", s, MAX_TASK_ID_LEN))
        }
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named backend for a role (`kimi_k2`, `chatgpt`, `local`, ...): one subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Slot(String);

impl Slot {
    /// The slot every role falls back to when none is named.
    pub const DEFAULT: &'static str = "default";

    /// The slot name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `default` slot.
    pub fn default_slot() -> Slot {
        Slot(Self::DEFAULT.to_string())
    }
}

impl FromStr for Slot {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_token(s, MAX_SLOT_LEN) {
            Ok(Slot(s.to_string()))
        } else {
            Err(invalid("slot", s, MAX_SLOT_LEN))
        }
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for TaskId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TaskId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        token_schema(MAX_TASK_ID_LEN, "Task id: one NATS subject token.")
    }
}

impl JsonSchema for Slot {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Slot".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        token_schema(
            MAX_SLOT_LEN,
            "Slot name (kimi_k2, chatgpt, local, default, ...): one NATS subject token.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_single_tokens() {
        assert!("abc-123_X".parse::<TaskId>().is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "get", &"x".repeat(129)] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_unique() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().parse::<TaskId>().is_ok());
    }

    #[test]
    fn slots_validate_on_deserialize() {
        assert!(serde_json::from_str::<Slot>("\"kimi_k2\"").is_ok());
        assert!(serde_json::from_str::<Slot>("\"a.b\"").is_err());
    }
}
