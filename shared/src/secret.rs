//! API keys: held in a type that cannot be printed by accident.
//!
//! `Debug` and `Display` show `***`, so a key inside a config struct that is
//! logged with `?config` stays hidden. The ways to the key are
//! [`ApiKey::header_value`] (flagged sensitive, so HTTP libraries redact it in
//! their own debug output), [`ApiKey::expose`] for other request parts, and
//! [`ApiKey::scrub`], which removes the key from text a server sent back
//! (some APIs echo the key they refused). Used by the model and web workers.

use std::fmt;
use std::path::Path;

use http::HeaderValue;

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

    /// Reads a key from a file (its first line, trimmed).
    ///
    /// # Errors
    /// A message naming the file (never its content) when it cannot be read
    /// or holds no usable key.
    pub fn from_file(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ApiKey::new(text.lines().next().unwrap_or(""))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key itself, for a request part that is not a header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `prefix` + key as a header value, marked sensitive.
    pub fn header_value(&self, prefix: &str) -> HeaderValue {
        // The key is visible ASCII (checked in `new`); so is every prefix we use.
        let mut v = HeaderValue::from_str(&format!("{prefix}{}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    /// `Bearer <key>`, marked sensitive.
    pub fn bearer(&self) -> HeaderValue {
        self.header_value("Bearer ")
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
    fn debug_display_and_headers_never_show_the_key() {
        let k = ApiKey::new("  sk-secret-123\n").unwrap();
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert_eq!(format!("{k}"), "***");
        assert_eq!(k.expose(), "sk-secret-123");
        let b = k.bearer();
        assert!(b.is_sensitive());
        assert_eq!(b.to_str().ok(), Some("Bearer sk-secret-123"));
        assert!(!format!("{b:?}").contains("sk-secret"));
        assert!(k.header_value("").is_sensitive());
    }

    #[test]
    fn rejects_empty_and_unsafe_keys_without_echoing_them() {
        assert_eq!(ApiKey::new("  \n"), Err(InvalidKey::Empty));
        for bad in ["sk-a\u{7}b", "bad\u{7f}key", "sk-ä"] {
            let e = ApiKey::new(bad).unwrap_err();
            assert!(!e.to_string().contains("sk-a") && !e.to_string().contains("bad"));
        }
    }

    #[test]
    fn files_give_their_first_line_and_errors_name_only_the_file() {
        let dir = std::env::temp_dir().join(format!("orch-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("key");
        std::fs::write(&good, "sk-from-file\nsecond line\n").unwrap();
        assert_eq!(ApiKey::from_file(&good).unwrap().expose(), "sk-from-file");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = ApiKey::from_file(&empty).unwrap_err();
        assert!(
            e.contains("empty") && e.contains(&empty.display().to_string()),
            "{e}"
        );
        assert!(
            ApiKey::from_file(&dir.join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
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
