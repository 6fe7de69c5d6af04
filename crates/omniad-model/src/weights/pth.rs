//! Reader for PyTorch `torch.save` files holding a state dict (`.pth`, `.pt`, `.bin`).
//!
//! Two container layouts are understood:
//!
//! - the zip archive written by `torch.save` since PyTorch 1.6 (`<name>/data.pkl`,
//!   `<name>/data/<key>` raw little-endian storages, `<name>/byteorder`); every entry's CRC-32 is
//!   checked while it is read, so a bit flip is reported instead of loaded;
//! - the legacy stream (`_use_new_zipfile_serialization=False`, e.g. older torchvision weights):
//!   magic-number pickle, protocol version 1001, system info, the object pickle, the list of
//!   storage keys, then each storage as an `i64` element count followed by its raw bytes.
//!
//! The pickle is interpreted, never executed: a small stack machine understands the binary
//! opcodes of protocols 2-5 and recognises only the callables `torch.save` emits for tensors
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, `collections.OrderedDict`, typed
//! storages such as `torch.FloatStorage` in persistent ids). Any other object (an
//! `argparse.Namespace` or optimizer state next to the weights) becomes opaque and is ignored
//! unless it is where a tensor is expected. Reference: PyTorch `torch/serialization.py` and
//! Python's `pickletools` opcode table.
use super::WeightsError;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use tch::{Kind, Tensor};

/// Keys under which a training checkpoint commonly wraps its state dict.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model", "net", "model_state_dict"];

/// Magic number at the start of legacy (non-zip) `torch.save` streams, as little-endian bytes of
/// the Python integer `0x1950a86a20f9469cfc6c`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

type Id = usize;

/// A reference to a typed storage, from a persistent id.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    /// Python storage class name, e.g. `FloatStorage`.
    type_name: String,
}

/// A tensor view onto a storage, from `_rebuild_tensor_v2`.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

#[derive(Debug, Clone)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in `i64`: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Anything else (an instance of an unknown class): kept only by name.
    Opaque(String),
}

impl Obj {
    fn describe(&self) -> String {
        match self {
            Obj::None => "None".into(),
            Obj::Bool(_) => "a bool".into(),
            Obj::Int(_) | Obj::BigInt(_) => "an int".into(),
            Obj::Float => "a float".into(),
            Obj::Str(_) => "a str".into(),
            Obj::Bytes => "bytes".into(),
            Obj::Tuple(_) => "a tuple".into(),
            Obj::List(_) => "a list".into(),
            Obj::Dict(_) => "a dict".into(),
            Obj::Global(m, n) => format!("the class {m}.{n}"),
            Obj::Storage(_) => "a storage".into(),
            Obj::Tensor(_) => "a tensor".into(),
            Obj::Opaque(name) => format!("an object of {name}"),
        }
    }
}

/// Interprets one pickle at a time from a byte buffer; objects live in an arena so that
/// containers shared through the memo are mutated in place, as in Python.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
    objs: Vec<Obj>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], file: &'a str) -> Self {
        Unpickler {
            data,
            pos: 0,
            file,
            objs: Vec::new(),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> WeightsError {
        WeightsError::Corrupt {
            file: self.file.to_string(),
            reason: format!("pickle at byte {}: {}", self.pos, reason.into()),
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> WeightsError {
        WeightsError::Unsupported {
            file: self.file.to_string(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WeightsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.corrupt("unexpected end of data (truncated file?)"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WeightsError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WeightsError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WeightsError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WeightsError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> Result<usize, WeightsError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.corrupt("length does not fit in memory"))
    }

    fn line(&mut self) -> Result<String, WeightsError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.corrupt("unterminated text line"))?;
        let s = String::from_utf8(rest[..n].to_vec())
            .map_err(|_| self.corrupt("text line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<String, WeightsError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("string is not valid UTF-8"))
    }

    fn push_obj(&mut self, stack: &mut Vec<Option<Id>>, o: Obj) {
        self.objs.push(o);
        stack.push(Some(self.objs.len() - 1));
    }

    fn pop(&self, stack: &mut Vec<Option<Id>>) -> Result<Id, WeightsError> {
        match stack.pop() {
            Some(Some(id)) => Ok(id),
            Some(None) => Err(self.corrupt("unexpected MARK on the stack")),
            None => Err(self.corrupt("stack underflow")),
        }
    }

    fn top(&self, stack: &[Option<Id>]) -> Result<Id, WeightsError> {
        match stack.last() {
            Some(Some(id)) => Ok(*id),
            _ => Err(self.corrupt("expected an object on top of the stack")),
        }
    }

    /// Pops everything down to (and including) the topmost MARK.
    fn pop_mark(&self, stack: &mut Vec<Option<Id>>) -> Result<Vec<Id>, WeightsError> {
        let m = stack
            .iter()
            .rposition(Option::is_none)
            .ok_or_else(|| self.corrupt("no MARK on the stack"))?;
        let items = stack[m + 1..].iter().flatten().copied().collect();
        stack.truncate(m);
        Ok(items)
    }

    fn int_of(&self, id: Id) -> Result<i64, WeightsError> {
        match &self.objs[id] {
            Obj::Int(v) => Ok(*v),
            Obj::Bool(b) => Ok(i64::from(*b)),
            o => Err(self.corrupt(format!("expected an int, found {}", o.describe()))),
        }
    }

    fn str_of(&self, id: Id) -> Result<String, WeightsError> {
        match &self.objs[id] {
            Obj::Str(s) => Ok(s.clone()),
            o => Err(self.corrupt(format!("expected a str, found {}", o.describe()))),
        }
    }

    fn ints_of(&self, id: Id) -> Result<Vec<i64>, WeightsError> {
        match &self.objs[id] {
            Obj::Tuple(items) | Obj::List(items) => items.iter().map(|&i| self.int_of(i)).collect(),
            o => Err(self.corrupt(format!("expected a tuple of ints, found {}", o.describe()))),
        }
    }

    fn tuple_of(&self, id: Id) -> Result<Vec<Id>, WeightsError> {
        match &self.objs[id] {
            Obj::Tuple(items) | Obj::List(items) => Ok(items.clone()),
            o => Err(self.corrupt(format!("expected a tuple, found {}", o.describe()))),
        }
    }

    /// Resolves a persistent id `('storage', storage_type, key, location, numel[, view])`.
    fn persistent_load(&self, pid: Id) -> Result<Obj, WeightsError> {
        let items = self.tuple_of(pid)?;
        if items.len() < 5 {
            return Err(self.corrupt("persistent id tuple is too short"));
        }
        let tag = self.str_of(items[0])?;
        if tag != "storage" {
            return Err(self.unsupported(format!("persistent id of kind '{tag}'")));
        }
        let type_name = match &self.objs[items[1]] {
            Obj::Global(_, name) => name.clone(),
            o => {
                return Err(
                    self.corrupt(format!("storage type in persistent id is {}", o.describe()))
                )
            }
        };
        if let Some(&view) = items.get(5) {
            if !matches!(self.objs[view], Obj::None) {
                return Err(self.unsupported("legacy storage views"));
            }
        }
        let key = match &self.objs[items[2]] {
            Obj::Str(s) => s.clone(),
            Obj::Int(i) => i.to_string(),
            o => return Err(self.corrupt(format!("storage key is {}", o.describe()))),
        };
        Ok(Obj::Storage(StorageRef { key, type_name }))
    }

    /// Applies `callable(*args)` for the few callables a state dict needs.
    fn reduce(&self, callable: Id, args: Id) -> Result<Obj, WeightsError> {
        let (module, name) = match &self.objs[callable] {
            Obj::Global(m, n) => (m.as_str(), n.as_str()),
            o => return Ok(Obj::Opaque(format!("result of calling {}", o.describe()))),
        };
        let args = match &self.objs[args] {
            Obj::Tuple(items) => items.clone(),
            _ => return Ok(Obj::Opaque(format!("{module}.{name}"))),
        };
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") if args.is_empty() => {
                Ok(Obj::Dict(Vec::new()))
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return Err(self.corrupt(format!("{name} with {} arguments", args.len())));
                }
                let storage = match &self.objs[args[0]] {
                    Obj::Storage(s) => s.clone(),
                    o => {
                        return Err(self
                            .corrupt(format!("{name} on {} instead of a storage", o.describe())))
                    }
                };
                let offset = self.int_of(args[1])?;
                let size = self.ints_of(args[2])?;
                let stride = self.ints_of(args[3])?;
                if size.len() != stride.len() {
                    return Err(self.corrupt(format!(
                        "tensor size {size:?} and stride {stride:?} differ in length"
                    )));
                }
                Ok(Obj::Tensor(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                }))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => match args.first() {
                Some(&t) if matches!(self.objs[t], Obj::Tensor(_)) => Ok(self.objs[t].clone()),
                _ => Err(self.corrupt("_rebuild_parameter without a tensor")),
            },
            _ => Ok(Obj::Opaque(format!("{module}.{name}"))),
        }
    }

    /// Runs one pickle up to its STOP opcode and returns the resulting object.
    fn load(&mut self) -> Result<Id, WeightsError> {
        let mut stack: Vec<Option<Id>> = Vec::new();
        let mut memo: HashMap<u64, Id> = HashMap::new();
        loop {
            let op = self
                .u8()
                .map_err(|_| self.corrupt("pickle ends before its STOP opcode (truncated?)"))?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.unsupported(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME length: frames are not needed in memory.
                }
                b'.' => return self.pop(&mut stack),
                b'(' => stack.push(None),
                b'0' => {
                    stack
                        .pop()
                        .ok_or_else(|| self.corrupt("POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark(&mut stack)?;
                }
                b'2' => {
                    let t = self.top(&stack)?;
                    stack.push(Some(t));
                }
                b'N' => self.push_obj(&mut stack, Obj::None),
                0x88 => self.push_obj(&mut stack, Obj::Bool(true)),
                0x89 => self.push_obj(&mut stack, Obj::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_obj(&mut stack, Obj::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_obj(&mut stack, Obj::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_obj(&mut stack, Obj::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let bytes = self.take(n)?;
                    let o = long_from_bytes(bytes);
                    self.push_obj(&mut stack, o);
                }
                b'I' => {
                    let line = self.line()?;
                    let o = match line.as_str() {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        s => Obj::Int(
                            s.parse()
                                .map_err(|_| self.corrupt(format!("bad INT literal '{s}'")))?,
                        ),
                    };
                    self.push_obj(&mut stack, o);
                }
                b'G' => {
                    self.take(8)?; // the value is never needed for a state dict
                    self.push_obj(&mut stack, Obj::Float);
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => usize::from(self.u8()?),
                        _ => self.len_u64()?,
                    };
                    let s = self.utf8(n)?;
                    self.push_obj(&mut stack, Obj::Str(s));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        usize::from(self.u8()?)
                    };
                    // Python 2 byte strings: decode as Latin-1, as torch.load does.
                    let s = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.push_obj(&mut stack, Obj::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => usize::from(self.u8()?),
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push_obj(&mut stack, Obj::Bytes);
                }
                b')' => self.push_obj(&mut stack, Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark(&mut stack)?;
                    self.push_obj(&mut stack, Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(&mut stack)?);
                    }
                    items.reverse();
                    self.push_obj(&mut stack, Obj::Tuple(items));
                }
                b']' => self.push_obj(&mut stack, Obj::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark(&mut stack)?;
                    self.push_obj(&mut stack, Obj::List(items));
                }
                0x8f => self.push_obj(&mut stack, Obj::List(Vec::new())),
                0x91 => {
                    let items = self.pop_mark(&mut stack)?;
                    self.push_obj(&mut stack, Obj::List(items));
                }
                b'a' | b'e' | 0x90 => {
                    let items = if op == b'a' {
                        vec![self.pop(&mut stack)?]
                    } else {
                        self.pop_mark(&mut stack)?
                    };
                    let target = self.top(&stack)?;
                    match &mut self.objs[target] {
                        Obj::List(list) => list.extend(items),
                        Obj::Opaque(_) => {}
                        o => {
                            let d = o.describe();
                            return Err(self.corrupt(format!("APPEND to {d}")));
                        }
                    }
                }
                b'}' => self.push_obj(&mut stack, Obj::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark(&mut stack)?;
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("DICT with an odd number of items"));
                    }
                    let pairs = items.chunks(2).map(|c| (c[0], c[1])).collect();
                    self.push_obj(&mut stack, Obj::Dict(pairs));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop(&mut stack)?;
                        let k = self.pop(&mut stack)?;
                        vec![k, v]
                    } else {
                        self.pop_mark(&mut stack)?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("SETITEMS with an odd number of items"));
                    }
                    let target = self.top(&stack)?;
                    match &mut self.objs[target] {
                        Obj::Dict(pairs) => pairs.extend(items.chunks(2).map(|c| (c[0], c[1]))),
                        Obj::Opaque(_) => {}
                        o => {
                            let d = o.describe();
                            return Err(self.corrupt(format!("SETITEM on {d}")));
                        }
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_obj(&mut stack, Obj::Global(module, name));
                }
                0x93 => {
                    let name = self.pop(&mut stack)?;
                    let module = self.pop(&mut stack)?;
                    let (module, name) = (self.str_of(module)?, self.str_of(name)?);
                    self.push_obj(&mut stack, Obj::Global(module, name));
                }
                b'R' => {
                    let args = self.pop(&mut stack)?;
                    let callable = self.pop(&mut stack)?;
                    let o = self.reduce(callable, args)?;
                    self.push_obj(&mut stack, o);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop(&mut stack)?; // kwargs
                    }
                    self.pop(&mut stack)?; // args
                    let cls = self.pop(&mut stack)?;
                    let o = match &self.objs[cls] {
                        Obj::Global(m, n) if m == "collections" && n == "OrderedDict" => {
                            Obj::Dict(Vec::new())
                        }
                        Obj::Global(m, n) => Obj::Opaque(format!("{m}.{n}")),
                        o => Obj::Opaque(o.describe()),
                    };
                    self.push_obj(&mut stack, o);
                }
                b'b' => {
                    // BUILD sets the instance state (e.g. a state dict's `_metadata`): not needed.
                    self.pop(&mut stack)?;
                    self.top(&stack)?;
                }
                b'Q' => {
                    let pid = self.pop(&mut stack)?;
                    let o = self.persistent_load(pid)?;
                    self.push_obj(&mut stack, o);
                }
                b'q' | b'r' | 0x94 | b'p' => {
                    let key = match op {
                        b'q' => u64::from(self.u8()?),
                        b'r' => u64::from(self.u32()?),
                        0x94 => memo.len() as u64,
                        _ => {
                            let l = self.line()?;
                            l.parse()
                                .map_err(|_| self.corrupt(format!("bad PUT index '{l}'")))?
                        }
                    };
                    let t = self.top(&stack)?;
                    memo.insert(key, t);
                }
                b'h' | b'j' | b'g' => {
                    let key = match op {
                        b'h' => u64::from(self.u8()?),
                        b'j' => u64::from(self.u32()?),
                        _ => {
                            let l = self.line()?;
                            l.parse()
                                .map_err(|_| self.corrupt(format!("bad GET index '{l}'")))?
                        }
                    };
                    let id = *memo
                        .get(&key)
                        .ok_or_else(|| self.corrupt(format!("memo key {key} was never stored")))?;
                    stack.push(Some(id));
                }
                other => {
                    return Err(self.unsupported(format!(
                        "pickle opcode 0x{other:02x} at byte {} (not emitted by torch.save for a state dict)",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

/// Decodes a little-endian two's complement integer of any length.
fn long_from_bytes(bytes: &[u8]) -> Obj {
    if bytes.len() > 8 {
        return Obj::BigInt(bytes.to_vec());
    }
    if bytes.is_empty() {
        return Obj::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
    a[..bytes.len()].copy_from_slice(bytes);
    Obj::Int(i64::from_le_bytes(a))
}

/// `(kind, element size in bytes)` of a Python typed-storage class.
fn storage_kind(type_name: &str) -> Option<(Kind, usize)> {
    Some(match type_name {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// Finds the state dict in the unpickled root object: the root dict itself when all its values
/// are tensors, else the dict under one of [`WRAPPER_KEYS`].
fn find_state_dict(u: &Unpickler, root: Id) -> Result<Vec<(String, TensorRef)>, WeightsError> {
    let entries = match &u.objs[root] {
        Obj::Dict(pairs) => pairs.clone(),
        o => {
            return Err(WeightsError::Unsupported {
                file: u.file.to_string(),
                reason: format!(
                    "the file holds {} instead of a state dict (save `model.state_dict()`)",
                    o.describe()
                ),
            })
        }
    };
    let all_tensors = entries
        .iter()
        .all(|&(_, v)| matches!(u.objs[v], Obj::Tensor(_)));
    let dict = if all_tensors {
        entries
    } else {
        let mut found = None;
        for key in WRAPPER_KEYS {
            let hit = entries
                .iter()
                .find(|&&(k, _)| matches!(&u.objs[k], Obj::Str(s) if s == key));
            if let Some(&(_, v)) = hit {
                if let Obj::Dict(inner) = &u.objs[v] {
                    found = Some(inner.clone());
                    break;
                }
            }
        }
        match found {
            Some(inner) => inner,
            None => {
                let keys: Vec<String> = entries
                    .iter()
                    .take(20)
                    .map(|&(k, _)| match &u.objs[k] {
                        Obj::Str(s) => s.clone(),
                        o => o.describe(),
                    })
                    .collect();
                return Err(WeightsError::Unsupported {
                    file: u.file.to_string(),
                    reason: format!(
                        "no state dict found: the top-level dict has non-tensor values and none of the keys {WRAPPER_KEYS:?} holds a dict (keys: {keys:?})"
                    ),
                });
            }
        }
    };
    dict.into_iter()
        .map(|(k, v)| {
            let name = match &u.objs[k] {
                Obj::Str(s) => s.clone(),
                o => {
                    return Err(WeightsError::Unsupported {
                        file: u.file.to_string(),
                        reason: format!("state dict key is {} instead of a str", o.describe()),
                    })
                }
            };
            match &u.objs[v] {
                Obj::Tensor(t) => Ok((name, t.clone())),
                o => Err(WeightsError::Unsupported {
                    file: u.file.to_string(),
                    reason: format!(
                        "state dict entry '{name}' is {}, not a tensor",
                        o.describe()
                    ),
                }),
            }
        })
        .collect()
}

/// Builds the tensor `t` views from the raw bytes of its storage.
fn materialize(
    file: &str,
    name: &str,
    t: &TensorRef,
    storage: &Tensor,
    storage_numel: i64,
) -> Result<Tensor, WeightsError> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        file: file.to_string(),
        reason: format!("tensor '{name}': {reason}"),
    };
    if t.offset < 0 || t.size.iter().any(|&s| s < 0) || t.stride.iter().any(|&s| s < 0) {
        return Err(corrupt(format!(
            "negative offset/size/stride ({}, {:?}, {:?})",
            t.offset, t.size, t.stride
        )));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1i64, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| corrupt(format!("size {:?} overflows", t.size)))?;
    if numel > 0 {
        let mut last = t.offset;
        for (&s, &st) in t.size.iter().zip(&t.stride) {
            last = (s - 1)
                .checked_mul(st)
                .and_then(|x| last.checked_add(x))
                .ok_or_else(|| corrupt("view overflows".to_string()))?;
        }
        if last >= storage_numel {
            return Err(corrupt(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {storage_numel}",
                t.offset, t.size, t.stride
            )));
        }
    }
    let tch_err = |e: tch::TchError| corrupt(e.to_string());
    storage
        .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
        .and_then(|v| v.f_contiguous())
        .map_err(tch_err)
}

fn storage_tensor(file: &str, s: &StorageRef, bytes: &[u8]) -> Result<(Tensor, i64), WeightsError> {
    let (kind, elem) = storage_kind(&s.type_name).ok_or_else(|| WeightsError::Unsupported {
        file: file.to_string(),
        reason: format!("tensor storage of type {}", s.type_name),
    })?;
    if bytes.len() / elem * elem != bytes.len() {
        return Err(WeightsError::Corrupt {
            file: file.to_string(),
            reason: format!(
                "storage '{}' has {} bytes, not a multiple of {elem} ({})",
                s.key,
                bytes.len(),
                s.type_name
            ),
        });
    }
    let numel = (bytes.len() / elem) as i64;
    let t = Tensor::f_from_data_size(bytes, &[numel], kind).map_err(|e| WeightsError::Corrupt {
        file: file.to_string(),
        reason: format!("storage '{}': {e}", s.key),
    })?;
    Ok((t, numel))
}

/// Reads a `torch.save` file held in memory; see the module documentation.
pub(crate) fn read_pth_bytes(
    bytes: &[u8],
    file: &str,
) -> Result<Vec<(String, Tensor)>, WeightsError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes, file)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes, file)
    } else {
        Err(WeightsError::Corrupt {
            file: file.to_string(),
            reason: "not a PyTorch file: neither a zip archive (torch.save since 1.6) nor a legacy pickle stream".into(),
        })
    }
}

fn read_zip(bytes: &[u8], file: &str) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        file: file.to_string(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(format!("invalid zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            corrupt("zip archive without a data.pkl entry (not written by torch.save)".into())
        })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Option<Vec<u8>>, WeightsError> {
        let mut entry = match zip.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(corrupt(format!("entry {name}: {e}"))),
        };
        let mut buf = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
        entry
            .read_to_end(&mut buf)
            .map_err(|e| corrupt(format!("entry {name}: {e}")))?;
        Ok(Some(buf))
    };
    if let Some(order) = read_entry(&format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(WeightsError::Unsupported {
                file: file.to_string(),
                reason: format!("byte order '{}'", String::from_utf8_lossy(&order)),
            });
        }
    }
    let pickle = read_entry(&pkl)?.ok_or_else(|| corrupt(format!("entry {pkl} vanished")))?;
    let mut u = Unpickler::new(&pickle, file);
    let root = u.load()?;
    let entries = find_state_dict(&u, root)?;
    let mut storages: HashMap<String, (Tensor, i64)> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        if !storages.contains_key(&t.storage.key) {
            let entry = format!("{prefix}data/{}", t.storage.key);
            let data = read_entry(&entry)?.ok_or_else(|| {
                corrupt(format!("tensor '{name}': storage entry {entry} is missing"))
            })?;
            let st = storage_tensor(file, &t.storage, &data)?;
            storages.insert(t.storage.key.clone(), st);
        }
        let (storage, numel) = &storages[&t.storage.key];
        let tensor = materialize(file, &name, &t, storage, *numel)?;
        out.push((name, tensor));
    }
    Ok(out)
}

fn read_legacy(bytes: &[u8], file: &str) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        file: file.to_string(),
        reason,
    };
    let mut u = Unpickler::new(bytes, file);
    let magic = u.load()?;
    if !matches!(&u.objs[magic], Obj::BigInt(b) if b.as_slice() == LEGACY_MAGIC) {
        return Err(corrupt(
            "a pickle, but not a PyTorch file (wrong magic number; plain pickles are not read)"
                .into(),
        ));
    }
    let version = u.load()?;
    if !matches!(u.objs[version], Obj::Int(1001)) {
        return Err(WeightsError::Unsupported {
            file: file.to_string(),
            reason: format!("legacy format version {}", u.objs[version].describe()),
        });
    }
    let sys_info = u.load()?;
    if let Obj::Dict(pairs) = &u.objs[sys_info] {
        for &(k, v) in pairs {
            if matches!(&u.objs[k], Obj::Str(s) if s == "little_endian")
                && matches!(u.objs[v], Obj::Bool(false))
            {
                return Err(WeightsError::Unsupported {
                    file: file.to_string(),
                    reason: "big-endian legacy file".into(),
                });
            }
        }
    }
    let root = u.load()?;
    let keys_id = u.load()?;
    let keys: Vec<String> = u
        .tuple_of(keys_id)?
        .into_iter()
        .map(|k| u.str_of(k))
        .collect::<Result<_, _>>()?;
    let entries = find_state_dict(&u, root)?;
    let types: HashMap<&str, &StorageRef> = entries
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), &t.storage))
        .collect();
    let mut pos = u.pos;
    let mut storages: HashMap<String, (Tensor, i64)> = HashMap::new();
    for key in &keys {
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| corrupt(format!("storage '{key}' is cut off (truncated file?)")))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(header);
        let numel = i64::from_le_bytes(a);
        pos += 8;
        let Some(s) = types.get(key.as_str()) else {
            return Err(WeightsError::Unsupported {
                file: file.to_string(),
                reason: format!(
                    "storage '{key}' is not used by the state dict; its type is unknown"
                ),
            });
        };
        let (_, elem) = storage_kind(&s.type_name).ok_or_else(|| WeightsError::Unsupported {
            file: file.to_string(),
            reason: format!("tensor storage of type {}", s.type_name),
        })?;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(elem))
            .ok_or_else(|| corrupt(format!("storage '{key}' has an invalid size {numel}")))?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| corrupt(format!("storage '{key}' is cut off (truncated file?)")))?;
        pos += len;
        storages.insert(key.clone(), storage_tensor(file, s, data)?);
    }
    entries
        .into_iter()
        .map(|(name, t)| {
            let (storage, numel) = storages.get(&t.storage.key).ok_or_else(|| {
                corrupt(format!(
                    "tensor '{name}': storage '{}' is missing",
                    t.storage.key
                ))
            })?;
            Ok((name.clone(), materialize(file, &name, &t, storage, *numel)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_decoding() {
        assert!(matches!(long_from_bytes(&[]), Obj::Int(0)));
        assert!(matches!(long_from_bytes(&[0xff]), Obj::Int(-1)));
        assert!(matches!(long_from_bytes(&[0x00, 0x01]), Obj::Int(256)));
        assert!(matches!(long_from_bytes(&[0xe9, 0x03]), Obj::Int(1001)));
        assert!(matches!(long_from_bytes(&LEGACY_MAGIC), Obj::BigInt(_)));
    }

    #[test]
    fn plain_pickle_dict_of_ints_is_not_a_state_dict() {
        // pickle.dumps({'a': 1}, protocol=2)
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";
        let mut u = Unpickler::new(p, "mem");
        let root = u.load().unwrap();
        let err = find_state_dict(&u, root).unwrap_err().to_string();
        assert!(err.contains("no state dict found"), "{err}");
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let p = b"\x80\x02}q\x00X\x01\x00\x00";
        let mut u = Unpickler::new(p, "mem");
        let err = u.load().unwrap_err().to_string();
        assert!(err.contains("mem") && err.contains("corrupt"), "{err}");
    }
}
