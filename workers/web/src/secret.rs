//! API keys: read from an environment variable or a file, kept in a type
//! that cannot be printed, and turned into header values marked sensitive.
//!
//! A key never reaches a log line, a span, an error message or `Debug`
//! output: the only way to the text is [`ApiKey::header_value`].

use std::fmt;
use std::path::Path;

use reqwest::header::HeaderValue;

/// A secret API key. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps `key`, trimmed of surrounding whitespace (files end with a
    /// newline). `None` when nothing is left or it cannot go in a header.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        let usable = !key.is_empty() && HeaderValue::from_str(key).is_ok();
        usable.then(|| ApiKey(key.to_string()))
    }

    /// Reads a key from a file (first line; surrounding whitespace trimmed).
    ///
    /// # Errors
    /// A message naming the file (never its content) when it cannot be read or is empty.
    pub fn from_file(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let first = text.lines().next().unwrap_or("");
        ApiKey::new(first).ok_or_else(|| {
            format!(
                "{} holds no usable key (empty, or not valid in an HTTP header)",
                path.display()
            )
        })
    }

    /// The key as a header value (`prefix` + key), flagged sensitive so HTTP
    /// libraries redact it in their own debug output.
    pub(crate) fn header_value(&self, prefix: &str) -> HeaderValue {
        // Validated in `new`; a prefix of visible ASCII keeps it valid.
        let mut v = HeaderValue::from_str(&format!("{prefix}{}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
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
    fn keys_are_trimmed_and_never_printed() {
        let k = ApiKey::new("  sk-secret-123\n").expect("usable key");
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert_eq!(format!("{k}"), "***");
        let v = k.header_value("Bearer ");
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().ok(), Some("Bearer sk-secret-123"));
        assert!(!format!("{v:?}").contains("sk-secret"));
    }

    #[test]
    fn unusable_keys_are_refused() {
        assert!(ApiKey::new("   ").is_none());
        assert!(ApiKey::new("bad\u{7f}key").is_none());
    }
}
