//! Payload encoding chosen by the `Content-Type` header: JSON by default,
//! MessagePack (`application/msgpack`) on request. Decoding happens once, at
//! the edge, and maps every failure to an [`ErrorCode`].

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ErrorBody, ErrorCode};
use crate::headers;

/// `Content-Type` for JSON payloads (the default when the header is absent).
pub const JSON: &str = "application/json";
/// `Content-Type` for MessagePack payloads.
pub const MSGPACK: &str = "application/msgpack";

/// Deepest MessagePack nesting decoded: the limit serde_json applies to JSON.
/// rmp-serde's own default (1024) lets a few kilobytes of nested arrays,
/// even under a field the target type ignores, recurse deep enough to
/// overflow a 2 MiB thread stack (tokio's default) and abort the process.
pub const MAX_MSGPACK_DEPTH: usize = 128;

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `application/json`.
    #[default]
    Json,
    /// `application/msgpack` (also accepts `application/x-msgpack` and `application/vnd.msgpack`).
    MsgPack,
}

/// Why a payload could not be turned into the expected type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// [`ErrorCode::Malformed`], [`ErrorCode::InvalidRequest`] or [`ErrorCode::UnsupportedContentType`].
    pub code: ErrorCode,
    /// What the decoder said.
    pub message: String,
}

impl DecodeError {
    /// The error as a reply body.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

/// Why a value could not be encoded (only possible for exotic values such as non-string map keys).
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(String);

impl Encoding {
    /// The `Content-Type` value.
    pub const fn mime(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::MsgPack => MSGPACK,
        }
    }

    /// Reads the encoding from a message's headers (absent header → JSON).
    ///
    /// # Errors
    /// [`ErrorCode::UnsupportedContentType`] for any other MIME type.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Encoding, DecodeError> {
        let Some(value) = headers.and_then(|h| h.get(headers::CONTENT_TYPE)) else {
            return Ok(Encoding::Json);
        };
        Encoding::from_mime(value.as_str())
    }

    /// Parses a MIME type, ignoring parameters such as `; charset=utf-8`.
    ///
    /// # Errors
    /// [`ErrorCode::UnsupportedContentType`] for anything but JSON or MessagePack.
    pub fn from_mime(mime: &str) -> Result<Encoding, DecodeError> {
        let base = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "" | JSON | "text/json" => Ok(Encoding::Json),
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => Ok(Encoding::MsgPack),
            other => Err(DecodeError {
                code: ErrorCode::UnsupportedContentType,
                message: format!(
                    "unsupported Content-Type `{}`; use {JSON} or {MSGPACK}",
                    other.chars().take(100).collect::<String>()
                ),
            }),
        }
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// [`ErrorCode::Malformed`] when the bytes are not valid JSON/MessagePack,
    /// [`ErrorCode::InvalidRequest`] when they are but do not fit `T`.
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T, DecodeError> {
        match self {
            Encoding::Json => serde_json::from_slice(payload).map_err(|e| {
                use serde_json::error::Category;
                let code = match e.classify() {
                    Category::Data => ErrorCode::InvalidRequest,
                    Category::Syntax | Category::Eof | Category::Io => ErrorCode::Malformed,
                };
                DecodeError {
                    code,
                    message: format!("invalid JSON: {e}"),
                }
            }),
            Encoding::MsgPack => {
                if payload.is_empty() {
                    return Err(DecodeError {
                        code: ErrorCode::Malformed,
                        message: "invalid MessagePack: empty payload".into(),
                    });
                }
                let mut cursor = std::io::Cursor::new(payload);
                let mut de = rmp_serde::Deserializer::new(&mut cursor);
                de.set_max_depth(MAX_MSGPACK_DEPTH);
                let value: T = T::deserialize(&mut de).map_err(|e| {
                    use rmp_serde::decode::Error as E;
                    let code = match &e {
                        E::TypeMismatch(rmp::Marker::Reserved) => ErrorCode::Malformed,
                        E::Syntax(_)
                        | E::TypeMismatch(_)
                        | E::OutOfRange
                        | E::LengthMismatch(_)
                        | E::Utf8Error(_) => ErrorCode::InvalidRequest,
                        _ => ErrorCode::Malformed,
                    };
                    DecodeError {
                        code,
                        message: format!("invalid MessagePack: {e}"),
                    }
                })?;
                drop(de);
                if cursor.position() < payload.len() as u64 {
                    return Err(DecodeError {
                        code: ErrorCode::Malformed,
                        message: "invalid MessagePack: trailing bytes after the value".into(),
                    });
                }
                Ok(value)
            }
        }
    }

    /// Encodes a value (MessagePack uses named fields so other languages can read it).
    ///
    /// # Errors
    /// Only for values the format cannot represent.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            Encoding::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
            Encoding::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Headers carrying this encoding's `Content-Type`.
    pub fn headers(self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, self.mime());
        h
    }
}

/// Decodes a message payload according to its headers.
///
/// # Errors
/// See [`Encoding::from_headers`] and [`Encoding::decode`].
pub fn decode_message<T: DeserializeOwned>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<(T, Encoding), DecodeError> {
    let enc = Encoding::from_headers(headers)?;
    Ok((enc.decode(payload)?, enc))
}

/// Builds an error reply (headers with `Orch-Error` plus the encoded body).
pub fn error_reply(enc: Encoding, body: &ErrorBody) -> (HeaderMap, Bytes) {
    let mut h = enc.headers();
    h.insert(headers::ORCH_ERROR, body.error.code.as_str());
    h.insert(
        headers::NATS_SERVICE_ERROR,
        header_safe(&body.error.message).as_str(),
    );
    h.insert(
        headers::NATS_SERVICE_ERROR_CODE,
        body.error.code.status().to_string().as_str(),
    );
    // ErrorBody holds only strings and a unit enum: encoding cannot fail, but
    // fall back to a fixed JSON body rather than panic if it ever did.
    let payload = enc.encode(body).unwrap_or_else(|_| {
        Bytes::from_static(
            br#"{"error":{"code":"internal","message":"error body encoding failed"}}"#,
        )
    });
    (h, payload)
}

/// Reads an error reply, if the message is one (`Orch-Error` or NATS micro error headers).
pub fn error_from_reply(headers: Option<&HeaderMap>, payload: &[u8]) -> Option<ErrorBody> {
    let h = headers?;
    let code = h
        .get(headers::ORCH_ERROR)
        .map(|v| ErrorCode::parse(v.as_str()));
    let micro = h
        .get(headers::NATS_SERVICE_ERROR)
        .map(|v| v.as_str().to_string());
    if code.is_none() && micro.is_none() {
        return None;
    }
    let from_body = Encoding::from_headers(Some(h))
        .ok()
        .and_then(|enc| enc.decode::<ErrorBody>(payload).ok());
    Some(match (from_body, code) {
        (Some(body), _) => body,
        (None, code) => ErrorBody::new(
            code.unwrap_or(ErrorCode::Unknown),
            micro.unwrap_or_else(|| "error reply without a message".into()),
        ),
    })
}

/// Makes a string safe to carry in a NATS header value (single line, bounded).
pub fn header_safe(s: &str) -> String {
    const MAX: usize = 512;
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Req {
        task: String,
        n: Option<u32>,
    }

    #[test]
    fn content_type_selects_codec() {
        assert_eq!(Encoding::from_headers(None).unwrap(), Encoding::Json);
        assert_eq!(
            Encoding::from_mime("application/json; charset=utf-8").unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_mime("application/msgpack").unwrap(),
            Encoding::MsgPack
        );
        let e = Encoding::from_mime("text/xml").unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedContentType);
    }

    #[test]
    fn syntax_vs_data_errors() {
        let e = Encoding::Json.decode::<Req>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        let e = Encoding::Json.decode::<Req>(b"{\"n\": 1}").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("task"), "{}", e.message);
    }

    #[test]
    fn msgpack_round_trip_and_errors() {
        let r = Req {
            task: "x".into(),
            n: Some(3),
        };
        let b = Encoding::MsgPack.encode(&r).unwrap();
        assert_eq!(Encoding::MsgPack.decode::<Req>(&b).unwrap(), r);
        for bad in [&b""[..], &[0xc1][..], &[0x81, 0xa1][..]] {
            let e = Encoding::MsgPack.decode::<Req>(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::Malformed, "{bad:?}: {e}");
        }
        // a map without `task`
        let b = Encoding::MsgPack
            .encode(&serde_json::json!({"n": 1}))
            .unwrap();
        assert_eq!(
            Encoding::MsgPack.decode::<Req>(&b).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        // trailing garbage
        let mut b = Encoding::MsgPack.encode(&r).unwrap().to_vec();
        b.push(0x00);
        assert_eq!(
            Encoding::MsgPack.decode::<Req>(&b).unwrap_err().code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn deep_msgpack_is_refused_not_a_stack_overflow() {
        // `{"task": "x", "n": 1, "junk": [[[...]]]}`, 100,000 levels deep under a
        // field the type ignores: a few hundred kilobytes that used to recurse
        // past the end of the stack (found by the `shared.results_get` fuzz target).
        #[derive(Debug, Deserialize)]
        struct Lenient {
            #[allow(dead_code)]
            task: String,
        }
        let mut b = vec![0x82, 0xa4];
        b.extend_from_slice(b"task");
        b.extend_from_slice(&[0xa1, b'x', 0xa4]);
        b.extend_from_slice(b"junk");
        b.extend(std::iter::repeat_n(0x91, 100_000));
        b.push(0xc0);
        let e = Encoding::MsgPack.decode::<Lenient>(&b).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed, "{e}");
        assert!(e.message.contains("depth"), "{e}");
        // Nesting within the limit still decodes.
        let mut ok = vec![0x82, 0xa4];
        ok.extend_from_slice(b"task");
        ok.extend_from_slice(&[0xa1, b'x', 0xa4]);
        ok.extend_from_slice(b"junk");
        ok.extend(std::iter::repeat_n(0x91, MAX_MSGPACK_DEPTH - 2));
        ok.push(0xc0);
        assert!(Encoding::MsgPack.decode::<Lenient>(&ok).is_ok());
    }

    #[test]
    fn error_reply_round_trips() {
        let body = ErrorBody::new(ErrorCode::UnknownTool, "unknown tool `x`\nsecond line");
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let (h, p) = error_reply(enc, &body);
            assert_eq!(h.get(headers::ORCH_ERROR).unwrap().as_str(), "unknown_tool");
            assert!(
                !h.get(headers::NATS_SERVICE_ERROR)
                    .unwrap()
                    .as_str()
                    .contains('\n')
            );
            assert_eq!(error_from_reply(Some(&h), &p).unwrap(), body);
        }
        assert!(error_from_reply(None, b"{}").is_none());
    }
}
