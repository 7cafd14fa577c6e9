//! The decoder: a frame's payload to a [`Message`], written by hand.
//!
//! It reads bincode's standard format, as the serde derives describe it,
//! and fails where bincode fails, with the same kind of error (tests check
//! both), borrowing strings and bytes from the payload. A length prefix
//! reserves room for at most [`PREALLOC`] items: a list grows as its items
//! are actually read, each taking at least one byte of the frame, so what
//! is allocated grows with what the frame holds (a few dozen bytes per byte
//! at most), not with the items it claims at however many levels. The [`DecodeLimits`] are enforced as each value is
//! met: nesting depth, values per message, and (once read, as bincode's
//! route did) size of strings, byte strings, lists and maps.

use std::borrow::Cow;

use super::encode::{tag, U16_MARK, U32_MARK, U64_MARK};
use super::{DecodeLimits, Message, Op, WireError, WireValue, LIMIT_MARK};

/// Decodes one message; the payload must hold it and nothing else.
pub(crate) fn message(payload: &[u8], limits: DecodeLimits) -> Result<Message<'_>, String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
        depth_left: limits.max_depth,
        nodes_left: limits.max_nodes,
        limits,
    };
    let msg = r.message().map_err(|fault| fault.0)?;
    match payload.len() - r.pos {
        0 => Ok(msg),
        extra => Err(format!(
            "malformed frame: {extra} trailing bytes after the message"
        )),
    }
}

/// Why decoding stopped: the message for the caller.
struct Fault(String);

/// What the reader's steps return: the error, rare, is boxed so that the
/// common outcome travels in registers.
type Res<T> = Result<T, Box<Fault>>;

/// The most items a length prefix reserves room for before they are read.
const PREALLOC: usize = 64;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth_left: u32,
    nodes_left: u32,
    limits: DecodeLimits,
}

/// A decode error that is not a limit: the frame is garbage.
#[cold]
#[inline(never)]
fn malformed(what: impl std::fmt::Display) -> Box<Fault> {
    Box::new(Fault(format!("malformed frame: {what}")))
}

/// A decode error caused by a limit.
#[cold]
#[inline(never)]
fn limit(what: impl std::fmt::Display) -> Box<Fault> {
    Box::new(Fault(format!("{LIMIT_MARK}{what}")))
}

impl<'a> Reader<'a> {
    fn message(&mut self) -> Res<Message<'a>> {
        Ok(match self.tag()? {
            tag::REQUEST => Message::Request {
                id: self.varint()?,
                target: self.varint()?,
                timeout_ms: self.varint()?,
                op: self.op()?,
            },
            tag::REPLY => Message::Reply {
                id: self.varint()?,
                result: match self.tag()? {
                    tag::OK => Ok(self.value()?),
                    tag::ERR => Err(self.error()?),
                    other => return Err(malformed(format!("unknown result variant {other}"))),
                },
            },
            tag::CANCEL => Message::Cancel { id: self.varint()? },
            tag::RELEASE => {
                let n = self.len()?;
                let mut refs = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    refs.push((self.varint()?, self.varint()?));
                }
                Message::Release { refs }
            }
            tag::GOODBYE => Message::Goodbye {
                reason: self.text()?,
            },
            tag::PING => Message::Ping,
            tag::PONG => Message::Pong,
            other => return Err(malformed(format!("unknown message variant {other}"))),
        })
    }

    fn op(&mut self) -> Res<Op<'a>> {
        Ok(match self.tag()? {
            tag::CALL => Op::Call {
                method: self.text()?,
                args: self.values()?,
            },
            tag::INVOKE => Op::Invoke {
                args: self.values()?,
            },
            tag::GET_ATTR => Op::GetAttr { name: self.text()? },
            tag::SET_ATTR => Op::SetAttr {
                name: self.text()?,
                value: self.value()?,
            },
            tag::DIR => Op::Dir,
            other => return Err(malformed(format!("unknown operation variant {other}"))),
        })
    }

    fn error(&mut self) -> Res<WireError<'a>> {
        let kind = self.text()?;
        let message = self.text()?;
        let n = self.len()?;
        let mut context = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            context.push(self.text()?);
        }
        Ok(WireError {
            kind,
            message,
            context,
        })
    }

    /// A list of values.
    fn values(&mut self) -> Res<Vec<WireValue<'a>>> {
        let n = self.len()?;
        let mut list = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            list.push(self.value()?);
        }
        Ok(list)
    }

    /// One value, charged against the depth and node budgets.
    fn value(&mut self) -> Res<WireValue<'a>> {
        if self.depth_left == 0 {
            return Err(limit("value nested too deeply"));
        }
        if self.nodes_left == 0 {
            return Err(limit("too many values in one message"));
        }
        self.depth_left -= 1;
        self.nodes_left -= 1;
        let value = self.value_body();
        self.depth_left += 1;
        value
    }

    fn value_body(&mut self) -> Res<WireValue<'a>> {
        Ok(match self.tag()? {
            tag::UNIT => WireValue::Unit,
            tag::BOOL => WireValue::Bool(match self.byte()? {
                0 => false,
                1 => true,
                other => return Err(malformed(format!("invalid boolean {other}"))),
            }),
            tag::INT => WireValue::Int(unzigzag(self.varint()?)),
            tag::UINT => WireValue::UInt(self.varint()?),
            tag::FLOAT => WireValue::Float(f64::from_le_bytes(self.array()?)),
            tag::STR => {
                let s = self.text()?;
                self.check_bytes("a string of", s.len())?;
                WireValue::Str(s)
            }
            tag::BYTES => {
                let b = self.bytes()?;
                self.check_bytes("a byte string of", b.len())?;
                WireValue::Bytes(Cow::Borrowed(b))
            }
            tag::LIST => {
                let list = self.values()?;
                self.check_items("a list of", list.len())?;
                WireValue::List(list)
            }
            tag::MAP => {
                let n = self.len()?;
                let mut map = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    map.push((self.value()?, self.value()?));
                }
                self.check_items("a map of", map.len())?;
                WireValue::Map(map)
            }
            tag::SENDER_REF => WireValue::SenderRef {
                id: self.varint()?,
                type_name: self.text()?,
            },
            tag::RECEIVER_REF => WireValue::ReceiverRef(self.varint()?),
            other => return Err(malformed(format!("unknown value variant {other}"))),
        })
    }

    fn check_bytes(&self, what: &str, len: usize) -> Res<()> {
        check_size(what, len, "bytes", self.limits.max_bytes)
    }

    fn check_items(&self, what: &str, len: usize) -> Res<()> {
        check_size(what, len, "items", self.limits.max_list)
    }

    /// A UTF-8 string, borrowed.
    fn text(&mut self) -> Res<Cow<'a, str>> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| malformed(format!("invalid UTF-8 in a string: {e}")))
    }

    /// A length-prefixed byte string, borrowed.
    fn bytes(&mut self) -> Res<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    /// A length prefix. (Nothing is reserved from it beyond [`PREALLOC`]
    /// items, and nothing is read past the frame's end.)
    fn len(&mut self) -> Res<usize> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| malformed(format!("a length of {n}")))
    }

    /// An enum's variant index: a `u32`, so bincode's 9-byte form is not
    /// one.
    fn tag(&mut self) -> Res<u64> {
        match self.buf.get(self.pos) {
            Some(&U64_MARK) => Err(malformed("a variant index wider than 32 bits")),
            _ => self.varint(),
        }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end));
        let Some(bytes) = bytes else {
            return Err(malformed("the message ends early"));
        };
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Res<u8> {
        let Some(&b) = self.buf.get(self.pos) else {
            return Err(malformed("the message ends early"));
        };
        self.pos += 1;
        Ok(b)
    }

    /// bincode's variable-length unsigned integer.
    #[inline]
    fn varint(&mut self) -> Res<u64> {
        match self.buf.get(self.pos) {
            Some(&small @ 0..=250) => {
                self.pos += 1;
                Ok(small.into())
            }
            _ => self.wide_varint(),
        }
    }

    fn wide_varint(&mut self) -> Res<u64> {
        match self.byte()? {
            U16_MARK => Ok(u16::from_le_bytes(self.array()?).into()),
            U32_MARK => Ok(u32::from_le_bytes(self.array()?).into()),
            U64_MARK => Ok(u64::from_le_bytes(self.array()?)),
            small @ 0..=250 => Ok(small.into()),
            other => Err(malformed(format!("invalid integer marker {other}"))),
        }
    }
}

/// Refuses a string, byte string, list or map of `len` `unit` over `max`.
fn check_size(what: &str, len: usize, unit: &str, max: usize) -> Res<()> {
    if len > max {
        return Err(limit(format!(
            "{what} {len} {unit} is over this side's limit of {max}"
        )));
    }
    Ok(())
}

/// The inverse of [`super::encode::zigzag`].
fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}
