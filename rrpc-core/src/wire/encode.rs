//! The encoder: a [`Message`] to bytes, written by hand.
//!
//! The bytes are bincode's standard format (variable-length integers,
//! little-endian), exactly what the serde derives on the message types
//! describe; a test checks that both agree. Going through serde cost about
//! four times as many instructions per call, one small write per field.

use super::{Message, Op, WireError, WireValue};

/// Where encoded bytes go.
pub(crate) trait Out {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Variant indexes, as serde numbers them (declaration order).
pub(crate) mod tag {
    pub const REQUEST: u64 = 0;
    pub const REPLY: u64 = 1;
    pub const CANCEL: u64 = 2;
    pub const RELEASE: u64 = 3;
    pub const GOODBYE: u64 = 4;
    pub const PING: u64 = 5;
    pub const PONG: u64 = 6;

    pub const OK: u64 = 0;
    pub const ERR: u64 = 1;

    pub const CALL: u64 = 0;
    pub const INVOKE: u64 = 1;
    pub const GET_ATTR: u64 = 2;
    pub const SET_ATTR: u64 = 3;
    pub const DIR: u64 = 4;

    pub const UNIT: u64 = 0;
    pub const BOOL: u64 = 1;
    pub const INT: u64 = 2;
    pub const UINT: u64 = 3;
    pub const FLOAT: u64 = 4;
    pub const STR: u64 = 5;
    pub const BYTES: u64 = 6;
    pub const LIST: u64 = 7;
    pub const MAP: u64 = 8;
    pub const SENDER_REF: u64 = 9;
    pub const RECEIVER_REF: u64 = 10;
}

/// The first byte of bincode's 3-, 5- and 9-byte integer forms; smaller
/// values are a single byte.
pub(crate) const U16_MARK: u8 = 251;
pub(crate) const U32_MARK: u8 = 252;
pub(crate) const U64_MARK: u8 = 253;

/// Encodes `msg` (without a length prefix) into `out`.
pub(crate) fn message(out: &mut impl Out, msg: &Message<'_>) {
    match msg {
        Message::Request {
            id,
            target,
            timeout_ms,
            op,
        } => {
            request_head(out, *id, *target, *timeout_ms, op_tag(op), op_name(op));
            op_rest(out, op);
        }
        Message::Reply { id, result } => {
            let mut head = Head::default();
            head.varint(tag::REPLY);
            head.varint(*id);
            match result {
                Ok(v) => {
                    head.varint(tag::OK);
                    value_with(out, head, v);
                }
                Err(e) => {
                    head.varint(tag::ERR);
                    out.put(head.bytes());
                    error(out, e);
                }
            }
        }
        Message::Cancel { id } => {
            varint(out, tag::CANCEL);
            varint(out, *id);
        }
        Message::Release { refs } => {
            varint(out, tag::RELEASE);
            len(out, refs.len());
            for &(id, n) in refs {
                let mut pair = Head::default();
                pair.varint(id);
                pair.varint(n);
                out.put(pair.bytes());
            }
        }
        Message::Goodbye { reason } => {
            varint(out, tag::GOODBYE);
            text(out, reason);
        }
        Message::Ping => varint(out, tag::PING),
        Message::Pong => varint(out, tag::PONG),
    }
}

/// Writes a request's fixed fields, up to its operation's tag (one of
/// [`tag`]'s `CALL` .. `DIR`), and the operation's name when it has one
/// (a method's or an attribute's). The rest of the operation follows: what
/// [`message`] writes for it or, to encode arguments one at a time without
/// gathering them in a list first, [`len_then_value`] for the number of
/// arguments and the first one, then [`value`] for each of the others (or
/// [`len`] of 0 when there are none).
pub(crate) fn request_head(
    out: &mut impl Out,
    id: u64,
    target: u64,
    timeout_ms: u64,
    op: u64,
    name: Option<&str>,
) {
    // The fixed fields, and a short name with them, go out in one piece.
    let mut head = Head::default();
    head.varint(tag::REQUEST);
    head.varint(id);
    head.varint(target);
    head.varint(timeout_ms);
    head.varint(op);
    match name {
        Some(name) => bytes_with(out, head, name.as_bytes()),
        None => out.put(head.bytes()),
    }
}

fn op_tag(op: &Op<'_>) -> u64 {
    match op {
        Op::Call { .. } => tag::CALL,
        Op::Invoke { .. } => tag::INVOKE,
        Op::GetAttr { .. } => tag::GET_ATTR,
        Op::SetAttr { .. } => tag::SET_ATTR,
        Op::Dir => tag::DIR,
    }
}

/// The name of an operation that has one.
fn op_name<'a>(op: &'a Op<'_>) -> Option<&'a str> {
    match op {
        Op::Call { method, .. } => Some(method),
        Op::GetAttr { name } | Op::SetAttr { name, .. } => Some(name),
        Op::Invoke { .. } | Op::Dir => None,
    }
}

/// What an operation holds after its name.
fn op_rest(out: &mut impl Out, op: &Op<'_>) {
    match op {
        Op::Call { args, .. } | Op::Invoke { args } => values(out, args),
        Op::SetAttr { value: v, .. } => value(out, v),
        Op::GetAttr { .. } | Op::Dir => {}
    }
}

fn values(out: &mut impl Out, list: &[WireValue<'_>]) {
    match list {
        [] => len(out, 0),
        [first, rest @ ..] => {
            len_then_value(out, list.len(), first);
            rest.iter().for_each(|v| value(out, v));
        }
    }
}

/// Writes the length `n` of a list and its first item, `first` (the
/// others follow with [`value`]). The length and a scalar item go out in
/// one piece: the common call has a single scalar argument.
pub(crate) fn len_then_value(out: &mut impl Out, n: usize, first: &WireValue<'_>) {
    let mut head = Head::default();
    head.varint(n as u64);
    value_with(out, head, first);
}

/// Writes one value.
pub(crate) fn value(out: &mut impl Out, v: &WireValue<'_>) {
    value_with(out, Head::default(), v);
}

/// Encodes `v` after the bytes already in `head` (scalars share its write).
fn value_with(out: &mut impl Out, mut head: Head, v: &WireValue<'_>) {
    match v {
        WireValue::Unit => head.varint(tag::UNIT),
        WireValue::Bool(b) => {
            head.varint(tag::BOOL);
            head.byte(u8::from(*b));
        }
        WireValue::Int(i) => {
            head.varint(tag::INT);
            head.varint(zigzag(*i));
        }
        WireValue::UInt(u) => {
            head.varint(tag::UINT);
            head.varint(*u);
        }
        WireValue::Float(f) => {
            head.varint(tag::FLOAT);
            head.raw(&f.to_le_bytes());
        }
        WireValue::ReceiverRef(id) => {
            head.varint(tag::RECEIVER_REF);
            head.varint(*id);
        }
        WireValue::SenderRef { id, type_name } => {
            head.varint(tag::SENDER_REF);
            head.varint(*id);
            return bytes_with(out, head, type_name.as_bytes());
        }
        WireValue::Str(s) => {
            head.varint(tag::STR);
            return bytes_with(out, head, s.as_bytes());
        }
        WireValue::Bytes(b) => {
            head.varint(tag::BYTES);
            return bytes_with(out, head, b);
        }
        WireValue::List(l) => {
            head.varint(tag::LIST);
            out.put(head.bytes());
            return values(out, l);
        }
        WireValue::Map(m) => {
            head.varint(tag::MAP);
            head.varint(m.len() as u64);
            out.put(head.bytes());
            for (k, v) in m {
                value(out, k);
                value(out, v);
            }
            return;
        }
    }
    out.put(head.bytes());
}

fn error(out: &mut impl Out, e: &WireError<'_>) {
    text(out, &e.kind);
    text(out, &e.message);
    len(out, e.context.len());
    e.context.iter().for_each(|c| text(out, c));
}

fn text(out: &mut impl Out, s: &str) {
    bytes(out, s.as_bytes());
}

fn bytes(out: &mut impl Out, b: &[u8]) {
    bytes_with(out, Head::default(), b);
}

/// Writes a byte string after the bytes already in `head`; a short one
/// joins them in one piece.
fn bytes_with(out: &mut impl Out, mut head: Head, b: &[u8]) {
    head.varint(b.len() as u64);
    if b.len() <= head.room() {
        head.raw(b);
        out.put(head.bytes());
    } else {
        out.put(head.bytes());
        out.put(b);
    }
}

/// Writes a length (of a list, map, string or byte string).
pub(crate) fn len(out: &mut impl Out, n: usize) {
    varint(out, n as u64);
}

fn varint(out: &mut impl Out, v: u64) {
    let mut head = Head::default();
    head.varint(v);
    out.put(head.bytes());
}

/// bincode's mapping of signed integers to unsigned ones (small magnitudes
/// stay small): 0, -1, 1, -2, ... become 0, 1, 2, 3, ...
pub(super) fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

/// Room for the fixed fields of a message, gathered on the stack and
/// written at once: at most 38 bytes (a request's 2 tags and 3 integers,
/// 29 bytes, then its name's length), and a short string when it fits in
/// what is left (see [`Head::raw`]).
pub(crate) const HEAD: usize = 64;
const _: () = assert!(HEAD >= 38);

struct Head {
    buf: [u8; HEAD],
    len: usize,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            buf: [0; HEAD],
            len: 0,
        }
    }
}

impl Head {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn byte(&mut self, b: u8) {
        self.raw(&[b]);
    }

    /// Bytes that can still be gathered.
    fn room(&self) -> usize {
        HEAD - self.len
    }

    fn raw(&mut self, bytes: &[u8]) {
        // The most any caller gathers is a request's: 2 tags, 3 integers
        // and a length (38 bytes, see `HEAD`), and then a string only when
        // it fits in `room`; a head never falls short.
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn varint(&mut self, v: u64) {
        if v <= 250 {
            self.byte(v as u8);
        } else if let Ok(v) = u16::try_from(v) {
            self.byte(U16_MARK);
            self.raw(&v.to_le_bytes());
        } else if let Ok(v) = u32::try_from(v) {
            self.byte(U32_MARK);
            self.raw(&v.to_le_bytes());
        } else {
            self.byte(U64_MARK);
            self.raw(&v.to_le_bytes());
        }
    }
}
