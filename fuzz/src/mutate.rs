//! Input strategies: arbitrary bytes, and mutations of valid samples at two
//! levels — the document tree ([`Corpus::docs`]: fields retyped, removed,
//! duplicated, huge, deeply nested, unknown keys) and the encoded bytes
//! ([`ByteEdit`]: flips, truncation, splices of syntax tokens and MessagePack
//! markers with lying lengths). Every strategy shrinks, so a failure is
//! reported as a small edit of a known-good sample.

use std::fmt;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use crate::doc::Doc;

/// Bytes fed to a decoder. `Debug` prints them escaped and bounded.
#[derive(Clone, PartialEq, Eq)]
pub struct Input(pub Vec<u8>);

impl Input {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text, invalid UTF-8 replaced (for decoders that take `&str`).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 4096;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "b\"{}\"", shown.escape_ascii())?;
        if self.0.len() > SHOWN {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Number literals that parsers treat differently or cannot represent.
const RAW_NUMBERS: &[&str] = &[
    "1e999",
    "-1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "1e-999999",
    "-0",
    "-0.0",
    "1E+2",
    "00",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    "NaN",
    "Infinity",
    "-",
    "1e",
    "123456789012345678901234567890123456789",
    "4.9e-324",
    "1.7976931348623157e308",
];

/// Strings that hit edge cases: empty, control characters, bidi overrides,
/// subject wildcards, data-URL prefixes, stream markers, code fences.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "🦀",
    "e\u{301}",
    "a.b",
    "*",
    ">",
    "a b",
    "..",
    "\r\n",
    "get",
    "data:image/png;base64,",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:;base64,====",
    "\\",
    "\"",
    "[DONE]",
    "</think>",
    "```json\n{}\n```",
    "{",
    "}",
    "approved",
    " Approved ",
    "0.5",
];

/// Byte sequences spliced into encoded inputs: JSON syntax, escapes, broken
/// UTF-8, MessagePack markers whose lengths promise far more than follows.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"1e999",
    b"-",
    b"null",
    b"true",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"data: [DONE]\n\n",
    b": keep-alive\n",
    b"\xc1",
    b"\xc0",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xc7\xff\x01",
    b"\xd4\x01\x00",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\x91",
    b"\x80",
    b"\xa0",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
];

/// Openers repeated to build deep nesting (JSON and MessagePack).
const OPENERS: &[&[u8]] = &[b"[", b"{\"a\":", b"\x91", b"\x81\xa1a", b"<div>", b"{"];

/// One edit of encoded bytes; positions are reduced modulo the length.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    /// Flip one bit.
    Flip(usize, u8),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Insert a [`TOKENS`] entry.
    Token(usize, usize),
    /// Insert `n` copies of an [`OPENERS`] entry (deep nesting).
    Nest(usize, usize, usize),
    /// Remove up to `n` bytes.
    Delete(usize, usize),
    /// Cut the input here.
    Truncate(usize),
    /// Repeat a range of up to `n` bytes in place.
    Duplicate(usize, usize),
}

impl ByteEdit {
    /// Applies the edit.
    pub fn apply(&self, b: &mut Vec<u8>) {
        let at = |i: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { i % (b.len() + 1) };
        match self {
            ByteEdit::Flip(i, bit) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= 1 << (bit % 8);
                }
            }
            ByteEdit::Set(i, v) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] = *v;
                }
            }
            ByteEdit::Insert(i, bytes) => {
                let i = at(*i, b);
                b.splice(i..i, bytes.iter().copied());
            }
            ByteEdit::Token(i, t) => {
                let i = at(*i, b);
                b.splice(i..i, TOKENS[t % TOKENS.len()].iter().copied());
            }
            ByteEdit::Nest(i, o, n) => {
                let i = at(*i, b);
                let opener = OPENERS[o % OPENERS.len()];
                let run: Vec<u8> = opener.repeat(*n);
                b.splice(i..i, run);
            }
            ByteEdit::Delete(i, n) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    let end = (i + n).min(b.len());
                    b.drain(i..end);
                }
            }
            ByteEdit::Truncate(i) => {
                let i = at(*i, b);
                b.truncate(i);
            }
            ByteEdit::Duplicate(i, n) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    let end = (i + n).min(b.len());
                    let piece = b[i..end].to_vec();
                    b.splice(end..end, piece);
                }
            }
        }
    }
}

/// Any [`ByteEdit`].
pub fn byte_edit() -> BoxedStrategy<ByteEdit> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, bit)| ByteEdit::Flip(i, bit)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| ByteEdit::Set(i, v)),
        2 => (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(i, v)| ByteEdit::Insert(i, v)),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(i, t)| ByteEdit::Token(i, t)),
        1 => (any::<usize>(), any::<usize>(), nesting()).prop_map(|(i, o, n)| ByteEdit::Nest(i, o, n)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        2 => any::<usize>().prop_map(ByteEdit::Truncate),
        1 => (any::<usize>(), 1usize..256).prop_map(|(i, n)| ByteEdit::Duplicate(i, n)),
    ]
    .boxed()
}

/// Nesting depths: shallow, around parser limits (128 for serde_json, 1024
/// for rmp-serde), and past them.
fn nesting() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..16, 120usize..140, 1000usize..1100, 2000usize..5000]
}

/// Nesting for document trees: past both parsers' limits, but shallow
/// enough for the harness's own recursive encoders.
fn tree_nesting() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..16, 120usize..140, 1000usize..1100]
}

/// Arbitrary bytes: short, from an alphabet of syntax-significant bytes, or long.
pub fn bytes() -> BoxedStrategy<Input> {
    let significant: Vec<u8> =
        b"{}[]\",:\\ \n\r\t0123456789-+.eEtrufalsn\x00\x80\x90\xa0\xc0\xc1\xc4\xd9\xdc\xde\xff"
            .to_vec();
    prop_oneof![
        4 => vec(any::<u8>(), 0..64),
        3 => vec(select(significant), 0..128),
        1 => vec(any::<u8>(), 0..4096),
    ]
    .prop_map(Input)
    .boxed()
}

/// Byte-level mutations of `seeds` (formats without a document tree: SSE,
/// NDJSON, images, HTML, header values), mixed with arbitrary bytes.
pub fn mutated_bytes(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Input> {
    assert!(!seeds.is_empty(), "mutated_bytes needs at least one seed");
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    let mutated = (0..n, vec(byte_edit(), 0..8)).prop_map(move |(i, edits)| {
        let mut b = seeds[i].clone();
        for e in &edits {
            e.apply(&mut b);
        }
        Input(b)
    });
    prop_oneof![5 => mutated, 1 => bytes()].boxed()
}

/// Arbitrary text with a bias to `words` (the values a decoder acts on) and
/// odd strings: for decoders of header values, subject tokens and other
/// short strings.
pub fn text(words: &[&str]) -> BoxedStrategy<String> {
    let odd: Vec<String> = ODD_STRINGS.iter().map(|s| s.to_string()).collect();
    let given: Vec<String> = if words.is_empty() {
        odd.clone()
    } else {
        words.iter().map(|s| s.to_string()).collect()
    };
    let all: Vec<String> = given.iter().chain(&odd).cloned().collect();
    let joined = vec(select(all), 1..4).prop_map(|w| w.concat());
    prop_oneof![
        4 => select(given),
        2 => select(odd),
        2 => any::<String>(),
        2 => joined,
        1 => bytes().prop_map(|i| i.text()),
    ]
    .boxed()
}

/// An edit of a document tree, applied at a node chosen by index.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace the node.
    Replace(Doc),
    /// Wrap the node in `n` arrays (or single-key maps).
    Wrap(usize, bool),
    /// Remove a child of a container.
    Remove(usize),
    /// Add an entry to a container (arrays ignore the key).
    Add(Doc, Doc),
    /// Repeat a child of a container (maps get a duplicate key).
    Duplicate(usize),
    /// Change the node's type, keeping its content where possible.
    Retype(u8),
    /// Replace the node by an array of `n` copies of it (bounded in total size).
    Repeat(usize),
    /// Cut a string, bytes or a container to a prefix.
    Truncate(usize),
    /// Replace a number (the `at`-th number node, not any node) with an
    /// extreme: counters that overflow when summed, limits ± 1, NaN.
    Extreme(u8),
}

/// Numbers at the edges: the wrapping points of u64/i64/u32, f64's limits,
/// 2^53 + 1 (the first integer an f64 cannot hold), negative zero, NaN.
const EXTREMES: &[Doc] = &[
    Doc::UInt(u64::MAX),
    Doc::UInt(u64::MAX / 2 + 1),
    Doc::UInt(u32::MAX as u64 + 1),
    Doc::UInt((1 << 53) + 1),
    Doc::Int(i64::MIN),
    Doc::Int(-1),
    Doc::Int(0),
    Doc::Float(f64::MAX),
    Doc::Float(-f64::MAX),
    Doc::Float(f64::MIN_POSITIVE),
    Doc::Float(-0.0),
    Doc::Float(f64::NAN),
    Doc::Float(f64::INFINITY),
];

impl Edit {
    /// Applies the edit to the node at `at` (modulo the tree size).
    pub fn apply(&self, doc: &mut Doc, at: usize) {
        if let Edit::Extreme(which) = self {
            let numbers = doc.numbers();
            if !numbers.is_empty() {
                let pos = numbers[at % numbers.len()];
                *doc.node_mut(pos) = EXTREMES[usize::from(*which) % EXTREMES.len()].clone();
            }
            return;
        }
        let node = doc.node_mut(at);
        match self {
            Edit::Replace(d) => *node = d.clone(),
            Edit::Wrap(n, as_map) => {
                let mut inner = std::mem::replace(node, Doc::Null);
                for _ in 0..*n {
                    inner = if *as_map {
                        Doc::map([("a", inner)])
                    } else {
                        Doc::Array(vec![inner])
                    };
                }
                *node = inner;
            }
            Edit::Remove(i) => match node {
                Doc::Array(items) if !items.is_empty() => {
                    let i = i % items.len();
                    items.remove(i);
                }
                Doc::Map(entries) if !entries.is_empty() => {
                    let i = i % entries.len();
                    entries.remove(i);
                }
                _ => {}
            },
            Edit::Add(k, v) => match node {
                Doc::Array(items) => items.push(v.clone()),
                Doc::Map(entries) => entries.push((k.clone(), v.clone())),
                _ => {}
            },
            Edit::Duplicate(i) => match node {
                Doc::Array(items) if !items.is_empty() => {
                    let i = i % items.len();
                    items.insert(i, items[i].clone());
                }
                Doc::Map(entries) if !entries.is_empty() => {
                    let i = i % entries.len();
                    entries.push(entries[i].clone());
                }
                _ => {}
            },
            Edit::Retype(how) => {
                let old = std::mem::replace(node, Doc::Null);
                *node = retype(old, *how);
            }
            Edit::Repeat(n) => {
                // Keep inputs within 50,000 nodes and about a megabyte: big
                // enough to hurt a quadratic decoder, small enough for a fast
                // debug run.
                let n = (*n)
                    .min(50_000 / node.size().max(1))
                    .min(1_000_000 / node.weight().max(1));
                let copy = node.clone();
                *node = Doc::Array(vec![copy; n]);
            }
            Edit::Extreme(_) => {}
            Edit::Truncate(n) => match node {
                Doc::Str(s) => {
                    let mut cut = n % (s.len() + 1);
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                }
                Doc::Bin(b) => {
                    let cut = n % (b.len() + 1);
                    b.truncate(cut);
                }
                Doc::Array(items) => {
                    let cut = n % (items.len() + 1);
                    items.truncate(cut);
                }
                Doc::Map(entries) => {
                    let cut = n % (entries.len() + 1);
                    entries.truncate(cut);
                }
                _ => {}
            },
        }
    }
}

fn retype(old: Doc, how: u8) -> Doc {
    match (old, how % 4) {
        (Doc::Array(items), _) => Doc::Map(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Doc::Str(i.to_string()), v))
                .collect(),
        ),
        (Doc::Map(entries), 0) => Doc::Array(entries.into_iter().map(|(_, v)| v).collect()),
        (Doc::Map(entries), 1) => Doc::Array(entries.into_iter().map(|(k, _)| k).collect()),
        (Doc::Map(entries), _) => Doc::Array(
            entries
                .into_iter()
                .map(|(k, v)| Doc::Array(vec![k, v]))
                .collect(),
        ),
        (Doc::Str(s), 0) => Doc::Bin(s.into_bytes()),
        (Doc::Str(s), 1) => Doc::Array(vec![Doc::Str(s)]),
        (Doc::Str(s), 2) => s.parse::<f64>().map(Doc::Float).unwrap_or(Doc::Raw(s)),
        (Doc::Str(s), _) => Doc::Raw(s),
        (Doc::Bin(b), 0) => Doc::Str(String::from_utf8_lossy(&b).into_owned()),
        (Doc::Bin(b), _) => Doc::Array(b.into_iter().map(|x| Doc::UInt(x.into())).collect()),
        (Doc::Int(i), 0) => Doc::Str(i.to_string()),
        (Doc::Int(i), 1) => Doc::Float(i as f64),
        (Doc::Int(i), _) => Doc::UInt(i as u64),
        (Doc::UInt(u), 0) => Doc::Str(u.to_string()),
        (Doc::UInt(u), 1) => Doc::Float(u as f64),
        (Doc::UInt(u), _) => Doc::Int(u as i64),
        (Doc::Float(f), 0) => Doc::Str(f.to_string()),
        (Doc::Float(f), 1) => Doc::Int(f as i64),
        (Doc::Float(f), _) => Doc::Float(-f),
        (Doc::Raw(r), _) => Doc::Str(r),
        (Doc::Bool(b), 0) => Doc::Str(b.to_string()),
        (Doc::Bool(b), _) => Doc::UInt(b.into()),
        (Doc::Null, 0) => Doc::Str(String::new()),
        (Doc::Null, 1) => Doc::Array(Vec::new()),
        (Doc::Null, _) => Doc::Map(Vec::new()),
    }
}

/// Valid samples of one message type plus domain words (role names, error
/// codes, ...) that mutations may plant, so inputs get past the first checks.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    seeds: Vec<Doc>,
    words: Vec<String>,
}

impl Corpus {
    /// An empty corpus.
    pub fn new() -> Corpus {
        Corpus::default()
    }

    /// Adds a seed document.
    pub fn seed(mut self, doc: Doc) -> Corpus {
        self.seeds.push(doc);
        self
    }

    /// Adds a seed written as JSON.
    pub fn json(self, v: serde_json::Value) -> Corpus {
        self.seed(Doc::from_json(&v))
    }

    /// Adds a seed serialized from a wire value (binary fields stay binary).
    pub fn value<T: serde::Serialize>(self, v: &T) -> Corpus {
        self.seed(Doc::of(v))
    }

    /// Adds domain words.
    pub fn words(mut self, words: &[&str]) -> Corpus {
        self.words.extend(words.iter().map(|w| w.to_string()));
        self
    }

    fn scalar(&self) -> BoxedStrategy<Doc> {
        let words: Vec<String> = self
            .words
            .iter()
            .map(String::as_str)
            .chain(ODD_STRINGS.iter().copied())
            .map(str::to_string)
            .collect();
        let ints = prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>()
        ];
        let uints = prop_oneof![
            Just(u64::MAX),
            Just(u64::from(u32::MAX) + 1),
            Just(600_001u64),
            any::<u64>()
        ];
        let floats = prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(0.5),
            Just(1.0000001),
            Just(1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>()
        ];
        let long = (
            0usize..70_000,
            select(vec!["x", "é", "🦀", " ", "\\", "\"", "{"]),
        )
            .prop_map(|(n, s)| Doc::Str(s.repeat(n)));
        prop_oneof![
            2 => Just(Doc::Null),
            2 => any::<bool>().prop_map(Doc::Bool),
            2 => ints.prop_map(Doc::Int),
            2 => uints.prop_map(Doc::UInt),
            2 => floats.prop_map(Doc::Float),
            2 => select(RAW_NUMBERS).prop_map(|s| Doc::Raw(s.to_string())),
            3 => any::<String>().prop_map(Doc::Str),
            5 => select(words).prop_map(Doc::Str),
            1 => long,
            2 => vec(any::<u8>(), 0..64).prop_map(Doc::Bin),
        ]
        .boxed()
    }

    fn any_doc(&self) -> BoxedStrategy<Doc> {
        let key = self.key();
        self.scalar()
            .prop_recursive(3, 24, 4, move |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..4).prop_map(Doc::Array),
                    vec((key.clone(), inner), 0..4).prop_map(Doc::Map),
                ]
            })
            .boxed()
    }

    fn key(&self) -> BoxedStrategy<Doc> {
        let mut words: Vec<String> = self.words.clone();
        words.extend(["unknown", "", "__proto__", "task ", "TASK"].map(String::from));
        prop_oneof![
            6 => select(words).prop_map(Doc::Str),
            2 => any::<String>().prop_map(Doc::Str),
            1 => self.scalar(),
        ]
        .boxed()
    }

    fn edit(&self) -> BoxedStrategy<Edit> {
        prop_oneof![
            6 => self.scalar().prop_map(Edit::Replace),
            1 => self.any_doc().prop_map(Edit::Replace),
            1 => (tree_nesting(), any::<bool>()).prop_map(|(n, m)| Edit::Wrap(n, m)),
            3 => any::<usize>().prop_map(Edit::Remove),
            2 => (self.key(), self.any_doc()).prop_map(|(k, v)| Edit::Add(k, v)),
            1 => any::<usize>().prop_map(Edit::Duplicate),
            2 => any::<u8>().prop_map(Edit::Retype),
            1 => prop_oneof![0usize..4, 1000usize..100_000].prop_map(Edit::Repeat),
            1 => any::<usize>().prop_map(Edit::Truncate),
            3 => any::<u8>().prop_map(Edit::Extreme),
        ]
        .boxed()
    }

    /// Seeds with 0-4 tree edits each (the seeds themselves included).
    ///
    /// # Panics
    /// When the corpus has no seeds.
    pub fn docs(&self) -> BoxedStrategy<Doc> {
        assert!(!self.seeds.is_empty(), "a corpus needs at least one seed");
        let seeds = Arc::new(self.seeds.clone());
        let n = seeds.len();
        (0..n, vec((any::<usize>(), self.edit()), 0..5))
            .prop_map(move |(i, edits)| {
                let mut doc = seeds[i].clone();
                for (at, e) in &edits {
                    e.apply(&mut doc, *at);
                }
                doc
            })
            .boxed()
    }

    fn encoded(&self, encode: fn(&Doc) -> Vec<u8>) -> BoxedStrategy<Input> {
        let tree = (self.docs(), vec(byte_edit(), 0..2)).prop_map(move |(doc, edits)| {
            let mut b = encode(&doc);
            for e in &edits {
                e.apply(&mut b);
            }
            Input(b)
        });
        let raw = mutated_bytes(self.seeds.iter().map(encode).collect());
        prop_oneof![6 => tree, 2 => raw, 1 => bytes()].boxed()
    }

    /// JSON inputs: mutated seeds, byte-edited seeds, arbitrary bytes.
    pub fn json_inputs(&self) -> BoxedStrategy<Input> {
        self.encoded(|d| d.to_json().into_bytes())
    }

    /// MessagePack inputs: mutated seeds, byte-edited seeds, arbitrary bytes.
    pub fn msgpack_inputs(&self) -> BoxedStrategy<Input> {
        self.encoded(Doc::to_msgpack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_edits_stay_in_bounds() {
        let mut b = b"{\"a\":1}".to_vec();
        for e in [
            ByteEdit::Flip(100, 9),
            ByteEdit::Delete(3, 1000),
            ByteEdit::Duplicate(1, 1000),
            ByteEdit::Truncate(usize::MAX),
            ByteEdit::Token(usize::MAX, usize::MAX),
            ByteEdit::Nest(0, 0, 3),
        ] {
            e.apply(&mut b);
        }
        let mut empty = Vec::new();
        ByteEdit::Flip(3, 1).apply(&mut empty);
        ByteEdit::Delete(3, 1).apply(&mut empty);
        ByteEdit::Insert(5, vec![1]).apply(&mut empty);
        assert_eq!(empty, vec![1]);
    }

    #[test]
    fn tree_edits_keep_a_tree() {
        let mut d = Doc::map([("task", Doc::Str("héllo".into()))]);
        Edit::Truncate(2).apply(&mut d, 2);
        assert_eq!(d, Doc::map([("task", Doc::Str("h".into()))]));
        Edit::Wrap(3, false).apply(&mut d, 2);
        assert_eq!(d.size(), 6);
        Edit::Repeat(usize::MAX).apply(&mut d, 0);
        assert!(d.size() <= 50_001);
    }
}
