//! A pickle reader that runs no code: it turns the opcodes into a graph of
//! plain values ([`Node`]) and records every call (`REDUCE`, `NEWOBJ`,
//! `BUILD`, persistent ids) as data for the caller to interpret. Python's
//! unpickler would import `module.name` and call it; here a global is only
//! its two names, so a file cannot make anything run.
//!
//! Values live in one arena and refer to each other by index, the way the
//! pickle memo does: a dict fetched back from the memo (`BINGET`) is the
//! same node that later `SETITEMS` fill, so two keys holding one Python
//! object (`{"alias": sd, "g_ema": sd}`) both see its contents.
//!
//! Bounds: every length is checked against the bytes left before anything
//! is allocated, and each opcode adds at most one node, so memory stays
//! proportional to the input. Byte strings are borrowed from it, not copied.

use std::borrow::Cow;
use std::collections::HashMap;

/// Index of a node in a [`Graph`].
pub type Id = usize;

#[derive(Debug, Clone)]
pub enum Node<'a> {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(&'a [u8]),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// `module.name`, never imported.
    Global {
        module: Cow<'a, str>,
        name: Cow<'a, str>,
    },
    /// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), with
    /// what BUILD, SETITEMS and APPENDS then gave the object.
    Call {
        func: Id,
        args: Id,
        state: Option<Id>,
        items: Vec<(Id, Id)>,
        list: Vec<Id>,
    },
    /// A persistent id (`BINPERSID`): torch's reference to a storage.
    PersId(Id),
}

/// The nodes of one or more pickles read from the same bytes.
#[derive(Debug, Default)]
pub struct Graph<'a> {
    nodes: Vec<Node<'a>>,
}

/// What went wrong, with the byte offset it went wrong at.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<PickleError> for String {
    fn from(e: PickleError) -> Self {
        e.0
    }
}

type Res<T> = std::result::Result<T, PickleError>;

impl<'a> Graph<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nodes so far: ids below this exist.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, id: Id) -> &Node<'a> {
        &self.nodes[id]
    }

    fn push(&mut self, n: Node<'a>) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// The string at `id`, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id) {
            Node::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The elements of a tuple or list.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a dict, or of an object filled by SETITEMS (an
    /// `OrderedDict`, NVIDIA's `EasyDict`).
    pub fn items(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Node::Dict(v) => Some(v),
            Node::Call { items, .. } => Some(items),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict-like node.
    pub fn lookup(&self, id: Id, key: &str) -> Option<Id> {
        self.items(id)?
            .iter()
            .rev() // a later SETITEM wins, as in Python
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// A number as f64 (ints and floats).
    pub fn number(&self, id: Id) -> Option<f64> {
        match self.get(id) {
            Node::Int(i) => Some(*i as f64),
            Node::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn int(&self, id: Id) -> Option<i128> {
        match self.get(id) {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }

    /// For a call: the global called, as `(module, name)`, and its args node.
    pub fn call(&self, id: Id) -> Option<((&str, &str), Id)> {
        match self.get(id) {
            Node::Call { func, args, .. } => Some((self.global(*func)?, *args)),
            _ => None,
        }
    }

    /// Read one pickle from `data[start..]`, up to its STOP; returns the
    /// top-level value and the offset just after STOP.
    pub fn read(&mut self, data: &'a [u8], start: usize) -> Res<(Id, usize)> {
        Machine {
            g: self,
            data,
            pos: start,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
        .run()
    }
}

struct Machine<'g, 'a> {
    g: &'g mut Graph<'a>,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'_, 'a> {
    fn err(&self, at: usize, what: impl std::fmt::Display) -> PickleError {
        PickleError(format!("pickle byte {at}: {what}"))
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(self.err(
                self.pos,
                format!("needs {n} more bytes, the file has {left}: it is truncated or damaged"),
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Res<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A length prefix of `n` bytes, checked against what is left.
    fn len(&mut self, n: usize) -> Res<usize> {
        let at = self.pos;
        let v = match n {
            1 => self.u8()? as u64,
            4 => u32::from_le_bytes(self.le()?) as u64,
            _ => u64::from_le_bytes(self.le()?),
        };
        let left = (self.data.len() - self.pos) as u64;
        if v > left {
            return Err(self.err(
                at,
                format!("a length of {v} bytes, but only {left} are left: the file is truncated or damaged"),
            ));
        }
        Ok(v as usize)
    }

    /// A text line (protocol 0 arguments, GLOBAL's names), without its '\n'.
    fn line(&mut self) -> Res<&'a str> {
        let at = self.pos;
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err(at, "a text argument with no end of line"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.err(at, "a text argument is not UTF-8"))
    }

    fn pop(&mut self, op: u8) -> Res<Id> {
        self.stack
            .pop()
            .ok_or_else(|| self.err(self.pos - 1, format!("opcode {op:#04x} on an empty stack")))
    }

    fn top(&self, op: u8) -> Res<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err(self.pos - 1, format!("opcode {op:#04x} on an empty stack")))
    }

    /// Everything above the last MARK, removing the mark.
    fn pop_mark(&mut self, op: u8) -> Res<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err(self.pos - 1, format!("opcode {op:#04x} without a MARK")))?;
        if m > self.stack.len() {
            return Err(self.err(self.pos - 1, "a MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, n: Node<'a>) {
        let id = self.g.push(n);
        self.stack.push(id);
    }

    fn memo_put(&mut self, key: u64, op: u8) -> Res<()> {
        let v = self.top(op)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Res<()> {
        let at = self.pos;
        let v = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(at, format!("memo entry {key} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn utf8(&self, at: usize, b: &'a [u8]) -> Res<Node<'a>> {
        std::str::from_utf8(b)
            .map(|s| Node::Str(Cow::Borrowed(s)))
            .map_err(|_| self.err(at, "a string is not valid UTF-8"))
    }

    fn set_items(&mut self, target: Id, pairs: Vec<(Id, Id)>, op: u8) -> Res<()> {
        let at = self.pos - 1;
        match &mut self.g.nodes[target] {
            Node::Dict(items) | Node::Call { items, .. } => {
                items.extend(pairs);
                Ok(())
            }
            _ => Err(self.err(
                at,
                format!("opcode {op:#04x} sets items on something not a dict"),
            )),
        }
    }

    fn append(&mut self, target: Id, values: Vec<Id>, op: u8) -> Res<()> {
        let at = self.pos - 1;
        match &mut self.g.nodes[target] {
            Node::List(v) | Node::Call { list: v, .. } => {
                v.extend(values);
                Ok(())
            }
            _ => Err(self.err(
                at,
                format!("opcode {op:#04x} appends to something not a list"),
            )),
        }
    }

    fn call(&mut self, func: Id, args: Id) {
        self.push(Node::Call {
            func,
            args,
            state: None,
            items: Vec::new(),
            list: Vec::new(),
        });
    }

    fn run(mut self) -> Res<(Id, usize)> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                b'.' => {
                    let v = self.pop(op)?;
                    return Ok((v, self.pos));
                }
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(
                            self.err(at, format!("pickle protocol {proto} is newer than 5"))
                        );
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.le::<8>()?;
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(op)?;
                }
                b'1' => {
                    self.pop_mark(op)?;
                }
                b'2' => {
                    let v = self.top(op)?;
                    self.stack.push(v);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i128));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i128));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i128));
                }
                0x8a | 0x8b => {
                    let n = self.len(if op == 0x8a { 1 } else { 4 })?;
                    let b = self.take(n)?;
                    if n > 16 {
                        return Err(
                            self.err(at, format!("an integer of {n} bytes (at most 16 are read)"))
                        );
                    }
                    let mut v: i128 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i128) << (8 * i);
                    }
                    // Two's complement of n bytes: sign-extend.
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Node::Int(v));
                }
                b'I' => {
                    let s = self.line()?;
                    let n = match s {
                        "01" => Node::Bool(true),
                        "00" => Node::Bool(false),
                        _ => Node::Int(
                            s.parse()
                                .map_err(|_| self.err(at, format!("INT {s:?} is not a number")))?,
                        ),
                    };
                    self.push(n);
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| self.err(at, format!("LONG {s:?} is not a number")))?;
                    self.push(Node::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Node::Float(v));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s
                        .parse()
                        .map_err(|_| self.err(at, format!("FLOAT {s:?} is not a number")))?;
                    self.push(Node::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = self.len(match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    })?;
                    let b = self.take(n)?;
                    let s = self.utf8(at, b)?;
                    self.push(s);
                }
                // Python 2 strings: text if they decode, else bytes.
                b'T' | b'U' => {
                    let n = self.len(if op == b'U' { 1 } else { 4 })?;
                    let b = self.take(n)?;
                    let v = self.utf8(at, b).unwrap_or(Node::Bytes(b));
                    self.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = self.len(match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    })?;
                    let b = self.take(n)?;
                    self.push(Node::Bytes(b));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b't' => {
                    let v = self.pop_mark(op)?;
                    self.push(Node::Tuple(v));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err(
                            at,
                            format!("TUPLE{n} with {} values on the stack", self.stack.len()),
                        ));
                    }
                    let v = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(v));
                }
                b'l' => {
                    let v = self.pop_mark(op)?;
                    self.push(Node::List(v));
                }
                b'd' => {
                    let v = self.pop_mark(op)?;
                    let pairs = pairs_of(&v)
                        .ok_or_else(|| self.err(at, "DICT with an odd number of values"))?;
                    self.push(Node::Dict(pairs));
                }
                0x90 | 0x91 => {
                    let v = self.pop_mark(op)?;
                    if op == 0x91 {
                        self.push(Node::Set(v));
                    } else {
                        let s = self.top(op)?;
                        match &mut self.g.nodes[s] {
                            Node::Set(items) => items.extend(v),
                            _ => return Err(self.err(at, "ADDITEMS on something not a set")),
                        }
                    }
                }
                b'a' => {
                    let v = self.pop(op)?;
                    let list = self.top(op)?;
                    self.append(list, vec![v], op)?;
                }
                b'e' => {
                    let v = self.pop_mark(op)?;
                    let list = self.top(op)?;
                    self.append(list, v, op)?;
                }
                b's' => {
                    let v = self.pop(op)?;
                    let k = self.pop(op)?;
                    let d = self.top(op)?;
                    self.set_items(d, vec![(k, v)], op)?;
                }
                b'u' => {
                    let v = self.pop_mark(op)?;
                    let pairs = pairs_of(&v)
                        .ok_or_else(|| self.err(at, "SETITEMS with an odd number of values"))?;
                    let d = self.top(op)?;
                    self.set_items(d, pairs, op)?;
                }
                b'b' => {
                    let state = self.pop(op)?;
                    let obj = self.top(op)?;
                    match &mut self.g.nodes[obj] {
                        Node::Call { state: s, .. } => *s = Some(state),
                        _ => return Err(self.err(at, "BUILD on something that is not an object")),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Node::Global {
                        module: Cow::Borrowed(module),
                        name: Cow::Borrowed(name),
                    });
                }
                0x93 => {
                    let name = self.pop(op)?;
                    let module = self.pop(op)?;
                    let (Some(m), Some(n)) = (self.g.str(module), self.g.str(name)) else {
                        return Err(self.err(at, "STACK_GLOBAL of values that are not strings"));
                    };
                    let (m, n) = (Cow::Owned(m.to_string()), Cow::Owned(n.to_string()));
                    self.push(Node::Global { module: m, name: n });
                }
                b'R' | 0x81 => {
                    let args = self.pop(op)?;
                    let func = self.pop(op)?;
                    self.call(func, args);
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs; the kwargs are kept as
                    // a second argument.
                    let kwargs = self.pop(op)?;
                    let args = self.pop(op)?;
                    let cls = self.pop(op)?;
                    let both = self.g.push(Node::Tuple(vec![args, kwargs]));
                    self.call(cls, both);
                }
                b'o' => {
                    let v = self.pop_mark(op)?;
                    let (&cls, args) = v
                        .split_first()
                        .ok_or_else(|| self.err(at, "OBJ without a class"))?;
                    let args = self.g.push(Node::Tuple(args.to_vec()));
                    self.call(cls, args);
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.pop_mark(op)?;
                    let cls = self.g.push(Node::Global {
                        module: Cow::Borrowed(module),
                        name: Cow::Borrowed(name),
                    });
                    let args = self.g.push(Node::Tuple(v));
                    self.call(cls, args);
                }
                b'Q' => {
                    let pid = self.pop(op)?;
                    self.push(Node::PersId(pid));
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k, op)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(k, op)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k, op)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_get(k)?;
                }
                b'p' => {
                    let k = self.line()?;
                    let k = k
                        .parse()
                        .map_err(|_| self.err(at, format!("PUT {k:?} is not a number")))?;
                    self.memo_put(k, op)?;
                }
                b'g' => {
                    let k = self.line()?;
                    let k = k
                        .parse()
                        .map_err(|_| self.err(at, format!("GET {k:?} is not a number")))?;
                    self.memo_get(k)?;
                }
                0x97 | 0x98 => {
                    return Err(self.err(
                        at,
                        "out-of-band buffers (pickle protocol 5) are not supported",
                    ));
                }
                _ => {
                    return Err(self.err(
                        at,
                        format!("unsupported or invalid opcode {op:#04x}: not a pickle this reader knows, or damaged"),
                    ));
                }
            }
        }
    }
}

fn pairs_of(v: &[Id]) -> Option<Vec<(Id, Id)>> {
    v.len()
        .is_multiple_of(2)
        .then(|| v.chunks(2).map(|c| (c[0], c[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8]) -> Res<(Graph<'_>, Id)> {
        let mut g = Graph::new();
        let (root, end) = g.read(data, 0)?;
        assert_eq!(end, data.len());
        Ok((g, root))
    }

    /// `{"a": d, "b": d}` with `d = {"x": 1}`, as Python 3 pickles it at
    /// protocol 2: the second value is a memo reference to the first.
    #[test]
    fn memo_references_share_the_filled_object() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01}q\x02X\x01\x00\x00\x00xq\x03K\x01sX\x01\x00\x00\x00bq\x04h\x02u.";
        let (g, root) = read(data).unwrap();
        let a = g.lookup(root, "a").unwrap();
        let b = g.lookup(root, "b").unwrap();
        assert_eq!(a, b);
        assert_eq!(g.int(g.lookup(b, "x").unwrap()), Some(1));
    }

    #[test]
    fn integers_floats_and_globals() {
        // LONG1 of torch's legacy magic number, then a tuple of a negative
        // BININT, a BINFLOAT and a global, at protocol 2.
        let (g, root) = read(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        assert_eq!(g.int(root), Some(0x1950a86a20f9469cfc6c));
        let data =
            b"\x80\x02J\xfe\xff\xff\xffG?\xf8\x00\x00\x00\x00\x00\x00ctorch\nFloatStorage\n\x87.";
        let (g, root) = read(data).unwrap();
        let s = g.seq(root).unwrap().to_vec();
        assert_eq!(g.int(s[0]), Some(-2));
        assert_eq!(g.number(s[1]), Some(1.5));
        assert_eq!(g.global(s[2]), Some(("torch", "FloatStorage")));
        // LONG1 of -1 (one byte 0xff).
        let (g, root) = read(b"\x80\x02\x8a\x01\xff.").unwrap();
        assert_eq!(g.int(root), Some(-1));
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        for (data, want) in [
            (&b"\x80\x02X\xff\xff\xff\x7f"[..], "only 0 are left"),
            (b"\x80\x02h\x05.", "memo entry 5 was never stored"),
            (b"\x80\x02u.", "without a MARK"),
            (b"\x80\x02K\x01", "needs 1 more bytes"),
            (b"\x80\x02\x01.", "unsupported or invalid opcode 0x01"),
            (b"\x80\x02.", "empty stack"),
            (b"\x80\x02K\x01b.", "empty stack"),
            (b"\x80\x02]K\x01K\x02u.", "without a MARK"),
        ] {
            let e = read(data).expect_err("must fail").0;
            assert!(e.contains(want), "{e}");
        }
    }
}
