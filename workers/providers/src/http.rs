//! HTTP plumbing shared by the model backends: one way to build a reqwest
//! client (rustls with the ring provider, connect timeout, no redirects, a
//! User-Agent), bounded body reads, turning an HTTP error reply into a typed
//! [`ProviderError`], and the deadline/cancel wrapper every call runs under.
//!
//! It exists so the OpenAI-compatible and Ollama backends agree on every
//! rule that is not about their wire format.

use std::future::Future;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use orch_worker::JobContext;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::chat::ProviderError;
use crate::retry;

/// Sent with every request, so server operators can tell who is calling.
pub const USER_AGENT: &str = concat!("orch/", env!("CARGO_PKG_VERSION"));
/// TCP + TLS handshake limit. Model APIs answer the handshake in well under a
/// second; longer means the host is unreachable, and the retry loop (bounded
/// by the job's deadline) decides what happens next.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest non-streamed response body read. A chat completion for our role
/// schemas is a few KiB; 16 MiB is generous and still bounds memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read: error replies are short JSON documents.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest server message carried into an error (characters).
pub const MAX_MESSAGE_CHARS: usize = 400;

/// Installs rustls' ring crypto provider for the process (once; a provider
/// installed earlier by someone else is kept).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: that one serves us too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `base` with `path` appended (one `/` between them, whatever `base` ends with).
///
/// # Errors
/// [`ProviderError::BadRequest`] for a base URL that cannot take a path.
pub fn endpoint(base: &reqwest::Url, path: &str) -> Result<reqwest::Url, ProviderError> {
    reqwest::Url::parse(&format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    ))
    .map_err(|e| ProviderError::BadRequest(format!("invalid base URL: {e}")))
}

/// Builds the HTTP client a backend uses for its whole life (connection pool included).
///
/// Redirects are not followed: an API endpoint that redirects a POST is
/// misconfigured, and following it could send the key to another host.
///
/// # Errors
/// [`ProviderError::Unavailable`] when the TLS stack cannot be set up.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::Unavailable(format!("building the HTTP client: {}", chain(&e))))
}

/// Runs `fut` until it finishes, the job's deadline passes or the job is
/// cancelled. Dropping `fut` aborts any HTTP exchange in flight.
///
/// # Errors
/// `fut`'s error, [`ProviderError::TimedOut`] or [`ProviderError::Cancelled`].
pub async fn under_deadline<T, F>(ctx: &JobContext, what: &str, fut: F) -> Result<T, ProviderError>
where
    F: Future<Output = Result<T, ProviderError>>,
{
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Err(ProviderError::Cancelled),
        () = tokio::time::sleep_until(ctx.deadline.into()) => {
            Err(ProviderError::TimedOut(format!("{what}: the job's deadline passed")))
        }
        r = fut => r,
    }
}

/// The error and its sources on one line (reqwest's own message is vague:
/// "error sending request"; the cause is in the chain). URLs are left out.
pub fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    if let Some(url) = e.url() {
        out = out.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    bounded(&out)
}

/// Sends a model request and checks the answer's status. With
/// `first_token_timeout` (a streamed request), a server that sends no
/// response headers within it has stalled. A non-2xx answer is read (bounded)
/// and classified, its text passed through `scrub` (which removes secrets).
///
/// # Errors
/// The classified failure.
pub async fn send_checked(
    rb: reqwest::RequestBuilder,
    first_token_timeout: Option<Duration>,
    scrub: &(dyn Fn(&str) -> String + Sync),
) -> Result<reqwest::Response, Failure> {
    let send = rb.send();
    let resp = match first_token_timeout {
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(r) => r,
            Err(_) => {
                return Err(Failure::fatal(ProviderError::TimedOut(format!(
                    "the stream stalled: no response within {} ms",
                    limit.as_millis()
                ))));
            }
        },
        None => send.await,
    };
    let mut resp = resp.map_err(|e| send_error(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let headers = resp.headers().clone();
        let body = read_bounded(&mut resp, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let f = classify(status, &headers, &body, scrub);
        tracing::debug!(status = status.as_u16(), error = %f.error, "model request failed");
        return Err(f);
    }
    Ok(resp)
}

/// Whether the answer's `Content-Type` starts with `mime`.
pub fn content_type_is(resp: &reqwest::Response, mime: &str) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(mime))
}

/// What sending a request and waiting for the response headers can fail with.
pub fn send_error(e: &reqwest::Error) -> Failure {
    let message = chain(e);
    if e.is_builder() {
        // The request could not even be built: another try builds the same thing.
        Failure::fatal(ProviderError::Unavailable(message))
    } else if e.is_connect() {
        Failure::retry(ProviderError::Unavailable(message), None)
    } else if e.is_timeout() {
        Failure::retry(ProviderError::TimedOut(message), None)
    } else {
        // A connection reset mid-request and the like: worth another try.
        Failure::retry(
            ProviderError::Upstream {
                status: None,
                message,
            },
            None,
        )
    }
}

/// Reads a whole body, refusing more than `max` bytes.
///
/// # Errors
/// [`ProviderError::Upstream`] when the body is too large or breaks off.
pub async fn read_bounded(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Bytes, ProviderError> {
    let status = resp.status().as_u16();
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    return Err(ProviderError::Upstream {
                        status: Some(status),
                        message: format!("response body larger than {max} bytes"),
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(ProviderError::Upstream {
                    status: Some(status),
                    message: format!("reading the response body: {}", chain(&e)),
                });
            }
        }
    }
}

/// Makes server-supplied text safe to carry in an error: one line, at most
/// [`MAX_MESSAGE_CHARS`] characters.
pub fn bounded(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_MESSAGE_CHARS + 3));
    let mut n = 0;
    let mut last_space = false;
    for c in s.trim().chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if n == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        n += 1;
    }
    out
}

/// The interesting parts of an error reply body, whatever the server's dialect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorInfo {
    /// The human-readable message.
    pub message: String,
    /// OpenAI `error.type` (`insufficient_quota`, `invalid_request_error`, ...).
    pub kind: Option<String>,
    /// OpenAI `error.code` (may be a string or a number upstream; kept as text).
    pub code: Option<String>,
    /// OpenAI `error.param` (`response_format`, ...).
    pub param: Option<String>,
}

impl ErrorInfo {
    /// Parses OpenAI (`{"error": {"message", "type", "code", "param"}}`),
    /// Ollama (`{"error": "..."}`) and vLLM/FastAPI (`{"message": ...}`,
    /// `{"detail": ...}`) error bodies. Anything else becomes its text.
    pub fn parse(body: &[u8]) -> ErrorInfo {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorInfo {
                message: String::from_utf8_lossy(body).into_owned(),
                ..ErrorInfo::default()
            };
        };
        let obj = match v.get("error") {
            Some(serde_json::Value::String(s)) => {
                return ErrorInfo {
                    message: s.clone(),
                    ..ErrorInfo::default()
                };
            }
            Some(e @ serde_json::Value::Object(_)) => e,
            _ => &v,
        };
        let message = ["message", "detail", "msg"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(text))
            .unwrap_or_else(|| obj.to_string());
        ErrorInfo {
            message,
            kind: obj.get("type").and_then(text),
            code: obj.get("code").and_then(text),
            param: obj.get("param").and_then(text),
        }
    }

    fn is(&self, what: &str) -> bool {
        self.kind.as_deref() == Some(what) || self.code.as_deref() == Some(what)
    }

    /// Whether the account is out of credit (OpenAI `insufficient_quota`,
    /// Moonshot `exceeded_current_quota_error`): retrying will not help.
    pub fn is_quota(&self) -> bool {
        self.is("insufficient_quota") || self.is("exceeded_current_quota_error")
    }

    /// Whether a 400 says the server does not support `response_format`
    /// `json_schema` (so we fall back to `json_object` + the schema in the prompt).
    pub fn rejects_response_format(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        let about = self.param.as_deref() == Some("response_format")
            || m.contains("response_format")
            || m.contains("response format")
            || m.contains("json_schema")
            || m.contains("json schema");
        let refusal = [
            "not support",
            "unsupported",
            "not available",
            "not allowed",
            "not permitted",
            "invalid",
            "unknown",
            "unrecognized",
            "must be",
        ];
        about && refusal.iter().any(|r| m.contains(r))
    }
}

/// A failed exchange, with what the retry loop needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The error reported if we give up.
    pub error: ProviderError,
    /// Whether another attempt may succeed (429, 5xx, connect errors).
    pub retryable: bool,
    /// The server's requested wait (`retry-after-ms` / `Retry-After`).
    pub retry_after: Option<Duration>,
    /// A 400 refusing `response_format` (OpenAI-compatible backends only).
    pub rejects_response_format: bool,
}

impl Failure {
    /// A failure that is final.
    pub fn fatal(error: ProviderError) -> Failure {
        Failure {
            error,
            retryable: false,
            retry_after: None,
            rejects_response_format: false,
        }
    }

    /// A failure worth another attempt (after `retry_after` if the server said so).
    pub fn retry(error: ProviderError, retry_after: Option<Duration>) -> Failure {
        Failure {
            error,
            retryable: true,
            retry_after,
            rejects_response_format: false,
        }
    }
}

/// Maps an HTTP error reply to a typed failure.
///
/// - 401/403 → `Unauthorized`; 402 or a quota error type → `QuotaExceeded` (final);
/// - 429 → `RateLimited` (retryable, honouring the server's wait);
/// - 408, 5xx → `Upstream{status}` (retryable);
/// - any other status → `BadRequest` (4xx) or `Upstream{status}`, final.
///
/// `scrub` removes the API key from the server's text (some servers echo it).
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    scrub: &dyn Fn(&str) -> String,
) -> Failure {
    let info = ErrorInfo::parse(body);
    let mut message = bounded(&scrub(&info.message));
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_string();
    }
    let code = status.as_u16();
    if info.is_quota() || code == 402 {
        return Failure::fatal(ProviderError::QuotaExceeded(message));
    }
    match code {
        401 | 403 => Failure::fatal(ProviderError::Unauthorized(message)),
        429 => {
            let wait = retry::retry_after(headers, std::time::SystemTime::now());
            Failure::retry(
                ProviderError::RateLimited {
                    message,
                    retry_after: wait,
                },
                wait,
            )
        }
        408 | 500..=599 => {
            let wait = retry::retry_after(headers, std::time::SystemTime::now());
            Failure::retry(
                ProviderError::Upstream {
                    status: Some(code),
                    message,
                },
                wait,
            )
        }
        400..=499 => Failure {
            rejects_response_format: code == 400 && info.rejects_response_format(),
            ..Failure::fatal(ProviderError::BadRequest(format!("HTTP {code}: {message}")))
        },
        _ => Failure::fatal(ProviderError::Upstream {
            status: Some(code),
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn no_scrub(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn parses_every_error_dialect() {
        let openai = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let i = ErrorInfo::parse(openai);
        assert_eq!(i.message, "You exceeded your current quota");
        assert!(i.is_quota());
        let ollama = br#"{"error":"model \"llava\" not found, try pulling it first"}"#;
        assert_eq!(
            ErrorInfo::parse(ollama).message,
            "model \"llava\" not found, try pulling it first"
        );
        let vllm = br#"{"object":"error","message":"bad schema","type":"BadRequestError","param":null,"code":400}"#;
        let i = ErrorInfo::parse(vllm);
        assert_eq!(i.message, "bad schema");
        assert_eq!(i.code.as_deref(), Some("400"));
        assert_eq!(
            ErrorInfo::parse(b"<html>oops</html>").message,
            "<html>oops</html>"
        );
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let h = HeaderMap::new();
        let c =
            |s: u16, body: &[u8]| classify(StatusCode::from_u16(s).unwrap(), &h, body, &no_scrub);
        let body = br#"{"error":{"message":"nope","type":"invalid_request_error"}}"#;
        assert_eq!(
            c(401, body).error,
            ProviderError::Unauthorized("nope".into())
        );
        assert!(!c(401, body).retryable);
        assert_eq!(
            c(403, body).error.code(),
            orch_shared::ErrorCode::Unauthorized
        );
        assert_eq!(
            c(404, body).error,
            ProviderError::BadRequest("HTTP 404: nope".into())
        );
        assert!(c(429, body).retryable);
        assert_eq!(
            c(429, body).error.code(),
            orch_shared::ErrorCode::RateLimited
        );
        let quota = br#"{"error":{"message":"out of credit","type":"insufficient_quota"}}"#;
        let f = c(429, quota);
        assert_eq!(
            f.error,
            ProviderError::QuotaExceeded("out of credit".into())
        );
        assert!(!f.retryable);
        assert_eq!(
            c(402, body).error.code(),
            orch_shared::ErrorCode::QuotaExceeded
        );
        let f = c(503, body);
        assert!(f.retryable);
        assert_eq!(
            f.error,
            ProviderError::Upstream {
                status: Some(503),
                message: "nope".into()
            }
        );
        assert_eq!(c(302, b"").error.code(), orch_shared::ErrorCode::Upstream);
        assert_eq!(
            c(500, b"").error,
            ProviderError::Upstream {
                status: Some(500),
                message: "Internal Server Error".into()
            }
        );
    }

    #[test]
    fn retry_after_is_read_from_429s() {
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        let f = classify(StatusCode::TOO_MANY_REQUESTS, &h, b"{}", &no_scrub);
        assert_eq!(f.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(
            f.error,
            ProviderError::RateLimited {
                message: "{}".into(),
                retry_after: Some(Duration::from_millis(1500))
            }
        );
    }

    #[test]
    fn response_format_refusals_are_recognised() {
        let h = HeaderMap::new();
        for body in [
            &br#"{"error":{"message":"response_format json_schema is not supported by this model","type":"invalid_request_error"}}"#[..],
            br#"{"error":{"message":"Invalid parameter","param":"response_format","type":"invalid_request_error"}}"#,
            br#"{"object":"error","message":"Unsupported response format type: json_schema","code":400}"#,
        ] {
            assert!(classify(StatusCode::BAD_REQUEST, &h, body, &no_scrub).rejects_response_format);
        }
        let other = br#"{"error":{"message":"messages must not be empty"}}"#;
        assert!(!classify(StatusCode::BAD_REQUEST, &h, other, &no_scrub).rejects_response_format);
    }

    #[test]
    fn messages_are_bounded_and_scrubbed() {
        let long = "x".repeat(5000);
        let b = bounded(&long);
        assert_eq!(b.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(bounded(" a\n\n b\tc "), "a b c");
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-zzz"}}"#;
        let f = classify(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
            &|s: &str| s.replace("sk-zzz", "***"),
        );
        assert_eq!(
            f.error,
            ProviderError::Unauthorized("Incorrect API key provided: ***".into())
        );
    }
}
