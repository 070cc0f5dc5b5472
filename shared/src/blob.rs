//! Binary payloads (screenshots) that travel as base64 in JSON and as raw
//! `bin` in MessagePack, chosen by the format's `is_human_readable` flag.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Opaque bytes: base64 text in JSON, raw bytes in MessagePack.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Bytes);

impl Blob {
    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never dump megabytes of image into logs.
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(Bytes::from(v))
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(b)
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes or a base64 string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(Bytes::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        // Tolerate a `data:image/png;base64,` prefix: browsers hand those out.
        let b64 = match v.split_once(";base64,") {
            Some((prefix, rest)) if prefix.starts_with("data:") => rest,
            _ => v,
        };
        let cleaned: Cow<'_, str> = if b64.bytes().any(|b| b.is_ascii_whitespace()) {
            Cow::Owned(b64.chars().filter(|c| !c.is_ascii_whitespace()).collect())
        } else {
            Cow::Borrowed(b64)
        };
        STANDARD
            .decode(cleaned.as_bytes())
            .map(|v| Blob(Bytes::from(v)))
            .map_err(|e| E::custom(format_args!("invalid base64: {e}")))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        // Some MessagePack encoders write byte arrays as arrays of integers.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Blob(Bytes::from(out)))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BlobVisitor)
        } else {
            d.deserialize_any(BlobVisitor)
        }
    }
}

impl JsonSchema for Blob {
    fn schema_name() -> Cow<'static, str> {
        "Base64Bytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "contentEncoding": "base64",
            "description": "Base64 (standard alphabet) in JSON; raw `bin` in MessagePack. A `data:...;base64,` prefix is accepted."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        b: Blob,
    }

    #[test]
    fn json_uses_base64() {
        let h = Holder {
            b: Blob::from(vec![0u8, 1, 2, 255]),
        };
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, r#"{"b":"AAEC/w=="}"#);
        assert_eq!(serde_json::from_str::<Holder>(&j).unwrap(), h);
    }

    #[test]
    fn msgpack_uses_bin() {
        let h = Holder {
            b: Blob::from(vec![9u8; 300]),
        };
        let m = rmp_serde::to_vec_named(&h).unwrap();
        // bin 16 marker, not a base64 string
        assert!(m.windows(3).any(|w| w == [0xc5, 0x01, 0x2c]));
        assert_eq!(rmp_serde::from_slice::<Holder>(&m).unwrap(), h);
    }

    #[test]
    fn data_urls_and_bad_base64() {
        let h: Holder = serde_json::from_str(r#"{"b":"data:image/png;base64,AAEC"}"#).unwrap();
        assert_eq!(&h.b.0[..], &[0, 1, 2]);
        assert!(serde_json::from_str::<Holder>(r#"{"b":"!!!"}"#).is_err());
    }
}
