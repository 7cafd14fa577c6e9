//! What crosses the wire: messages, their values, and the codec.
//!
//! Every message is one frame: a 4-byte big-endian length, then the message
//! in bincode's standard format (variable-length integers, little-endian),
//! as the serde derives below describe it. [`encode_into`] and [`decode`]
//! use a codec written by hand (`wire/encode.rs`, `wire/decode.rs`): the
//! same bytes at a fraction of the cost. bincode through the derives stays
//! the definition: property tests check the codec against it, and it
//! decodes the head of a message that broke a limit. Decoding borrows
//! strings and bytes from the frame, and a length prefix reserves room for
//! a few items only (a list grows as its items are read), so what the
//! decoder allocates grows with what the frame holds, not with the lengths
//! it claims;
//! limits bound the nesting depth and the number of values in one message.

use std::borrow::Cow;
use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{ErrorKind, RemoteError};

mod decode;
pub(crate) mod encode;

/// Version of the protocol spoken after the handshake.
pub const PROTOCOL_VERSION: u16 = 2;

/// One message between peers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Run `op` on object `target` (0 is the peer's root) and reply with `id`.
    Request {
        /// Matches the reply to the call.
        id: u64,
        /// The object the operation applies to.
        target: u64,
        /// Milliseconds the caller will wait; 0 means no deadline.
        timeout_ms: u64,
        /// What to do.
        #[serde(borrow)]
        op: Op<'a>,
    },
    /// The outcome of request `id`.
    Reply {
        /// The request this answers.
        id: u64,
        /// The returned value or the error raised.
        #[serde(borrow)]
        result: Result<WireValue<'a>, WireError<'a>>,
    },
    /// The caller gave up on request `id`: stop working on it.
    Cancel {
        /// The request to cancel.
        id: u64,
    },
    /// The sender dropped its proxies: (object id, references released) pairs.
    Release {
        /// Object ids and how many references to each were released.
        refs: Vec<(u64, u64)>,
    },
    /// The sender is closing the connection, and why.
    Goodbye {
        /// Why the connection is closed.
        #[serde(borrow)]
        reason: Cow<'a, str>,
    },
    /// Keep-alive: are you there? (Answered with [`Message::Pong`].)
    Ping,
    /// Keep-alive: yes.
    Pong,
}

/// The first fields of a message: enough to answer a request or fail a
/// call whose body broke a limit.
#[derive(Debug, Deserialize)]
pub enum Head {
    /// A request and its id.
    Request {
        /// The request id.
        id: u64,
    },
    /// A reply and the id of the request it answers.
    Reply {
        /// The request id.
        id: u64,
    },
}

/// Decodes just the [`Head`] of a message, ignoring the rest.
pub fn decode_head(payload: &[u8]) -> Option<Head> {
    bincode::serde::borrow_decode_from_slice::<Head, _>(payload, bincode_config())
        .ok()
        .map(|(head, _)| head)
}

/// Marks decode errors caused by a configured limit (as opposed to garbage).
pub const LIMIT_MARK: &str = "limit exceeded: ";

/// An operation on an object.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op<'a> {
    /// Call a method.
    Call {
        /// The method name.
        #[serde(borrow)]
        method: Cow<'a, str>,
        /// Positional arguments.
        #[serde(borrow)]
        args: Vec<WireValue<'a>>,
    },
    /// Call the object itself (a function, closure or class).
    Invoke {
        /// Positional arguments.
        #[serde(borrow)]
        args: Vec<WireValue<'a>>,
    },
    /// Read an attribute.
    GetAttr {
        /// The attribute name.
        #[serde(borrow)]
        name: Cow<'a, str>,
    },
    /// Write an attribute.
    SetAttr {
        /// The attribute name.
        #[serde(borrow)]
        name: Cow<'a, str>,
        /// The new value.
        #[serde(borrow)]
        value: WireValue<'a>,
    },
    /// List the object's members.
    Dir,
}

impl Op<'_> {
    /// A short description for logs: `call f`, `getattr t`, ...
    pub fn describe(&self) -> String {
        match self {
            Op::Call { method, .. } => format!("call {method}"),
            Op::Invoke { .. } => "invoke".to_owned(),
            Op::GetAttr { name } => format!("getattr {name}"),
            Op::SetAttr { name, .. } => format!("setattr {name}"),
            Op::Dir => "dir".to_owned(),
        }
    }
}

/// A value on the wire. Object references are named from the sender's side.
#[derive(Debug, Clone, Serialize)]
pub enum WireValue<'a> {
    /// Nothing.
    Unit,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// Bytes.
    Bytes(#[serde(with = "serde_bytes")] Cow<'a, [u8]>),
    /// A list.
    List(Vec<WireValue<'a>>),
    /// A map as pairs.
    Map(Vec<(WireValue<'a>, WireValue<'a>)>),
    /// An object owned by the sender; the receiver holds a proxy to it.
    SenderRef {
        /// The sender's object id.
        id: u64,
        /// The object's type name, for display.
        type_name: Cow<'a, str>,
    },
    /// An object owned by the receiver (a proxy coming home).
    ReceiverRef(u64),
}

/// The same shape as [`WireValue`], derived for decoding; [`WireValue`]'s own
/// `Deserialize` wraps it to enforce the decode budget at every level.
#[derive(Deserialize)]
#[serde(rename = "WireValue")]
enum WireValueRepr<'a> {
    Unit,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(#[serde(borrow)] Cow<'a, str>),
    Bytes(#[serde(with = "serde_bytes", borrow)] Cow<'a, [u8]>),
    List(#[serde(borrow)] Vec<WireValue<'a>>),
    Map(#[serde(borrow)] Vec<(WireValue<'a>, WireValue<'a>)>),
    SenderRef {
        id: u64,
        #[serde(borrow)]
        type_name: Cow<'a, str>,
    },
    ReceiverRef(u64),
}

impl<'a> From<WireValueRepr<'a>> for WireValue<'a> {
    fn from(repr: WireValueRepr<'a>) -> Self {
        match repr {
            WireValueRepr::Unit => WireValue::Unit,
            WireValueRepr::Bool(b) => WireValue::Bool(b),
            WireValueRepr::Int(i) => WireValue::Int(i),
            WireValueRepr::UInt(u) => WireValue::UInt(u),
            WireValueRepr::Float(f) => WireValue::Float(f),
            WireValueRepr::Str(s) => WireValue::Str(s),
            WireValueRepr::Bytes(b) => WireValue::Bytes(b),
            WireValueRepr::List(l) => WireValue::List(l),
            WireValueRepr::Map(m) => WireValue::Map(m),
            WireValueRepr::SenderRef { id, type_name } => WireValue::SenderRef { id, type_name },
            WireValueRepr::ReceiverRef(id) => WireValue::ReceiverRef(id),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _level = Budget::enter().map_err(serde::de::Error::custom)?;
        let value = WireValue::from(WireValueRepr::deserialize(deserializer)?);
        check_size(&value).map_err(serde::de::Error::custom)?;
        Ok(value)
    }
}

/// Checks one value's own size (strings, bytes, lists, maps) against the limits.
fn check_size(value: &WireValue<'_>) -> Result<(), String> {
    let (what, len, max) = BUDGET.with(|b| {
        let b = b.get();
        match value {
            WireValue::Str(s) => ("a string of", s.len(), b.max_bytes),
            WireValue::Bytes(v) => ("a byte string of", v.len(), b.max_bytes),
            WireValue::List(l) => ("a list of", l.len(), b.max_list),
            WireValue::Map(m) => ("a map of", m.len(), b.max_list),
            _ => ("", 0, usize::MAX),
        }
    });
    if len > max {
        let unit = if what.contains("list") || what.contains("map") {
            "items"
        } else {
            "bytes"
        };
        return Err(format!(
            "{LIMIT_MARK}{what} {len} {unit} is over this side's limit of {max}"
        ));
    }
    Ok(())
}

/// A [`RemoteError`] on the wire; the kind travels as its name, so kinds this
/// version does not know arrive as [`ErrorKind::Custom`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WireError<'a> {
    /// The kind's name.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// The message.
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// Context lines, innermost first.
    #[serde(borrow)]
    pub context: Vec<Cow<'a, str>>,
}

impl<'a> From<&'a RemoteError> for WireError<'a> {
    fn from(err: &'a RemoteError) -> Self {
        let kind = match &err.kind {
            ErrorKind::Custom(k) => Cow::Borrowed(k.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        WireError {
            kind,
            message: Cow::Borrowed(&err.message),
            context: err
                .context
                .iter()
                .map(|c| Cow::Borrowed(c.as_str()))
                .collect(),
        }
    }
}

impl From<WireError<'_>> for RemoteError {
    fn from(err: WireError<'_>) -> Self {
        let kind = match &*err.kind {
            "NoSuchMethod" => ErrorKind::NoSuchMethod,
            "NoSuchAttribute" => ErrorKind::NoSuchAttribute,
            "NoSuchObject" => ErrorKind::NoSuchObject,
            "BadArgument" => ErrorKind::BadArgument,
            "NotCallable" => ErrorKind::NotCallable,
            "ReadOnly" => ErrorKind::ReadOnly,
            "Timeout" => ErrorKind::Timeout,
            "Cancelled" => ErrorKind::Cancelled,
            "Refused" => ErrorKind::Refused,
            "ConnectionLost" => ErrorKind::ConnectionLost,
            "NotExposed" => ErrorKind::NotExposed,
            "NotFound" => ErrorKind::NotFound,
            "PermissionDenied" => ErrorKind::PermissionDenied,
            "Io" => ErrorKind::Io,
            "Protocol" => ErrorKind::Protocol,
            "Internal" => ErrorKind::Internal,
            other => ErrorKind::Custom(other.to_owned()),
        };
        let mut remote = RemoteError::new(kind, err.message.into_owned());
        remote.context = err.context.into_iter().map(Cow::into_owned).collect();
        remote
    }
}

/// Limits applied while decoding one message.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Deepest nesting of values.
    pub max_depth: u32,
    /// Most values in the message.
    pub max_nodes: u32,
    /// Longest string or byte string.
    pub max_bytes: usize,
    /// Most items in a list or map.
    pub max_list: usize,
}

impl DecodeLimits {
    /// Limits with the given depth and node count, and strings and lists
    /// bounded only by the frame.
    pub const fn new(max_depth: u32, max_nodes: u32) -> Self {
        DecodeLimits {
            max_depth,
            max_nodes,
            max_bytes: usize::MAX,
            max_list: usize::MAX,
        }
    }
}

#[derive(Clone, Copy)]
struct BudgetState {
    depth_left: u32,
    nodes_left: u32,
    max_bytes: usize,
    max_list: usize,
}

const NO_BUDGET: BudgetState = BudgetState {
    depth_left: 0,
    nodes_left: 0,
    max_bytes: 0,
    max_list: 0,
};

thread_local! {
    /// What is left of the limits for the message being decoded on this thread.
    static BUDGET: Cell<BudgetState> = const { Cell::new(NO_BUDGET) };
}

/// One level of nesting charged against the decode budget; dropping it gives
/// the level back (nodes are never given back).
struct Budget;

impl Budget {
    fn enter() -> Result<Budget, String> {
        BUDGET.with(|b| {
            let mut state = b.get();
            if state.depth_left == 0 {
                return Err(format!("{LIMIT_MARK}value nested too deeply"));
            }
            if state.nodes_left == 0 {
                return Err(format!("{LIMIT_MARK}too many values in one message"));
            }
            state.depth_left -= 1;
            state.nodes_left -= 1;
            b.set(state);
            Ok(Budget)
        })
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        BUDGET.with(|b| {
            let mut state = b.get();
            state.depth_left += 1;
            b.set(state);
        });
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes `msg` as one frame (length prefix included) appended to `out`.
///
/// Returns the size of the message without its prefix.
///
/// ```
/// use rrpc_core::wire::{decode, encode_into, DecodeLimits, Message, Op, WireValue};
///
/// let call = Message::Request {
///     id: 1,
///     target: 0,
///     timeout_ms: 30_000,
///     op: Op::Call { method: "inc".into(), args: vec![WireValue::Int(41)] },
/// };
/// let mut frame = Vec::new();
/// let len = encode_into(&call, &mut frame)?;
/// assert_eq!(frame[..4], (len as u32).to_be_bytes());
/// let back = decode(&frame[4..], DecodeLimits::new(64, 10_000))?;
/// assert_eq!(format!("{back:?}"), format!("{call:?}"));
///
/// // Garbage is refused as such; a limit is marked as a limit.
/// assert!(decode(&[0xff], DecodeLimits::new(64, 10_000)).unwrap_err().starts_with("malformed frame"));
/// let deep = decode(&frame[4..], DecodeLimits::new(0, 10_000)).unwrap_err();
/// assert!(deep.starts_with(rrpc_core::wire::LIMIT_MARK));
/// # Ok::<(), String>(())
/// ```
pub fn encode_into(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<usize, String> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    encode::message(out, msg);
    let len = out.len() - start - 4;
    let prefix = match u32::try_from(len) {
        Ok(prefix) => prefix,
        Err(_) => {
            out.truncate(start);
            return Err(format!("message of {len} bytes is too large"));
        }
    };
    out[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
    Ok(len)
}

/// Decodes one message from a frame's payload (without its length prefix).
///
/// Errors caused by a limit start with [`LIMIT_MARK`]; the others mean the
/// frame is garbage.
pub fn decode(payload: &[u8], limits: DecodeLimits) -> Result<Message<'_>, String> {
    decode::message(payload, limits)
}

/// The serde route through bincode: the reference the hand-written codec
/// is checked against.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

    pub(crate) fn encode(msg: &Message<'_>) -> Vec<u8> {
        match bincode::serde::encode_to_vec(msg, bincode_config()) {
            Ok(bytes) => bytes,
            Err(e) => panic!("the reference encoder failed: {e}"),
        }
    }

    pub(crate) fn decode(payload: &[u8], limits: DecodeLimits) -> Result<Message<'_>, String> {
        BUDGET.with(|b| {
            b.set(BudgetState {
                depth_left: limits.max_depth,
                nodes_left: limits.max_nodes,
                max_bytes: limits.max_bytes,
                max_list: limits.max_list,
            })
        });
        let decoded =
            bincode::serde::borrow_decode_from_slice::<Message<'_>, _>(payload, bincode_config());
        BUDGET.with(|b| b.set(NO_BUDGET));
        match decoded {
            Ok((msg, used)) if used == payload.len() => Ok(msg),
            Ok((_, used)) => Err(format!("{} trailing bytes", payload.len() - used)),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_depth: 16,
        max_nodes: 1000,
        max_bytes: 100,
        max_list: 500,
    };

    fn roundtrip(msg: &Message<'_>) -> String {
        let mut buf = Vec::new();
        let len = encode_into(msg, &mut buf).unwrap();
        assert_eq!(buf.len(), len + 4);
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            len
        );
        format!("{:?}", decode(&buf[4..], LIMITS).unwrap())
    }

    #[test]
    fn request_roundtrips() {
        let msg = Message::Request {
            id: 7,
            target: 3,
            timeout_ms: 30_000,
            op: Op::Call {
                method: "f".into(),
                args: vec![
                    WireValue::Int(-3),
                    WireValue::Str("héllo".into()),
                    WireValue::Bytes(Cow::Borrowed(b"\0\x01")),
                    WireValue::List(vec![WireValue::Unit, WireValue::Float(1.5)]),
                    WireValue::SenderRef {
                        id: 9,
                        type_name: "MyClass".into(),
                    },
                ],
            },
        };
        assert_eq!(roundtrip(&msg), format!("{msg:?}"));
    }

    #[test]
    fn error_kinds_survive_and_unknown_kinds_become_custom() {
        let err = RemoteError::no_such_method("MyClass", "g").context("in MyClass");
        let wire = WireError::from(&err);
        assert_eq!(RemoteError::from(wire), err);
        let unknown = WireError {
            kind: "FromTheFuture".into(),
            message: "m".into(),
            context: vec![],
        };
        assert_eq!(
            RemoteError::from(unknown).kind,
            ErrorKind::Custom("FromTheFuture".into())
        );
    }

    fn nested(depth: usize) -> WireValue<'static> {
        let mut v = WireValue::Unit;
        for _ in 0..depth {
            v = WireValue::List(vec![v]);
        }
        v
    }

    fn encode_reply(value: WireValue<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into(
            &Message::Reply {
                id: 1,
                result: Ok(value),
            },
            &mut buf,
        )
        .unwrap();
        buf
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = encode_reply(nested(15));
        assert!(decode(&ok[4..], LIMITS).is_ok());
        let deep = encode_reply(nested(16));
        let err = decode(&deep[4..], LIMITS).unwrap_err();
        assert!(err.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn node_count_is_bounded() {
        let wide = encode_reply(WireValue::List(
            (0..4)
                .map(|_| WireValue::List((0..300).map(WireValue::Int).collect()))
                .collect(),
        ));
        let err = decode(&wide[4..], LIMITS).unwrap_err();
        assert!(err.contains("too many values"), "{err}");
    }

    #[test]
    fn string_and_list_sizes_are_bounded_and_marked_as_limits() {
        let long = encode_reply(WireValue::Str("x".repeat(101).into()));
        let err = decode(&long[4..], LIMITS).unwrap_err();
        assert!(
            err.starts_with(LIMIT_MARK) && err.contains("101 bytes"),
            "{err}"
        );
        let wide = encode_reply(WireValue::List((0..501).map(WireValue::Int).collect()));
        let err = decode(&wide[4..], LIMITS).unwrap_err();
        assert!(err.contains("501 items"), "{err}");
        assert!(matches!(
            decode_head(&wide[4..]),
            Some(Head::Reply { id: 1 })
        ));
        assert!(decode(
            &encode_reply(WireValue::Str("x".repeat(100).into()))[4..],
            LIMITS
        )
        .is_ok());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A Reply whose string claims 2^62 bytes: must fail on the short frame.
        let mut buf = encode_reply(WireValue::Str("abc".into()));
        let payload = &mut buf[4..];
        // Reply tag, id, Ok tag, Str tag, then the varint length (3): patch it
        // to the 9-byte varint form of a huge number.
        let pos = payload.iter().position(|&b| b == 3).unwrap();
        let mut evil = payload[..pos].to_vec();
        evil.push(253); // u64 varint marker
        evil.extend_from_slice(&(1u64 << 62).to_le_bytes());
        evil.extend_from_slice(b"abc");
        assert!(decode(&evil, LIMITS).is_err());
    }

    mod against_bincode {
        //! The hand-written codec speaks exactly bincode's format.
        use super::super::reference;
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        const ROOMY: DecodeLimits = DecodeLimits::new(64, 100_000);

        /// Integers of every encoded width.
        fn num() -> impl Strategy<Value = u64> {
            prop_oneof![
                0..251_u64,
                251..65_536_u64,
                65_536..(1_u64 << 32),
                any::<u64>()
            ]
        }

        fn text() -> impl Strategy<Value = Cow<'static, str>> {
            // Short names join the fields before them in one write, long
            // ones follow them: both kinds.
            prop_oneof![".{0,12}", ".{12,40}"].prop_map(Cow::Owned)
        }

        fn value() -> impl Strategy<Value = WireValue<'static>> {
            let leaf = prop_oneof![
                Just(WireValue::Unit),
                any::<bool>().prop_map(WireValue::Bool),
                prop_oneof![any::<i64>(), -300_i64..300].prop_map(WireValue::Int),
                num().prop_map(WireValue::UInt),
                any::<f64>()
                    .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                    .prop_map(WireValue::Float),
                text().prop_map(WireValue::Str),
                vec(any::<u8>(), 0..300).prop_map(|b| WireValue::Bytes(Cow::Owned(b))),
                (num(), text()).prop_map(|(id, type_name)| WireValue::SenderRef { id, type_name }),
                num().prop_map(WireValue::ReceiverRef),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..6).prop_map(WireValue::List),
                    vec((inner.clone(), inner), 0..4).prop_map(WireValue::Map),
                ]
            })
        }

        fn request(id: u64, op: Op<'static>) -> Message<'static> {
            Message::Request {
                id,
                target: id / 3,
                timeout_ms: id % 100_000,
                op,
            }
        }

        fn message() -> impl Strategy<Value = Message<'static>> {
            let args = || vec(value(), 0..4);
            prop_oneof![
                (num(), text(), args())
                    .prop_map(|(id, method, args)| request(id, Op::Call { method, args })),
                (num(), args()).prop_map(|(id, args)| request(id, Op::Invoke { args })),
                (num(), text()).prop_map(|(id, name)| request(id, Op::GetAttr { name })),
                (num(), text(), value())
                    .prop_map(|(id, name, value)| request(id, Op::SetAttr { name, value })),
                num().prop_map(|id| request(id, Op::Dir)),
                (num(), value()).prop_map(|(id, v)| Message::Reply { id, result: Ok(v) }),
                (num(), text(), text(), vec(text(), 0..3)).prop_map(
                    |(id, kind, message, context)| Message::Reply {
                        id,
                        result: Err(WireError {
                            kind,
                            message,
                            context
                        }),
                    }
                ),
                num().prop_map(|id| Message::Cancel { id }),
                vec((num(), num()), 0..5).prop_map(|refs| Message::Release { refs }),
                text().prop_map(|reason| Message::Goodbye { reason }),
                Just(()).prop_map(|()| Message::Ping),
                Just(()).prop_map(|()| Message::Pong),
            ]
        }

        /// Limits that the generated messages often break.
        const TIGHT: DecodeLimits = DecodeLimits {
            max_depth: 3,
            max_nodes: 12,
            max_bytes: 8,
            max_list: 3,
        };

        /// Both decoders accept the same payloads, as the same messages, and
        /// refuse the others for the same kind of reason (a limit, or
        /// garbage: the first fails one request, the second the connection).
        fn decoders_agree(payload: &[u8]) -> Result<(), TestCaseError> {
            for limits in [ROOMY, TIGHT] {
                let ours = decode(payload, limits).map(|m| format!("{m:?}"));
                let theirs = reference::decode(payload, limits).map(|m| format!("{m:?}"));
                match (ours, theirs) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(a), Err(b)) => prop_assert_eq!(
                        a.starts_with(LIMIT_MARK),
                        b.contains(LIMIT_MARK),
                        "hand-written: {}, bincode: {}",
                        a,
                        b
                    ),
                    (a, b) => prop_assert!(false, "hand-written: {a:?}, bincode: {b:?}"),
                }
            }
            Ok(())
        }

        #[test]
        fn variant_indexes_are_32_bits_as_in_bincode() {
            // Ping's index in bincode's 9-byte form, then in its 3-byte form.
            let mut wide = vec![encode::U64_MARK];
            wide.extend_from_slice(&5_u64.to_le_bytes());
            assert!(reference::decode(&wide, ROOMY).is_err());
            let err = decode(&wide, ROOMY).unwrap_err();
            assert!(err.starts_with("malformed frame"), "{err}");
            let mut narrow = vec![encode::U16_MARK];
            narrow.extend_from_slice(&5_u16.to_le_bytes());
            assert!(matches!(
                reference::decode(&narrow, ROOMY),
                Ok(Message::Ping)
            ));
            assert!(matches!(decode(&narrow, ROOMY), Ok(Message::Ping)));
        }

        #[test]
        fn garbage_behind_a_list_over_the_limit_is_garbage() {
            // A reply whose list claims 600 items (over TIGHT's 3), then junk:
            // not a well-formed message that breaks a limit.
            let mut payload = vec![1, 1, 0, 7, encode::U16_MARK];
            payload.extend_from_slice(&600_u16.to_le_bytes());
            payload.extend(std::iter::repeat_n(0xff, 700));
            for limits in [ROOMY, TIGHT] {
                let err = decode(&payload, limits).unwrap_err();
                assert!(err.starts_with("malformed frame"), "{err}");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn encodes_the_same_bytes(msg in message()) {
                let mut frame = Vec::new();
                let len = encode_into(&msg, &mut frame).unwrap();
                prop_assert_eq!(&frame[4..], &reference::encode(&msg)[..]);
                prop_assert_eq!(len, frame.len() - 4);
                let back = decode(&frame[4..], ROOMY).unwrap();
                prop_assert_eq!(format!("{back:?}"), format!("{msg:?}"));
            }

            #[test]
            fn decodes_what_bincode_decodes(msg in message(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), cut in any::<prop::sample::Index>()) {
                let mut payload = reference::encode(&msg);
                for (i, b) in flips {
                    let at = i.index(payload.len());
                    payload[at] = b;
                }
                decoders_agree(&payload)?;
                decoders_agree(&payload[..cut.index(payload.len() + 1)])?;
            }

            #[test]
            fn decodes_garbage_as_bincode_does(bytes in vec(any::<u8>(), 0..64)) {
                decoders_agree(&bytes)?;
            }
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_rejected() {
        assert!(decode(&[0xff, 0xff, 0xff], LIMITS).is_err());
        let mut buf = Vec::new();
        encode_into(&Message::Cancel { id: 1 }, &mut buf).unwrap();
        buf.push(0);
        let err = decode(&buf[4..], LIMITS).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }
}
