//! Mutations: plain byte edits for any file, and structure-aware ones that
//! keep an input parseable far enough to reach the checks behind the first:
//! numbers in text (dimensions, offsets, sizes, counts) set to edge values,
//! JSON trees edited node by node, binary length and size fields set to
//! lies, PNG chunks edited with their checksum fixed.

use rand::Rng as _;
use serde_json::Value;

use crate::harness::Rng;

/// Values that break arithmetic: zero, one, sign and width edges, and
/// sizes far beyond any file.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    255,
    256,
    65_535,
    65_536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

pub fn edge(rng: &mut Rng) -> u64 {
    match rng.random_range(0..4) {
        0 => rng.random(),
        1 => EDGES[rng.random_range(0..EDGES.len())].wrapping_add(rng.random_range(0..3)),
        _ => EDGES[rng.random_range(0..EDGES.len())],
    }
}

/// One to four plain edits: bit flips, edge bytes and words, inserted,
/// deleted, repeated or truncated ranges, a splice with another seed.
pub fn bytes(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        byte_edit(rng, &mut b, others);
    }
    b
}

fn byte_edit(rng: &mut Rng, b: &mut Vec<u8>, others: &[Vec<u8>]) {
    if b.is_empty() {
        b.push(rng.random());
        return;
    }
    let at = rng.random_range(0..b.len());
    match rng.random_range(0..9) {
        0 => b[at] ^= 1 << rng.random_range(0..8),
        1 => b[at] = [0, 0xff, 0x7f, 0x80, 1][rng.random_range(0..5)],
        2 => {
            let width = [2, 4, 8][rng.random_range(0..3)];
            let v = edge(rng).to_le_bytes();
            let big = rng.random_bool(0.3);
            for k in 0..width.min(b.len() - at) {
                b[at + k] = if big { v[width - 1 - k] } else { v[k] };
            }
        }
        3 => {
            let n = rng.random_range(1..=16);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(at..at, ins);
        }
        4 => {
            let end = (at + rng.random_range(1..=64)).min(b.len());
            b.drain(at..end);
        }
        5 => {
            let end = (at + rng.random_range(1..=64)).min(b.len());
            let chunk = b[at..end].to_vec();
            b.splice(at..at, chunk);
        }
        6 => b.truncate(at),
        7 => {
            let other = &others[rng.random_range(0..others.len())];
            if !other.is_empty() {
                let from = rng.random_range(0..other.len());
                let end = (from + rng.random_range(1..=256)).min(other.len());
                let stop = (at + (end - from)).min(b.len());
                b.splice(at..stop, other[from..end].iter().copied());
            }
        }
        _ => b[at] = rng.random(),
    }
}

/// Set the little- (or big-) endian field of `width` bytes at `at`.
pub fn set_field(b: &mut [u8], at: usize, width: usize, v: u64, big: bool) {
    let bytes = v.to_le_bytes();
    for k in 0..width {
        if let Some(x) = b.get_mut(at + k) {
            *x = if big { bytes[width - 1 - k] } else { bytes[k] };
        }
    }
}

/// A number in text as edge cases write it.
fn edge_number(rng: &mut Rng) -> String {
    match rng.random_range(0..8) {
        0 => "-1".into(),
        1 => "99999999999999999999999".into(),
        2 => ["1e308", "-0", "NaN", "inf", "0.5", "1e-300"][rng.random_range(0..6)].into(),
        3 => (edge(rng) as i64).to_string(),
        _ => edge(rng).to_string(),
    }
}

/// Text edits: 1 to 3 numbers replaced by edge values (most of the time),
/// or a token, a line or a quote removed, repeated or swapped.
pub fn text(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut s = String::from_utf8_lossy(seed).into_owned();
    for _ in 0..rng.random_range(1..=3) {
        s = text_edit(rng, &s);
    }
    s.into_bytes()
}

fn text_edit(rng: &mut Rng, s: &str) -> String {
    let numbers: Vec<(usize, usize)> = spans(s, |c| c.is_ascii_digit());
    if !numbers.is_empty() && rng.random_bool(0.7) {
        let (a, b) = numbers[rng.random_range(0..numbers.len())];
        return format!("{}{}{}", &s[..a], edge_number(rng), &s[b..]);
    }
    let lines: Vec<&str> = s.split_inclusive('\n').collect();
    if lines.is_empty() {
        return s.to_string();
    }
    let i = rng.random_range(0..lines.len());
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match rng.random_range(0..5) {
        0 => {
            out.remove(i);
        }
        1 => out.insert(i, lines[i].to_string()),
        2 => {
            let j = rng.random_range(0..lines.len());
            out.swap(i, j);
        }
        3 => {
            // Cut the line at a random character: an unclosed quote or tag.
            let l = &lines[i];
            let cuts: Vec<usize> = l.char_indices().map(|(k, _)| k).collect();
            out[i] = l[..cuts[rng.random_range(0..cuts.len())]].to_string();
        }
        _ => {
            let junk = [
                "\"", "'", "<", ">", "[", "]", "{", "}", "=", "\0", "\u{feff}", "é",
            ];
            out[i].insert_str(0, junk[rng.random_range(0..junk.len())]);
        }
    }
    out.concat()
}

/// Byte ranges of maximal runs of characters that satisfy `f`.
fn spans(s: &str, f: impl Fn(char) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (f(c), start) {
            (true, None) => start = Some(i),
            (false, Some(a)) => {
                out.push((a, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a, s.len()));
    }
    out
}

/// A JSON value with 1 to 3 nodes replaced, removed or duplicated.
pub fn json(rng: &mut Rng, v: &Value) -> Value {
    let mut v = v.clone();
    for _ in 0..rng.random_range(1..=3) {
        let n = count(&v);
        let k = rng.random_range(0..n);
        edit_node(rng, &mut v, k);
    }
    v
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Edit the node with pre-order number `k`; returns the count still to skip.
fn edit_node(rng: &mut Rng, v: &mut Value, k: usize) -> usize {
    if k == 0 {
        *v = replacement(rng, v);
        return usize::MAX;
    }
    let mut left = k - 1;
    match v {
        Value::Array(a) => {
            for x in a.iter_mut() {
                let c = count(x);
                if left < c {
                    return edit_node(rng, x, left);
                }
                left -= c;
            }
        }
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for key in keys {
                let c = count(&o[&key]);
                if left < c {
                    if left == 0 && rng.random_bool(0.25) {
                        o.remove(&key);
                        return usize::MAX;
                    }
                    return edit_node(rng, o.get_mut(&key).expect("listed"), left);
                }
                left -= c;
            }
        }
        _ => {}
    }
    left
}

fn replacement(rng: &mut Rng, old: &Value) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => serde_json::json!(edge(rng)),
        3 => serde_json::json!((edge(rng) as i64).wrapping_abs().wrapping_neg()),
        4 => serde_json::json!(f64::MAX),
        5 => Value::String(
            [
                "",
                " ",
                "0",
                "-1",
                "NaN",
                "\u{0}",
                "é",
                "c2g:edit:1:0",
                "99999999999999999999",
            ][rng.random_range(0..9)]
            .into(),
        ),
        6 => Value::String("x".repeat(rng.random_range(0..5000))),
        7 => match old {
            // The same node twice over (lists get longer).
            Value::Array(a) => Value::Array(a.iter().chain(a.iter()).cloned().collect()),
            other => Value::Array(vec![other.clone(), other.clone()]),
        },
        8 => Value::Object(Default::default()),
        _ => match old {
            Value::Number(n) => match n.as_u64() {
                Some(u) => serde_json::json!(u.wrapping_add(1)),
                None => serde_json::json!(0),
            },
            Value::String(s) => {
                let mut s = s.clone();
                s.push_str(&edge(rng).to_string());
                Value::String(s)
            }
            other => other.clone(),
        },
    }
}

/// A PNG's chunks: (offset of the length field, data length).
pub fn png_chunks(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= b.len() {
        let len = u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, len));
        match at.checked_add(12 + len) {
            Some(next) if next <= b.len() => at = next,
            _ => break,
        }
    }
    out
}

/// Recompute the CRC of the chunk whose length field is at `at` (if it
/// fits), so the decoder reads on past it.
pub fn png_fix_crc(b: &mut [u8], at: usize) {
    let len = u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize;
    let end = at + 8 + len;
    if end + 4 <= b.len() {
        let crc = crc32(&b[at + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// PNG's CRC-32 (ISO 3309), bitwise: inputs here are small.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &x in data {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
