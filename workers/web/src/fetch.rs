//! Fetches result pages over plain HTTP, with every limit a stranger's page
//! could otherwise push past: a per-page timeout (never past the job's
//! deadline), a response size cap (the body is streamed and reading stops at
//! the cap), a content-type allow-list, a redirect limit, and — unless
//! allowed — no private-network addresses (see [`crate::netguard`]).
//!
//! A fetched body is decoded to text (charset from the `Content-Type` header,
//! a BOM, or the page's `<meta charset>`), ready for [`crate::extract`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Url, redirect};

use crate::http::{self, error_chain, read_capped};
use crate::netguard::{self, PrivateOnly, PublicOnlyResolver};

/// The content types we read; anything else (PDF, images, binaries) is skipped.
pub const ALLOWED_CONTENT_TYPES: [&str; 3] = ["text/html", "application/xhtml+xml", "text/plain"];

/// Page fetch limits.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Limit per page (connect, headers and body), cut shorter by the job's deadline.
    pub page_timeout: Duration,
    /// Bytes of body read per page; the rest is not downloaded.
    pub max_bytes: usize,
    /// Redirects followed per page.
    pub max_redirects: usize,
    /// `User-Agent` sent.
    pub user_agent: String,
    /// Whether private, loopback and link-local addresses may be fetched.
    pub allow_private_addresses: bool,
}

/// What kind of document a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// `text/html` or `application/xhtml+xml`.
    Html,
    /// `text/plain`.
    Plain,
}

/// A fetched page, decoded.
#[derive(Debug, Clone)]
pub struct FetchedPage {
    /// The URL after redirects.
    pub final_url: Url,
    /// HTML or plain text.
    pub kind: PageKind,
    /// The decoded body (at most `max_bytes` of it).
    pub body: String,
    /// Whether the body was cut at `max_bytes`.
    pub truncated: bool,
}

/// Why a page was not fetched. Page failures are skipped, never fatal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// Not an absolute http(s) URL.
    #[error("{url}: not an http(s) URL")]
    InvalidUrl {
        /// The URL.
        url: String,
    },
    /// The URL or a redirect points at a private-network address.
    #[error("{url}: refused: {reason}")]
    Blocked {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// More redirects than allowed (or a loop).
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects {
        /// The URL first asked for.
        url: String,
        /// The limit.
        max: usize,
    },
    /// A content type we do not read.
    #[error("{url}: unsupported content type `{content_type}`")]
    UnsupportedContentType {
        /// The final URL.
        url: String,
        /// What the server sent (empty when it sent none).
        content_type: String,
    },
    /// A non-success HTTP status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The final URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The page did not arrive within its time limit.
    #[error("{url}: timed out after {} ms", .after.as_millis())]
    TimedOut {
        /// The URL.
        url: String,
        /// The limit that passed.
        after: Duration,
    },
    /// Connecting or reading failed.
    #[error("{url}: {detail}")]
    Transport {
        /// The URL.
        url: String,
        /// Details.
        detail: String,
    },
}

/// A redirect the policy stopped (the limit, or a private address).
#[derive(Debug, thiserror::Error)]
enum RedirectStop {
    #[error("more than {0} redirects")]
    TooMany(usize),
    #[error("redirect to {url} refused: {reason}")]
    Blocked { url: String, reason: String },
}

/// Why a [`PageFetcher`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the page HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// The page fetcher: one HTTP client (connection pool) for every job.
#[derive(Debug, Clone)]
pub struct PageFetcher {
    cfg: Arc<FetchConfig>,
    http: reqwest::Client,
}

impl PageFetcher {
    /// Builds the fetcher.
    ///
    /// # Errors
    /// When the TLS stack cannot be initialised.
    pub fn new(cfg: FetchConfig) -> Result<PageFetcher, BuildError> {
        http::install_crypto_provider();
        let max = cfg.max_redirects;
        let allow_private = cfg.allow_private_addresses;
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(RedirectStop::TooMany(max));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                let url = attempt.url().to_string();
                return attempt.error(RedirectStop::Blocked {
                    url,
                    reason: "not http(s)".into(),
                });
            }
            if !allow_private && let Err(reason) = netguard::check_url(attempt.url()) {
                let url = attempt.url().to_string();
                return attempt.error(RedirectStop::Blocked { url, reason });
            }
            attempt.follow()
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .redirect(policy)
            .connect_timeout(cfg.page_timeout)
            .pool_max_idle_per_host(2);
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(PageFetcher {
            http: builder.build()?,
            cfg: Arc::new(cfg),
        })
    }

    /// The limits in use.
    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// Fetches `url`, giving up at the page timeout or `deadline`, whichever is first.
    ///
    /// # Errors
    /// Why the page cannot be used; see [`FetchError`].
    pub async fn fetch(&self, url: &str, deadline: Instant) -> Result<FetchedPage, FetchError> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| FetchError::InvalidUrl {
                url: url.to_string(),
            })?;
        if !self.cfg.allow_private_addresses {
            netguard::check_url(&parsed).map_err(|reason| FetchError::Blocked {
                url: url.to_string(),
                reason,
            })?;
        }
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(self.cfg.page_timeout);
        match tokio::time::timeout(limit, self.fetch_inner(parsed)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::TimedOut {
                url: url.to_string(),
                after: limit,
            }),
        }
    }

    async fn fetch_inner(&self, url: Url) -> Result<FetchedPage, FetchError> {
        let resp = self
            .http
            .get(url.clone())
            .header(ACCEPT, "text/html,application/xhtml+xml,text/plain;q=0.9")
            .send()
            .await
            .map_err(|e| self.send_error(&url, e))?;
        let final_url = resp.url().clone();
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: final_url.to_string(),
                status: status.as_u16(),
            });
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let kind = match mime.as_str() {
            "text/html" | "application/xhtml+xml" => PageKind::Html,
            "text/plain" => PageKind::Plain,
            _ => {
                return Err(FetchError::UnsupportedContentType {
                    url: final_url.to_string(),
                    content_type,
                });
            }
        };
        let body =
            read_capped(resp, self.cfg.max_bytes)
                .await
                .map_err(|e| FetchError::Transport {
                    url: final_url.to_string(),
                    detail: error_chain(&e.without_url()),
                })?;
        let text = decode(&body.bytes, &content_type, kind);
        Ok(FetchedPage {
            final_url,
            kind,
            body: text,
            truncated: body.truncated,
        })
    }

    fn send_error(&self, url: &Url, e: reqwest::Error) -> FetchError {
        let url_s = url.to_string();
        let e = e.without_url();
        // The redirect policy's and the resolver's own errors sit in the source chain.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = src {
            if let Some(stop) = err.downcast_ref::<RedirectStop>() {
                return match stop {
                    RedirectStop::TooMany(max) => FetchError::TooManyRedirects {
                        url: url_s,
                        max: *max,
                    },
                    RedirectStop::Blocked { url, reason } => FetchError::Blocked {
                        url: url.clone(),
                        reason: reason.clone(),
                    },
                };
            }
            if let Some(p) = err.downcast_ref::<PrivateOnly>() {
                return FetchError::Blocked {
                    url: url_s,
                    reason: p.to_string(),
                };
            }
            src = err.source();
        }
        if e.is_timeout() {
            return FetchError::TimedOut {
                url: url_s,
                after: self.cfg.page_timeout,
            };
        }
        FetchError::Transport {
            url: url_s,
            detail: error_chain(&e),
        }
    }
}

/// Decodes a body: charset from `Content-Type`, else a BOM, else (HTML) a
/// `<meta charset>` in the first KiB, else UTF-8. Invalid bytes become U+FFFD.
pub(crate) fn decode(bytes: &[u8], content_type: &str, kind: PageKind) -> String {
    let from_header = charset_param(content_type);
    let from_meta = || {
        (kind == PageKind::Html)
            .then(|| meta_charset(&bytes[..bytes.len().min(1024)]))
            .flatten()
    };
    let label = from_header.or_else(from_meta);
    let encoding = label
        .and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    // `decode` sniffs a BOM first, as browsers do.
    let (text, _, _) = encoding.decode(bytes);
    text.into_owned()
}

fn charset_param(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn meta_charset(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let at = text.find("charset=")? + "charset=".len();
    let rest = text[at..].trim_start_matches(['"', '\'', ' ']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_are_honoured() {
        let latin1 = b"caf\xe9";
        assert_eq!(
            decode(latin1, "text/plain; charset=ISO-8859-1", PageKind::Plain),
            "café"
        );
        let html = b"<html><head><meta charset=\"windows-1252\"></head><body>caf\xe9</body></html>";
        assert!(decode(html, "text/html", PageKind::Html).contains("café"));
        let meta =
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\">\xe9";
        assert!(decode(meta, "text/html", PageKind::Html).ends_with('é'));
        assert_eq!(
            decode("café".as_bytes(), "text/html", PageKind::Html),
            "café"
        );
        // A BOM wins over nothing.
        assert_eq!(
            decode(b"\xef\xbb\xbfok", "text/plain", PageKind::Plain),
            "ok"
        );
    }
}
