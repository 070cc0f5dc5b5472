//! HTTP plumbing shared by the search backends and the page fetcher: the
//! process-wide TLS provider, bounded body reads, `Retry-After` parsing and
//! short printable excerpts of bodies for error messages.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Installs ring as rustls' process-wide crypto provider. reqwest is built
/// with `rustls-no-provider`, so a client cannot be built before this ran.
/// Idempotent; an already installed provider (someone else's) is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already: that one serves us too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A body read up to a cap.
#[derive(Debug)]
pub(crate) struct CappedBody {
    /// At most the cap's worth of bytes.
    pub bytes: Vec<u8>,
    /// Whether the body went on past the cap (the rest was not read).
    pub truncated: bool,
}

/// Reads `resp`'s body chunk by chunk and stops at `max` bytes, so a huge or
/// endless body costs at most `max` bytes of memory. Dropping the response
/// afterwards closes the connection.
///
/// # Errors
/// The transport error that interrupted the body.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<CappedBody, reqwest::Error> {
    let hint = resp.content_length().unwrap_or(0).min(max as u64) as usize;
    let mut bytes = Vec::with_capacity(hint.min(256 * 1024));
    while let Some(chunk) = resp.chunk().await? {
        let room = max - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes,
        truncated: false,
    })
}

/// The wait a server asked for with `Retry-After` (delay-seconds or an HTTP date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The first `max` characters of a body, printable, for error messages.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max * 4)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

/// An error with its sources, `a: b: c`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn excerpts_are_bounded_and_printable() {
        assert_eq!(excerpt(b"a\nb", 10), "a b");
        assert_eq!(excerpt("é".repeat(50).as_bytes(), 3), "ééé…");
        let mut s = "aé".to_string();
        truncate_utf8(&mut s, 2);
        assert_eq!(s, "a");
    }
}
