//! PyTorch's serialisations, read from bytes in memory with [`super::pickle`]
//! (no code runs):
//!
//! - **zip** (`torch.save` since PyTorch 1.6): `<archive>/data.pkl`, whose
//!   persistent ids name storages stored as `<archive>/data/<key>`.
//! - **legacy** (PyTorch < 1.6, and `_use_new_zipfile_serialization=False`):
//!   five pickles in a row (the magic number, the protocol version, system
//!   information, the object, the sorted storage keys), then each storage's
//!   bytes, preceded by its element count as a little-endian int64.
//! - **plain pickles** of tensors (what NVIDIA's `.pkl` files hold): a
//!   storage pickles as `torch.storage._load_from_bytes(b)` where `b` is a
//!   whole legacy file of that one storage.
//!
//! Tensors (`torch._utils._rebuild_tensor_v2` and parameters) are decoded
//! to f32 only when asked for, once per pickled object, with their strides.
//! Every size is checked against the bytes that back it, and the decoded
//! total is bounded by twice the file's size, so a damaged header cannot
//! make the reader allocate more than the file could hold.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};

use super::pickle::{Graph, Id, Node};

/// The magic number of the legacy format's first pickle.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The legacy format's protocol version (its second pickle).
const LEGACY_PROTOCOL: i128 = 1001;
/// Nesting followed when looking for tensors (state dicts are 2-3 deep).
const MAX_DEPTH: usize = 64;

pub(super) type Res<T> = std::result::Result<T, String>;

/// Element types of torch storages, by their pickled class names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn of_storage(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Element `i` of `b` (little-endian) as f32.
    fn read(self, b: &[u8], i: usize) -> f32 {
        let at = |n: usize| &b[i * n..i * n + n];
        match self {
            Self::F32 => f32::from_le_bytes(at(4).try_into().expect("4 bytes")),
            Self::F64 => f64::from_le_bytes(at(8).try_into().expect("8 bytes")) as f32,
            Self::F16 => f16_to_f32(u16::from_le_bytes(at(2).try_into().expect("2 bytes"))),
            Self::BF16 => f32::from_bits(
                (u16::from_le_bytes(at(2).try_into().expect("2 bytes")) as u32) << 16,
            ),
            Self::I64 => i64::from_le_bytes(at(8).try_into().expect("8 bytes")) as f32,
            Self::I32 => i32::from_le_bytes(at(4).try_into().expect("4 bytes")) as f32,
            Self::I16 => i16::from_le_bytes(at(2).try_into().expect("2 bytes")) as f32,
            Self::I8 => b[i] as i8 as f32,
            Self::U8 | Self::Bool => b[i] as f32,
        }
    }
}

/// IEEE half to single precision (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value f * 2^-24.
            let v = f as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// One storage: its bytes and element type.
#[derive(Debug, Clone, Copy)]
struct Storage<'a> {
    bytes: &'a [u8],
    elem: Elem,
}

impl Storage<'_> {
    fn numel(&self) -> usize {
        self.bytes.len() / self.elem.size()
    }
}

/// Where the storages named by persistent ids are.
enum Store<'a> {
    /// zip entries `<archive>/data/<key>`, by key.
    Zip(HashMap<String, &'a [u8]>),
    /// Legacy storages by key, already typed.
    Legacy(HashMap<String, Storage<'a>>),
    /// A plain pickle: no persistent ids; storages come from
    /// `_load_from_bytes` calls.
    None,
}

/// A file's pickled object graph and its storages.
pub(super) struct TorchFile<'a> {
    pub graph: Graph<'a>,
    pub root: Id,
    store: Store<'a>,
    /// Decoded f32 bytes left before the bound on the total.
    budget: usize,
    cache: HashMap<Id, Tensor>,
}

/// `(key, element type, element count, view)` of a storage persistent id:
/// `('storage', torch.FloatStorage, key, location, numel[, view])`.
type StorageRef<'g> = (&'g str, Elem, usize, Option<(&'g str, usize, usize)>);

fn storage_ref<'g>(g: &'g Graph<'_>, pid: Id) -> Res<StorageRef<'g>> {
    let t = g.seq(pid).ok_or("a persistent id that is not a tuple")?;
    match t.first().and_then(|&k| g.str(k)) {
        Some("storage") => {}
        Some(other) => {
            return Err(format!(
                "a persistent id of kind {other:?} (only tensor storages are read; a whole pickled module? save its state_dict() instead)"
            ))
        }
        None => return Err("a persistent id without a kind".into()),
    }
    if t.len() < 5 {
        return Err(format!(
            "a storage id of {} fields, expected 5 or 6",
            t.len()
        ));
    }
    let (module, name) = g
        .global(t[1])
        .ok_or("a storage id whose type is not a class name")?;
    let elem = Elem::of_storage(name).ok_or_else(|| {
        format!("storages of type {module}.{name} are not supported (float, half, bfloat16, double and integer storages are)")
    })?;
    let key = g
        .str(t[2])
        .ok_or("a storage id whose key is not a string")?;
    let numel = g
        .int(t[4])
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("a storage id whose size is not a count")?;
    let view = match t.get(5).map(|&v| (v, g.get(v))) {
        None | Some((_, Node::None)) => None,
        Some((v, _)) => {
            let f = g
                .seq(v)
                .filter(|f| f.len() == 3)
                .ok_or("a storage view that is not (key, offset, size)")?;
            let count = |i: usize| g.int(f[i]).and_then(|n| usize::try_from(n).ok());
            match (g.str(f[0]), count(1), count(2)) {
                (Some(k), Some(o), Some(s)) => Some((k, o, s)),
                _ => return Err("a storage view that is not (key, offset, size)".into()),
            }
        }
    };
    Ok((key, elem, numel, view))
}

/// Whether `data` starts with the legacy magic number: its first pickle is
/// that one integer (LONG1 from protocol 2 on, text before), so looking at
/// its first bytes avoids reading a large plain pickle twice.
fn is_legacy(data: &[u8]) -> bool {
    const LONG1: &[u8] = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
    const TEXT: &[u8] = b"L119547037146038801333356L\n.";
    let head = &data[..data.len().min(40)];
    let found = |pat: &[u8]| head.windows(pat.len()).any(|w| w == pat);
    if !(found(LONG1) || found(TEXT)) {
        return false;
    }
    let mut g = Graph::new(data.len());
    matches!(g.read(data, 0), Ok((root, _)) if g.int(root) == Some(LEGACY_MAGIC))
}

impl<'a> TorchFile<'a> {
    /// A zip archive as torch.save writes it.
    pub fn zip(data: &'a [u8]) -> Res<Self> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
            .map_err(|e| format!("not a readable zip archive: {e}"))?;
        let mut pkl = None;
        let mut entries: HashMap<String, &'a [u8]> = HashMap::new();
        let mut big_endian = false;
        for i in 0..archive.len() {
            let f = archive
                .by_index_raw(i)
                .map_err(|e| format!("zip entry {i}: {e}"))?;
            let name = f.name().to_string();
            let start = usize::try_from(f.data_start()).unwrap_or(usize::MAX);
            let len = usize::try_from(f.compressed_size()).unwrap_or(usize::MAX);
            let bytes = start
                .checked_add(len)
                .and_then(|end| data.get(start..end))
                .ok_or_else(|| {
                    format!("zip entry {name:?} extends past the end of the file: it is truncated")
                })?;
            if f.compression() != zip::CompressionMethod::Stored || f.size() != f.compressed_size()
            {
                return Err(format!(
                    "zip entry {name:?} is compressed; torch.save stores entries uncompressed: re-save the file with torch.save"
                ));
            }
            let Some((_, rest)) = name.split_once('/') else {
                continue;
            };
            if rest == "data.pkl" {
                pkl = Some(bytes);
            } else if rest == "byteorder" {
                big_endian = bytes == b"big";
            } else if let Some(key) = rest.strip_prefix("data/") {
                entries.insert(key.to_string(), bytes);
            }
        }
        if big_endian {
            return Err("a big-endian checkpoint: re-save it on a little-endian machine".into());
        }
        let pkl = pkl.ok_or("no data.pkl in the archive: not a torch.save file")?;
        let mut graph = Graph::new(data.len());
        let (root, _) = graph.read(pkl, 0).map_err(|e| format!("data.pkl: {e}"))?;
        Ok(Self::new(graph, root, Store::Zip(entries), data.len()))
    }

    /// A legacy torch.save file, or a plain pickle (NVIDIA's `.pkl`).
    pub fn pickle(data: &'a [u8]) -> Res<Self> {
        if is_legacy(data) {
            let (graph, root, storages) = legacy(data)?;
            Ok(Self::new(graph, root, Store::Legacy(storages), data.len()))
        } else {
            let mut graph = Graph::new(data.len());
            let (root, _) = graph.read(data, 0)?;
            Ok(Self::new(graph, root, Store::None, data.len()))
        }
    }

    fn new(graph: Graph<'a>, root: Id, store: Store<'a>, file_len: usize) -> Self {
        Self {
            graph,
            root,
            store,
            budget: file_len.saturating_mul(2),
            cache: HashMap::new(),
        }
    }

    /// Whether `id` is a pickled tensor or parameter.
    pub fn is_tensor(&self, id: Id) -> bool {
        matches!(
            self.graph.call(id),
            Some((
                (
                    "torch._utils",
                    "_rebuild_tensor_v2"
                        | "_rebuild_tensor"
                        | "_rebuild_parameter"
                        | "_rebuild_parameter_with_state"
                ) | ("torch._tensor", "_rebuild_from_type_v2"),
                _
            ))
        )
    }

    /// Every tensor reachable from `id` through dicts (and `OrderedDict`s),
    /// named by the keys on the way, joined with dots.
    pub fn tensor_names(&self, id: Id) -> Res<BTreeMap<String, Id>> {
        let mut out = BTreeMap::new();
        // Memo references let one dict appear under many keys (that is
        // how aliases work), and nested that way a few hundred bytes could
        // name 2^64 paths: the visits are bounded by the graph's size.
        let mut visits = 4 * self.graph.len() + 64;
        self.collect(id, "", &mut out, 0, &mut visits)?;
        Ok(out)
    }

    fn collect(
        &self,
        id: Id,
        prefix: &str,
        out: &mut BTreeMap<String, Id>,
        depth: usize,
        visits: &mut usize,
    ) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "dicts nested deeper than {MAX_DEPTH} (a reference cycle?)"
            ));
        }
        *visits = visits
            .checked_sub(1)
            .ok_or("the same dicts referenced over and over: the file is damaged")?;
        if self.is_tensor(id) {
            out.insert(prefix.to_string(), id);
            return Ok(());
        }
        let Some(items) = self.graph.items(id) else {
            return Ok(());
        };
        for &(k, v) in items {
            let key = match self.graph.get(k) {
                Node::Str(s) => s.to_string(),
                Node::Int(i) => i.to_string(),
                _ => continue,
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            self.collect(v, &name, out, depth + 1, visits)?;
        }
        Ok(())
    }

    /// The tensor pickled at `id`, as f32 on the CPU.
    pub fn tensor(&mut self, id: Id) -> Res<Tensor> {
        if let Some(t) = self.cache.get(&id) {
            return Ok(t.clone());
        }
        let t = self.decode(id, 0)?;
        self.cache.insert(id, t.clone());
        Ok(t)
    }

    fn decode(&mut self, id: Id, depth: usize) -> Res<Tensor> {
        if depth > 4 {
            return Err("a tensor wrapped in more than 4 rebuild calls".into());
        }
        let ((_, func), args) = self.graph.call(id).ok_or("not a tensor")?;
        let args = self
            .graph
            .seq(args)
            .ok_or("a tensor whose arguments are not a tuple")?
            .to_vec();
        match func {
            "_rebuild_parameter" | "_rebuild_parameter_with_state" => {
                let data = *args.first().ok_or("a parameter without data")?;
                self.decode(data, depth + 1)
            }
            "_rebuild_from_type_v2" => {
                // (func, new_type, args, state): rebuild what func would.
                let (Some(&f), Some(&inner)) = (args.first(), args.get(2)) else {
                    return Err("a typed tensor without its rebuild arguments".into());
                };
                let wrapped = self.graph.global(f) == Some(("torch._utils", "_rebuild_tensor_v2"));
                let inner = self
                    .graph
                    .seq(inner)
                    .ok_or("a typed tensor whose arguments are not a tuple")?
                    .to_vec();
                if !wrapped {
                    return Err("a typed tensor not rebuilt by _rebuild_tensor_v2".into());
                }
                self.strided(&inner)
            }
            _ => self.strided(&args),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn strided(&mut self, args: &[Id]) -> Res<Tensor> {
        if args.len() < 4 {
            return Err(format!(
                "a tensor of {} arguments, expected at least 4",
                args.len()
            ));
        }
        let storage = self.storage(args[0])?;
        let g = &self.graph;
        let count = |id: Id| g.int(id).and_then(|n| usize::try_from(n).ok());
        let offset = count(args[1]).ok_or("a tensor whose offset is not a count")?;
        let dims = |id: Id, what: &str| -> Res<Vec<usize>> {
            g.seq(id)
                .ok_or_else(|| format!("a tensor whose {what} is not a tuple"))?
                .iter()
                .map(|&d| {
                    count(d).ok_or_else(|| format!("a tensor whose {what} is not a list of counts"))
                })
                .collect()
        };
        let size = dims(args[2], "size")?;
        let stride = dims(args[3], "stride")?;
        if size.len() != stride.len() {
            return Err(format!("a tensor of size {size:?} with strides {stride:?}"));
        }
        let n = size
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("a tensor of size {size:?} overflows"))?;
        let numel = storage.numel();
        if n > 0 {
            let last = size.iter().zip(&stride).try_fold(offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| x.checked_add(a))
            });
            if last.is_none_or(|l| l >= numel) {
                return Err(format!(
                    "a tensor of size {size:?} (strides {stride:?}, offset {offset}) reaches past its storage of {numel} elements: the file is damaged"
                ));
            }
        }
        // Broadcast views (stride 0) would decode to more than their
        // storage holds; none occur in checkpoints, and refusing them keeps
        // every tensor within the bytes that back it.
        if n > numel {
            return Err(format!(
                "a tensor of {n} elements over a storage of {numel}: save it with .contiguous() first"
            ));
        }
        let bytes = n * 4;
        if bytes > self.budget {
            return Err(
                "the tensors would take more than twice the file's size: the file is damaged"
                    .into(),
            );
        }
        self.budget -= bytes;
        let mut out = Vec::with_capacity(n);
        let contiguous = {
            let mut expect = 1usize;
            size.iter().zip(&stride).rev().all(|(&d, &s)| {
                let ok = d == 1 || s == expect;
                expect *= d;
                ok
            })
        };
        if contiguous {
            out.extend((offset..offset + n).map(|i| storage.elem.read(storage.bytes, i)));
        } else {
            let mut idx = vec![0usize; size.len()];
            for _ in 0..n {
                let at = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
                out.push(storage.elem.read(storage.bytes, at));
                for d in (0..size.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < size[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        Tensor::from_vec(out, size, &Device::Cpu).map_err(|e| e.to_string())
    }

    /// The storage a tensor's first argument names.
    fn storage(&self, id: Id) -> Res<Storage<'a>> {
        match self.graph.get(id) {
            Node::PersId(pid) => {
                let (key, elem, numel, view) = storage_ref(&self.graph, *pid)?;
                let root = match &self.store {
                    Store::Zip(entries) => {
                        let bytes = entries
                            .get(key)
                            .ok_or_else(|| format!("storage {key:?} is missing from the archive: the file is truncated"))?;
                        let need = numel.checked_mul(elem.size()).filter(|&b| b <= bytes.len()).ok_or_else(|| {
                            format!("storage {key:?} claims {numel} elements but holds {} bytes: the file is damaged", bytes.len())
                        })?;
                        Storage {
                            bytes: &bytes[..need],
                            elem,
                        }
                    }
                    Store::Legacy(storages) => {
                        let s = storages.get(key).ok_or_else(|| {
                            format!("storage {key:?} is not in the file's storage list")
                        })?;
                        *s
                    }
                    Store::None => return Err("a persistent id in a plain pickle".into()),
                };
                view_of(root, view)
            }
            Node::Call(_) => match self.graph.call(id) {
                Some((("torch.storage", "_load_from_bytes"), args)) => {
                    let b = self
                        .graph
                        .seq(args)
                        .and_then(|a| a.first())
                        .and_then(|&b| match self.graph.get(b) {
                            Node::Bytes(b) => Some(*b),
                            _ => None,
                        })
                        .ok_or("_load_from_bytes without bytes")?;
                    nested_storage(b)
                }
                Some(((m, n), _)) => Err(format!("a tensor whose storage is made by {m}.{n}")),
                None => Err("a tensor whose storage is not a persistent id".into()),
            },
            _ => Err("a tensor whose storage is not a persistent id".into()),
        }
    }
}

/// A legacy view `(key, offset, size)` (elements) of a storage.
fn view_of<'a>(root: Storage<'a>, view: Option<(&str, usize, usize)>) -> Res<Storage<'a>> {
    let Some((_, offset, size)) = view else {
        return Ok(root);
    };
    let e = root.elem.size();
    let range = offset
        .checked_add(size)
        .filter(|&end| end <= root.numel())
        .map(|end| offset * e..end * e)
        .ok_or_else(|| {
            format!(
                "a storage view [{offset}, +{size}) past its storage of {} elements",
                root.numel()
            )
        })?;
    Ok(Storage {
        bytes: &root.bytes[range],
        elem: root.elem,
    })
}

/// The one storage of a legacy file saved by `TypedStorage.__reduce__`.
fn nested_storage(b: &[u8]) -> Res<Storage<'_>> {
    if !is_legacy(b) {
        return Err("a storage pickled as bytes that are not a torch.save file".into());
    }
    let (graph, root, storages) = legacy(b).map_err(|e| format!("a pickled storage: {e}"))?;
    let Node::PersId(pid) = graph.get(root) else {
        return Err("a pickled storage that holds something else".into());
    };
    let (key, _, _, view) = storage_ref(&graph, *pid)?;
    let s = *storages
        .get(key)
        .ok_or("a pickled storage without its bytes")?;
    view_of(s, view)
}

type Legacy<'a> = (Graph<'a>, Id, HashMap<String, Storage<'a>>);

/// The legacy layout: magic, protocol, system info, object, storage keys,
/// then per key `int64 count` and `count * element size` bytes.
fn legacy(data: &[u8]) -> Res<Legacy<'_>> {
    let mut graph = Graph::new(data.len());
    let (_, pos) = graph.read(data, 0)?; // the magic, checked by is_legacy
    let (proto, pos) = graph.read(data, pos)?;
    if graph.int(proto) != Some(LEGACY_PROTOCOL) {
        return Err(format!(
            "legacy torch file of protocol version {:?}, expected {LEGACY_PROTOCOL}",
            graph.number(proto)
        ));
    }
    let (info, pos) = graph.read(data, pos)?;
    if let Some(le) = graph.lookup(info, "little_endian") {
        if matches!(graph.get(le), Node::Bool(false)) {
            return Err("a big-endian checkpoint: re-save it on a little-endian machine".into());
        }
    }
    let first_node = graph.len();
    let (root, pos) = graph.read(data, pos)?;
    // Element types, from the persistent ids of the object's pickle.
    let mut pids = Vec::new();
    for id in first_node..graph.len() {
        if let Node::PersId(pid) = graph.get(id) {
            pids.push(*pid);
        }
    }
    let (keys, mut pos) = graph.read(data, pos)?;
    let keys = graph
        .seq(keys)
        .ok_or("the storage key list is not a list")?
        .to_vec();
    let mut storages = HashMap::new();
    {
        let mut types: HashMap<&str, Elem> = HashMap::new();
        for &pid in &pids {
            let (key, elem, _, view) = storage_ref(&graph, pid)?;
            // A view's type is its root's.
            let key = view.map(|(k, _, _)| k).unwrap_or(key);
            if types.insert(key, elem).is_some_and(|e| e != elem) {
                return Err(format!("storage {key:?} is used with two element types"));
            }
        }
        for k in keys {
            let key = graph.str(k).ok_or("a storage key that is not a string")?;
            let elem = *types
                .get(key)
                .ok_or_else(|| format!("storage {key:?} is listed but no tensor uses it"))?;
            let head = data.get(pos..pos + 8).ok_or_else(|| {
                format!("storage {key:?}: the file ends before its size: it is truncated")
            })?;
            let count = u64::from_le_bytes(head.try_into().expect("8 bytes"));
            pos += 8;
            let left = data.len() - pos;
            let len = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(elem.size()))
                .filter(|&l| l <= left)
                .ok_or_else(|| {
                    format!("storage {key:?} claims {count} elements, but {left} bytes are left: the file is truncated or damaged")
                })?;
            storages.insert(
                key.to_string(),
                Storage {
                    bytes: &data[pos..pos + len],
                    elem,
                },
            );
            pos += len;
        }
    }
    Ok((graph, root, storages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
