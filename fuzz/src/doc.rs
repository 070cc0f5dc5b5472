//! [`Doc`]: one document tree that renders as JSON *and* as MessagePack, so a
//! single structure-aware mutation engine serves both codecs.
//!
//! It can hold what neither `serde_json::Value` nor a typed struct can: raw
//! binary (`bin`), non-string map keys, duplicate keys, NaN, and number
//! literals no parser can represent (`1e999`, `18446744073709551616`).

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting [`Doc::from_msgpack`] reads.
pub const MAX_DEPTH: usize = 256;

/// A JSON/MessagePack document.
#[derive(Clone, PartialEq)]
pub enum Doc {
    /// `null` / `nil`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float (NaN and infinities render as invalid JSON on purpose).
    Float(f64),
    /// A number literal written as is in JSON (`1e999`); MessagePack gets its
    /// `f64` value, or the text as a string when it does not parse.
    Raw(String),
    /// A string.
    Str(String),
    /// Bytes: MessagePack `bin`, base64 text in JSON (how `Blob` travels).
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Doc>),
    /// A map; keys may be any document and may repeat.
    Map(Vec<(Doc, Doc)>),
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // JSON is the most readable form of a failing input.
        let json = self.to_json();
        if json.len() > 4096 {
            write!(
                f,
                "{}… ({} bytes of JSON)",
                &json[..floor(&json, 4096)],
                json.len()
            )
        } else {
            f.write_str(&json)
        }
    }
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Doc {
    /// A map from string keys.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Doc)>) -> Doc {
        Doc::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Doc::Str(k.into()), v))
                .collect(),
        )
    }

    /// Number of nodes in the tree (this one included).
    pub fn size(&self) -> usize {
        1 + match self {
            Doc::Array(items) => items.iter().map(Doc::size).sum(),
            Doc::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
            _ => 0,
        }
    }

    /// Rough encoded size in bytes (strings and bytes count in full).
    pub fn weight(&self) -> usize {
        match self {
            Doc::Raw(s) | Doc::Str(s) => 2 + s.len(),
            Doc::Bin(b) => 2 + b.len(),
            Doc::Array(items) => 2 + items.iter().map(Doc::weight).sum::<usize>(),
            Doc::Map(entries) => {
                2 + entries
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<usize>()
            }
            _ => 8,
        }
    }

    /// Whether a float anywhere is NaN or infinite (JSON cannot carry those).
    pub fn has_non_finite(&self) -> bool {
        match self {
            Doc::Float(f) => !f.is_finite(),
            Doc::Array(items) => items.iter().any(Doc::has_non_finite),
            Doc::Map(entries) => entries
                .iter()
                .any(|(k, v)| k.has_non_finite() || v.has_non_finite()),
            _ => false,
        }
    }

    /// Pre-order indices of the number nodes.
    pub fn numbers(&self) -> Vec<usize> {
        fn walk(d: &Doc, next: &mut usize, out: &mut Vec<usize>) {
            if matches!(d, Doc::Int(_) | Doc::UInt(_) | Doc::Float(_) | Doc::Raw(_)) {
                out.push(*next);
            }
            *next += 1;
            match d {
                Doc::Array(items) => items.iter().for_each(|i| walk(i, next, out)),
                Doc::Map(entries) => entries.iter().for_each(|(k, v)| {
                    walk(k, next, out);
                    walk(v, next, out);
                }),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, &mut 0, &mut out);
        out
    }

    /// The `n`-th node in pre-order (`n` is reduced modulo [`Doc::size`]).
    pub fn node_mut(&mut self, n: usize) -> &mut Doc {
        let n = n % self.size();
        self.nth(n)
    }

    fn nth(&mut self, mut n: usize) -> &mut Doc {
        if n == 0 {
            return self;
        }
        n -= 1;
        let children: Vec<&mut Doc> = match self {
            Doc::Array(items) => items.iter_mut().collect(),
            Doc::Map(entries) => entries.iter_mut().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        };
        for child in children {
            let size = child.size();
            if n < size {
                return child.nth(n);
            }
            n -= size;
        }
        unreachable!("node index checked against the tree size")
    }

    /// The document as JSON text (not always valid JSON: see [`Doc::Raw`], NaN).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Doc::Null => out.push_str("null"),
            Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Doc::Int(i) => out.push_str(&i.to_string()),
            Doc::UInt(u) => out.push_str(&u.to_string()),
            Doc::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => out.push_str(&n.to_string()),
                None if f.is_nan() => out.push_str("NaN"),
                None if *f > 0.0 => out.push_str("1e999"),
                None => out.push_str("-1e999"),
            },
            Doc::Raw(r) => out.push_str(r),
            Doc::Str(s) => out.push_str(&quote(s)),
            Doc::Bin(b) => {
                out.push_str(&quote(&base64::engine::general_purpose::STANDARD.encode(b)))
            }
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Doc::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match k {
                        Doc::Str(s) => out.push_str(&quote(s)),
                        other => out.push_str(&quote(&other.to_json())),
                    }
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// The document as MessagePack.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_msgpack(&mut out);
        out
    }

    fn write_msgpack(&self, out: &mut Vec<u8>) {
        use rmp::encode as e;
        // Writing into a Vec cannot fail; lengths are bounded by the generators.
        match self {
            Doc::Null => {
                let _ = e::write_nil(out);
            }
            Doc::Bool(b) => {
                let _ = e::write_bool(out, *b);
            }
            Doc::Int(i) => {
                let _ = e::write_sint(out, *i);
            }
            Doc::UInt(u) => {
                let _ = e::write_uint(out, *u);
            }
            Doc::Float(f) => {
                let _ = e::write_f64(out, *f);
            }
            Doc::Raw(r) => {
                let _ = match r.parse::<f64>() {
                    Ok(f) => e::write_f64(out, f),
                    Err(_) => e::write_str(out, r),
                };
            }
            Doc::Str(s) => {
                let _ = e::write_str(out, s);
            }
            Doc::Bin(b) => {
                let _ = e::write_bin(out, b);
            }
            Doc::Array(items) => {
                let _ = e::write_array_len(out, len32(items.len()));
                for item in items {
                    item.write_msgpack(out);
                }
            }
            Doc::Map(entries) => {
                let _ = e::write_map_len(out, len32(entries.len()));
                for (k, v) in entries {
                    k.write_msgpack(out);
                    v.write_msgpack(out);
                }
            }
        }
    }

    /// Reads a `serde_json::Value` (for seeds written with `json!`).
    pub fn from_json(v: &serde_json::Value) -> Doc {
        // A Value always fits a Doc.
        Doc::deserialize(v).unwrap_or(Doc::Null)
    }

    /// Reads MessagePack (for seeds encoded from real wire types: keeps `bin`).
    /// Nesting is limited to [`MAX_DEPTH`] so the harness itself never runs
    /// out of stack on the deep inputs it generates.
    ///
    /// # Errors
    /// When the bytes are not MessagePack, or nest deeper than [`MAX_DEPTH`].
    pub fn from_msgpack(bytes: &[u8]) -> Result<Doc, rmp_serde::decode::Error> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_DEPTH);
        Doc::deserialize(&mut de)
    }

    /// Serializes a value as the wire does (MessagePack with named fields) and reads it back.
    ///
    /// # Panics
    /// When `value` cannot be encoded: seeds are the caller's own constants.
    pub fn of<T: serde::Serialize>(value: &T) -> Doc {
        Doc::try_of(value).expect("seed encodes and decodes as MessagePack")
    }

    /// [`Doc::of`] for values that may not fit (nesting past rmp-serde's limit).
    pub fn try_of<T: serde::Serialize>(value: &T) -> Option<Doc> {
        let bytes = rmp_serde::to_vec_named(value).ok()?;
        Doc::from_msgpack(&bytes).ok()
    }

    /// Nesting depth (a scalar is 1).
    pub fn depth(&self) -> usize {
        1 + match self {
            Doc::Array(items) => items.iter().map(Doc::depth).max().unwrap_or(0),
            Doc::Map(entries) => entries
                .iter()
                .map(|(k, v)| k.depth().max(v.depth()))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON or MessagePack value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        Ok(Doc::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        Ok(Doc::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Ok(Doc::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::Str(v.to_string()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Doc, E> {
        Ok(Doc::Bin(v.to_vec()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
        Doc::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Doc::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_formats() {
        let d = Doc::map([
            ("a", Doc::Bin(vec![0, 1, 255])),
            (
                "b",
                Doc::Array(vec![Doc::Raw("1e999".into()), Doc::UInt(u64::MAX)]),
            ),
        ]);
        assert_eq!(
            d.to_json(),
            r#"{"a":"AAH/","b":[1e999,18446744073709551615]}"#
        );
        let back = Doc::from_msgpack(&d.to_msgpack()).unwrap();
        assert_eq!(
            back,
            Doc::map([
                ("a", Doc::Bin(vec![0, 1, 255])),
                (
                    "b",
                    Doc::Array(vec![Doc::Float(f64::INFINITY), Doc::UInt(u64::MAX)])
                ),
            ])
        );
    }

    #[test]
    fn nodes_are_addressed_in_pre_order() {
        let mut d = Doc::Array(vec![Doc::Null, Doc::Array(vec![Doc::Bool(true)])]);
        assert_eq!(d.size(), 4);
        assert_eq!(*d.node_mut(3), Doc::Bool(true));
        assert_eq!(*d.node_mut(5), Doc::Null);
    }
}
