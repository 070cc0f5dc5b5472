//! API keys: held in a type that cannot be printed by accident.
//!
//! `Debug` and `Display` show `***`, so a key inside a config struct that is
//! logged with `?config` stays hidden. The only way to read the key is
//! [`ApiKey::expose`], used where the `Authorization` header is built, and
//! [`ApiKey::scrub`], which removes the key from text a server sent back
//! (some APIs echo the key they refused).

use std::fmt;

use reqwest::header::HeaderValue;

/// A secret credential. Never logged, never put in errors or spans.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

/// Why a string cannot be used as an API key. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    /// Empty or whitespace only.
    #[error("the API key is empty")]
    Empty,
    /// It holds characters an HTTP header cannot carry (control characters, non-ASCII).
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    NotHeaderSafe,
}

impl ApiKey {
    /// Wraps a key, trimming surrounding whitespace (keys read from files end with a newline).
    ///
    /// # Errors
    /// An empty key, or one that cannot be sent in a header.
    pub fn new(key: impl Into<String>) -> Result<ApiKey, InvalidKey> {
        let key = key.into();
        let key = key.trim();
        if key.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(InvalidKey::NotHeaderSafe);
        }
        Ok(ApiKey(key.to_string()))
    }

    /// The key itself. Only for building the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <key>`, marked sensitive so HTTP-layer debug output hides it.
    pub(crate) fn bearer(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Replaces every occurrence of the key in `text` with `***`.
    pub fn scrub(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let k = ApiKey::new("sk-secret-123\n").unwrap();
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert_eq!(format!("{k}"), "***");
        assert_eq!(k.expose(), "sk-secret-123");
        let b = k.bearer().unwrap();
        assert!(b.is_sensitive());
        assert!(!format!("{b:?}").contains("sk-secret"));
    }

    #[test]
    fn rejects_empty_and_unsafe_keys_without_echoing_them() {
        assert_eq!(ApiKey::new("  \n"), Err(InvalidKey::Empty));
        let e = ApiKey::new("sk-a\u{7}b").unwrap_err();
        assert!(!e.to_string().contains("sk-a"));
    }

    #[test]
    fn scrub_removes_echoed_keys() {
        let k = ApiKey::new("sk-live-abc").unwrap();
        assert_eq!(
            k.scrub("Incorrect API key provided: sk-live-abc."),
            "Incorrect API key provided: ***."
        );
    }
}
