//! The four worker roles and the tool names clients use to select them.
//!
//! Clients speak the seed's vocabulary (`kimi_k2`, `chatgpt`, `web_search`) as
//! well as role names; [`Role::from_tool`] is the one place that maps them.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A kind of worker. Each role scales on its own and has its own subjects.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Screenshot analysis (Ollama / OpenAI-compatible vision models).
    Vision,
    /// Web search and page fetch.
    Web,
    /// Primary planning (Kimi K2, fallbacks).
    Reasoner,
    /// A second model's verdict on the primary answer.
    Verifier,
}

impl Role {
    /// Every role, in pipeline order.
    pub const ALL: [Role; 4] = [Role::Vision, Role::Web, Role::Reasoner, Role::Verifier];

    /// The role's wire name (also its subject token).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Vision => "vision",
            Role::Web => "web",
            Role::Reasoner => "reasoner",
            Role::Verifier => "verifier",
        }
    }

    /// Maps a client-supplied tool name (role names and the seed's aliases) to a role.
    ///
    /// Matching ignores ASCII case and surrounding whitespace.
    pub fn from_tool(name: &str) -> Option<Role> {
        let name = name.trim().to_ascii_lowercase();
        Some(match name.as_str() {
            "vision" | "ollama_vision" | "minicpm" | "minicpm_v" => Role::Vision,
            "web" | "web_search" | "browser" => Role::Web,
            "reasoner" | "reasoning" | "kimi_k2" | "kimi" => Role::Reasoner,
            "verifier" | "verification" | "chatgpt" => Role::Verifier,
            _ => return None,
        })
    }

    /// The tool names accepted by [`Role::from_tool`], for error messages and docs.
    pub const TOOL_NAMES: &'static [&'static str] = &[
        "vision",
        "ollama_vision",
        "minicpm",
        "minicpm_v",
        "web",
        "web_search",
        "browser",
        "reasoner",
        "reasoning",
        "kimi_k2",
        "kimi",
        "verifier",
        "verification",
        "chatgpt",
    ];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned when a string names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (expected vision, web, reasoner or verifier)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vision" => Ok(Role::Vision),
            "web" => Ok(Role::Web),
            "reasoner" => Ok(Role::Reasoner),
            "verifier" => Ok(Role::Verifier),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// A small set of roles (a bit set; the order of iteration is pipeline order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    /// The empty set.
    pub const EMPTY: RoleSet = RoleSet(0);

    const fn bit(role: Role) -> u8 {
        1 << (role as u8)
    }

    /// Adds a role.
    pub fn insert(&mut self, role: Role) {
        self.0 |= Self::bit(role);
    }

    /// Removes a role.
    pub fn remove(&mut self, role: Role) {
        self.0 &= !Self::bit(role);
    }

    /// Whether the set holds `role`.
    pub const fn contains(self, role: Role) -> bool {
        self.0 & Self::bit(role) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles in pipeline order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut set = RoleSet::EMPTY;
        for role in iter {
            set.insert(role);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_aliases_map_to_roles() {
        assert_eq!(Role::from_tool("kimi_k2"), Some(Role::Reasoner));
        assert_eq!(Role::from_tool("chatgpt"), Some(Role::Verifier));
        assert_eq!(Role::from_tool("web_search"), Some(Role::Web));
        assert_eq!(Role::from_tool(" Vision "), Some(Role::Vision));
        assert_eq!(Role::from_tool("telepathy"), None);
    }

    #[test]
    fn every_documented_tool_name_parses() {
        for name in Role::TOOL_NAMES {
            assert!(Role::from_tool(name).is_some(), "{name}");
        }
    }

    #[test]
    fn role_set_iterates_in_pipeline_order() {
        let set: RoleSet = [Role::Verifier, Role::Vision, Role::Reasoner]
            .into_iter()
            .collect();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![Role::Vision, Role::Reasoner, Role::Verifier]
        );
        assert!(!set.contains(Role::Web));
    }
}
