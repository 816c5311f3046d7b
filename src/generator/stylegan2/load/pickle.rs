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
//! is allocated, and byte strings are borrowed from the input, not copied.
//! What the reader does allocate (the nodes, their children, its stack,
//! marks and memo) is paid from a byte budget before it is allocated: the
//! file's size, or [`MIN_BUDGET`] for a smaller file. A pickle is mostly
//! structure, one byte an opcode, and a node takes 32, so without it a file
//! of a few megabytes of `]` would ask for a hundred; with it, no allocation
//! while reading goes beyond the file's size. A real checkpoint's pickle
//! takes a small part of its file (the tensors' bytes are the rest).

use std::collections::BTreeMap;
use std::mem::size_of;

/// Index of a node in a [`Graph`].
pub type Id = usize;

#[derive(Debug, Clone)]
pub enum Node<'a> {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// `module.name`, never imported: the ids of its two strings.
    Global {
        module: Id,
        name: Id,
    },
    /// A call (boxed: it is the largest node and a pickle's rarer kind).
    Call(Box<Call>),
    /// A persistent id (`BINPERSID`): torch's reference to a storage.
    PersId(Id),
}

/// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), with what
/// BUILD, SETITEMS and APPENDS then gave the object.
#[derive(Debug, Clone)]
pub struct Call {
    pub func: Id,
    pub args: Id,
    pub state: Option<Id>,
    pub items: Vec<(Id, Id)>,
    pub list: Vec<Id>,
}

/// The least budget a reader gets, however small its file: the pickle of a
/// tiny network is nearly all structure (the 16 px test networks' NVIDIA
/// pickle, 94 KB, grows its nodes to 262 KB).
pub const MIN_BUDGET: usize = 1 << 20;

/// What a memo entry is charged: a B-tree's share per key (leaves of at
/// least 5 keys and values in 184 bytes, and the inner nodes above them).
const MEMO_ENTRY: usize = 48;

/// The nodes of one or more pickles read from the same bytes, and what is
/// left of the byte budget they were read under.
#[derive(Debug)]
pub struct Graph<'a> {
    nodes: Vec<Node<'a>>,
    budget: usize,
    left: usize,
}

/// The budget ran out (the caller words it, with the offset it knows).
struct Spent;

/// Make room in `v` for `extra` more elements, paying for any new capacity
/// from `left` before it is allocated, so that nothing grows unpaid (and no
/// single allocation exceeds the budget). Grows by doubling while the
/// budget allows, then to what is needed.
fn reserve<T>(left: &mut usize, v: &mut Vec<T>, extra: usize) -> Result<(), Spent> {
    let need = v.len().checked_add(extra).ok_or(Spent)?;
    let cap = v.capacity();
    if need <= cap {
        return Ok(());
    }
    let size = size_of::<T>().max(1);
    let afford = cap + *left / size;
    if need > afford {
        return Err(Spent);
    }
    let new_cap = need.max(cap.saturating_mul(2)).max(4).min(afford);
    *left -= (new_cap - cap) * size;
    v.reserve_exact(new_cap - v.len());
    Ok(())
}

/// Pay for `n` elements of `T` about to be allocated as a new vector.
fn pay<T>(left: &mut usize, n: usize) -> Result<(), Spent> {
    let bytes = n.checked_mul(size_of::<T>()).ok_or(Spent)?;
    *left = left.checked_sub(bytes).ok_or(Spent)?;
    Ok(())
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
    /// A graph read under the budget of a file of `file_len` bytes (the
    /// whole file the pickles are in, not only their bytes).
    pub fn new(file_len: usize) -> Self {
        let budget = file_len.max(MIN_BUDGET);
        Self {
            nodes: Vec::new(),
            budget,
            left: budget,
        }
    }

    /// Nodes so far: ids below this exist.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, id: Id) -> &Node<'a> {
        &self.nodes[id]
    }

    fn push(&mut self, n: Node<'a>) -> Result<Id, Spent> {
        reserve(&mut self.left, &mut self.nodes, 1)?;
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
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
            Node::Global { module, name } => Some((self.str(*module)?, self.str(*name)?)),
            _ => None,
        }
    }

    /// The call at `id`, if it is one.
    pub fn call_node(&self, id: Id) -> Option<&Call> {
        match self.get(id) {
            Node::Call(c) => Some(c),
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
            Node::Call(c) => Some(&c.items),
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
            Node::Call(c) => Some((self.global(c.func)?, c.args)),
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
            memo: BTreeMap::new(),
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
    memo: BTreeMap<u64, Id>,
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

    /// The budget's error, at the opcode being read.
    fn spent(&self, _: Spent) -> PickleError {
        self.err(
            self.pos,
            format!(
                "the pickle holds more values than a file of this size can describe (the reader's budget of {} bytes is spent): the file is damaged, or not a checkpoint",
                self.g.budget
            ),
        )
    }

    /// A new node, paid for.
    fn node(&mut self, n: Node<'a>) -> Res<Id> {
        self.g.push(n).map_err(|e| self.spent(e))
    }

    fn stack_push(&mut self, id: Id) -> Res<()> {
        reserve(&mut self.g.left, &mut self.stack, 1).map_err(|e| self.spent(e))?;
        self.stack.push(id);
        Ok(())
    }

    /// The top `n` values of the stack as a new vector, paid for.
    fn split_stack(&mut self, at: usize) -> Res<Vec<Id>> {
        pay::<Id>(&mut self.g.left, self.stack.len() - at).map_err(|e| self.spent(e))?;
        Ok(self.stack.split_off(at))
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
        self.split_stack(m)
    }

    fn push(&mut self, n: Node<'a>) -> Res<()> {
        let id = self.node(n)?;
        self.stack_push(id)
    }

    fn memo_put(&mut self, key: u64, op: u8) -> Res<()> {
        let v = self.top(op)?;
        if !self.memo.contains_key(&key) {
            self.g.left = self
                .g
                .left
                .checked_sub(MEMO_ENTRY)
                .ok_or(Spent)
                .map_err(|e| self.spent(e))?;
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Res<()> {
        let at = self.pos;
        let v = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(at, format!("memo entry {key} was never stored")))?;
        self.stack_push(v)
    }

    fn utf8(&self, at: usize, b: &'a [u8]) -> Res<Node<'a>> {
        std::str::from_utf8(b)
            .map(Node::Str)
            .map_err(|_| self.err(at, "a string is not valid UTF-8"))
    }

    fn set_items(&mut self, target: Id, pairs: &[(Id, Id)], op: u8) -> Res<()> {
        let g = &mut *self.g;
        let items = match &mut g.nodes[target] {
            Node::Dict(items) => Some(items),
            Node::Call(c) => Some(&mut c.items),
            _ => None,
        };
        let Some(items) = items else {
            return Err(self.err(
                self.pos - 1,
                format!("opcode {op:#04x} sets items on something not a dict"),
            ));
        };
        let paid =
            reserve(&mut g.left, items, pairs.len()).map(|()| items.extend_from_slice(pairs));
        paid.map_err(|e| self.spent(e))
    }

    fn append(&mut self, target: Id, values: &[Id], op: u8) -> Res<()> {
        let g = &mut *self.g;
        let list = match (&mut g.nodes[target], op == 0x90) {
            (Node::Set(v), true) | (Node::List(v), false) => Some(v),
            (Node::Call(c), false) => Some(&mut c.list),
            _ => None,
        };
        let Some(list) = list else {
            let what = if op == 0x90 {
                "adds items to something not a set"
            } else {
                "appends to something not a list"
            };
            return Err(self.err(self.pos - 1, format!("opcode {op:#04x} {what}")));
        };
        let paid =
            reserve(&mut g.left, list, values.len()).map(|()| list.extend_from_slice(values));
        paid.map_err(|e| self.spent(e))
    }

    /// The values of a DICT or SETITEMS as key-value pairs, paid for.
    fn pairs_of(&mut self, v: &[Id], at: usize, op: &str) -> Res<Vec<(Id, Id)>> {
        if !v.len().is_multiple_of(2) {
            return Err(self.err(at, format!("{op} with an odd number of values")));
        }
        pay::<(Id, Id)>(&mut self.g.left, v.len() / 2).map_err(|e| self.spent(e))?;
        Ok(v.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn call(&mut self, func: Id, args: Id) -> Res<()> {
        pay::<Call>(&mut self.g.left, 1).map_err(|e| self.spent(e))?;
        self.push(Node::Call(Box::new(Call {
            func,
            args,
            state: None,
            items: Vec::new(),
            list: Vec::new(),
        })))
    }

    /// A global named by two text lines (GLOBAL, INST).
    fn global_of_lines(&mut self) -> Res<Id> {
        let module = self.line()?;
        let name = self.line()?;
        let module = self.node(Node::Str(module))?;
        let name = self.node(Node::Str(name))?;
        self.node(Node::Global { module, name })
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
                b'(' => {
                    reserve(&mut self.g.left, &mut self.marks, 1).map_err(|e| self.spent(e))?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop(op)?;
                }
                b'1' => {
                    self.pop_mark(op)?;
                }
                b'2' => {
                    let v = self.top(op)?;
                    self.stack_push(v)?;
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i128))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i128))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i128))?;
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
                    self.push(Node::Int(v))?;
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
                    self.push(n)?;
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| self.err(at, format!("LONG {s:?} is not a number")))?;
                    self.push(Node::Int(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Node::Float(v))?;
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s
                        .parse()
                        .map_err(|_| self.err(at, format!("FLOAT {s:?} is not a number")))?;
                    self.push(Node::Float(v))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = self.len(match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    })?;
                    let b = self.take(n)?;
                    let s = self.utf8(at, b)?;
                    self.push(s)?;
                }
                // Python 2 strings: text if they decode, else bytes.
                b'T' | b'U' => {
                    let n = self.len(if op == b'U' { 1 } else { 4 })?;
                    let b = self.take(n)?;
                    let v = self.utf8(at, b).unwrap_or(Node::Bytes(b));
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = self.len(match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    })?;
                    let b = self.take(n)?;
                    self.push(Node::Bytes(b))?;
                }
                b']' => self.push(Node::List(Vec::new()))?,
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b')' => self.push(Node::Tuple(Vec::new()))?,
                0x8f => self.push(Node::Set(Vec::new()))?,
                b't' => {
                    let v = self.pop_mark(op)?;
                    self.push(Node::Tuple(v))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err(
                            at,
                            format!("TUPLE{n} with {} values on the stack", self.stack.len()),
                        ));
                    }
                    let v = self.split_stack(self.stack.len() - n)?;
                    self.push(Node::Tuple(v))?;
                }
                b'l' => {
                    let v = self.pop_mark(op)?;
                    self.push(Node::List(v))?;
                }
                b'd' => {
                    let v = self.pop_mark(op)?;
                    let pairs = self.pairs_of(&v, at, "DICT")?;
                    self.push(Node::Dict(pairs))?;
                }
                0x90 | 0x91 => {
                    let v = self.pop_mark(op)?;
                    if op == 0x91 {
                        self.push(Node::Set(v))?;
                    } else {
                        let s = self.top(op)?;
                        self.append(s, &v, op)?;
                    }
                }
                b'a' => {
                    let v = self.pop(op)?;
                    let list = self.top(op)?;
                    self.append(list, &[v], op)?;
                }
                b'e' => {
                    let v = self.pop_mark(op)?;
                    let list = self.top(op)?;
                    self.append(list, &v, op)?;
                }
                b's' => {
                    let v = self.pop(op)?;
                    let k = self.pop(op)?;
                    let d = self.top(op)?;
                    self.set_items(d, &[(k, v)], op)?;
                }
                b'u' => {
                    let v = self.pop_mark(op)?;
                    let pairs = self.pairs_of(&v, at, "SETITEMS")?;
                    let d = self.top(op)?;
                    self.set_items(d, &pairs, op)?;
                }
                b'b' => {
                    let state = self.pop(op)?;
                    let obj = self.top(op)?;
                    match &mut self.g.nodes[obj] {
                        Node::Call(c) => c.state = Some(state),
                        _ => return Err(self.err(at, "BUILD on something that is not an object")),
                    }
                }
                b'c' => {
                    let g = self.global_of_lines()?;
                    self.stack_push(g)?;
                }
                0x93 => {
                    let name = self.pop(op)?;
                    let module = self.pop(op)?;
                    if self.g.str(module).is_none() || self.g.str(name).is_none() {
                        return Err(self.err(at, "STACK_GLOBAL of values that are not strings"));
                    }
                    self.push(Node::Global { module, name })?;
                }
                b'R' | 0x81 => {
                    let args = self.pop(op)?;
                    let func = self.pop(op)?;
                    self.call(func, args)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs; the kwargs are kept as
                    // a second argument.
                    let kwargs = self.pop(op)?;
                    let args = self.pop(op)?;
                    let cls = self.pop(op)?;
                    pay::<Id>(&mut self.g.left, 2).map_err(|e| self.spent(e))?;
                    let both = self.node(Node::Tuple(vec![args, kwargs]))?;
                    self.call(cls, both)?;
                }
                b'o' => {
                    let v = self.pop_mark(op)?;
                    let (&cls, args) = v
                        .split_first()
                        .ok_or_else(|| self.err(at, "OBJ without a class"))?;
                    pay::<Id>(&mut self.g.left, args.len()).map_err(|e| self.spent(e))?;
                    let args = self.node(Node::Tuple(args.to_vec()))?;
                    self.call(cls, args)?;
                }
                b'i' => {
                    let cls = self.global_of_lines()?;
                    let v = self.pop_mark(op)?;
                    let args = self.node(Node::Tuple(v))?;
                    self.call(cls, args)?;
                }
                b'Q' => {
                    let pid = self.pop(op)?;
                    self.push(Node::PersId(pid))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8]) -> Res<(Graph<'_>, Id)> {
        let mut g = Graph::new(data.len());
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

    /// Structure alone (one byte an opcode, 32 or more bytes a value) runs
    /// out of budget with a clear error instead of growing without bound:
    /// lists, duplicates on the stack, marks, memo entries, tuples.
    #[test]
    fn a_pickle_of_structure_alone_spends_its_budget_and_stops() {
        let n = 3 * MIN_BUDGET;
        for (start, unit) in [
            (&b""[..], &b"]"[..]),
            (b"N", b"2"),
            (b"N", b"("),
            (b"N", b"\x94"),
            (b"N", b"\x85"),
        ] {
            let mut data = b"\x80\x04".to_vec();
            data.extend_from_slice(start);
            while data.len() < n {
                data.extend_from_slice(unit);
            }
            data.push(b'.');
            let mut g = Graph::new(data.len() / 3);
            let e = g.read(&data, 0).expect_err("must run out").0;
            assert!(
                e.contains("budget of 1048576 bytes is spent"),
                "{unit:?}: {e}"
            );
            assert!(g.left < 64, "{unit:?}: {} bytes left unspent", g.left);
            // A file of that size is within its own budget.
            let mut g = Graph::new(64 * n);
            assert!(g.read(&data, 0).is_ok(), "{unit:?}");
        }
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
