//! Turning values into wire values and back, with the object tables.

use std::borrow::Cow;

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use crate::call::OutOp;
use crate::error::{Error, ErrorKind, RemoteError};
use crate::objects::object_key;
use crate::proxy::{Proxy, ProxyInner};
use crate::remote::Remote;
use crate::value::Value;
use crate::wire::{self, Message, WireError, WireValue};

use super::outbox::{Body, EncodeFailure, Frames, BIG};
use super::{Connection, Shared};

/// Encodes values for one outgoing message, remembering which references it
/// counted so they can be given back if the message is never sent.
pub(super) struct Encoder<'s> {
    shared: &'s Shared,
    exported: Vec<u64>,
    /// Big byte strings of the message, written without a copy.
    big: Vec<Bytes>,
    /// The first reference that could not be exported.
    refused: Option<Error>,
}

impl<'s> Encoder<'s> {
    pub(super) fn new(shared: &'s Shared) -> Self {
        Encoder {
            shared,
            exported: Vec::new(),
            big: Vec::new(),
            refused: None,
        }
    }

    fn export<'v>(
        &mut self,
        key: usize,
        type_name: &'v str,
        make: impl FnOnce() -> Arc<dyn Remote>,
    ) -> WireValue<'v> {
        match self
            .shared
            .exports
            .export_with(key, self.shared.config.max_live_objects, make)
        {
            Ok(id) => {
                self.exported.push(id);
                WireValue::SenderRef {
                    id,
                    type_name: Cow::Borrowed(type_name),
                }
            }
            Err(limit) => {
                self.refused.get_or_insert_with(|| {
                    Error::Remote(RemoteError::new(
                        ErrorKind::Refused,
                        format!(
                            "the peer already holds {limit} objects of this side \
                             (the live-object limit); release some first"
                        ),
                    ))
                });
                WireValue::Unit
            }
        }
    }

    pub(super) fn value<'v>(&mut self, value: &'v Value) -> WireValue<'v> {
        match value {
            Value::Unit => WireValue::Unit,
            Value::Bool(b) => WireValue::Bool(*b),
            Value::Int(i) => WireValue::Int(*i),
            Value::UInt(u) => WireValue::UInt(*u),
            Value::Float(f) => WireValue::Float(*f),
            Value::Str(s) => WireValue::Str(Cow::Borrowed(s)),
            Value::Bytes(b) => {
                if b.len() >= BIG {
                    self.big.push(b.clone());
                }
                WireValue::Bytes(Cow::Borrowed(b))
            }
            Value::List(items) => WireValue::List(items.iter().map(|v| self.value(v)).collect()),
            Value::Map(pairs) => WireValue::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (self.value(k), self.value(v)))
                    .collect(),
            ),
            Value::Object(obj) => self.export(object_key(obj), obj.type_name(), || obj.clone()),
            Value::Proxy(proxy)
                if std::ptr::eq(Arc::as_ptr(&proxy.connection().shared), self.shared) =>
            {
                WireValue::ReceiverRef(proxy.id())
            }
            Value::Proxy(proxy) => {
                // A proxy to a third party: export a forwarder, keyed by the
                // proxy so the same one sent twice keeps its identity.
                let key = Arc::as_ptr(&proxy.inner) as *const () as usize;
                self.export(key, proxy.type_name(), || {
                    Arc::new(proxy.clone()) as Arc<dyn Remote>
                })
            }
        }
    }

    /// Appends `msg`, as one frame, to `out`; on failure `out` is left as it was.
    pub(super) fn finish_into(mut self, msg: &Message<'_>, out: &mut Frames) -> Result<(), Error> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let limit = self.shared.peer_max_frame;
        let written = out.encode(msg, &self.big, limit);
        self.settle(written, limit)
    }

    /// The first reference that could not be exported, if any: the message
    /// cannot be sent.
    fn check(&mut self) -> Result<(), Error> {
        match self.refused.take() {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    /// Writes a list of values (a call's arguments), each encoded as soon as
    /// it is converted: no list of wire values is gathered first.
    fn values_into(&mut self, body: &mut Body<'_>, values: &[Value]) -> Result<(), Error> {
        let Some((first, rest)) = values.split_first() else {
            wire::encode::len(&mut body.writer(&[]), 0);
            return Ok(());
        };
        let v = self.value(first);
        self.check()?;
        wire::encode::len_then_value(&mut body.writer(&self.big), values.len(), &v);
        for value in rest {
            let v = self.value(value);
            self.check()?;
            wire::encode::value(&mut body.writer(&self.big), &v);
        }
        Ok(())
    }

    /// What became of a message: when it was written, the references it
    /// counted stay counted (the peer will hold them).
    fn settle(mut self, written: Result<usize, EncodeFailure>, limit: usize) -> Result<(), Error> {
        match written {
            Ok(_) => {
                self.exported.clear();
                Ok(())
            }
            Err(EncodeFailure::TooLarge(size)) => Err(Error::FrameTooLarge { size, limit }),
            Err(EncodeFailure::Refused(refused)) => Err(refused),
        }
    }
}

impl Drop for Encoder<'_> {
    /// References counted for a message that was never encoded are given back.
    fn drop(&mut self) {
        for id in self.exported.drain(..) {
            drop(self.shared.exports.release(id, 1));
        }
    }
}

/// The connection a received value's references belong to: known, or made
/// on first need (most values hold no reference, and making a
/// [`Connection`] handle costs two reference-count round trips).
pub(super) enum ConnRef<'a> {
    Known(&'a Connection),
    Lazy(&'a Shared, std::cell::OnceCell<Option<Connection>>),
}

impl<'a> ConnRef<'a> {
    pub(super) fn lazy(shared: &'a Shared) -> Self {
        ConnRef::Lazy(shared, std::cell::OnceCell::new())
    }

    fn get(&self) -> Option<&Connection> {
        match self {
            ConnRef::Known(conn) => Some(conn),
            ConnRef::Lazy(shared, conn) => conn.get_or_init(|| shared.connection()).as_ref(),
        }
    }
}

/// Below this size a byte string is copied out of its frame; from it up,
/// it is a slice sharing the frame's buffer (a small value must not keep a
/// big frame alive).
const ZERO_COPY_MIN: usize = 4096;

fn bytes_from(b: Cow<'_, [u8]>, frame: &Bytes) -> Bytes {
    match b {
        Cow::Borrowed(slice) if slice.len() >= ZERO_COPY_MIN && in_frame(slice, frame) => {
            frame.slice_ref(slice)
        }
        Cow::Borrowed(slice) => Bytes::copy_from_slice(slice),
        Cow::Owned(vec) => Bytes::from(vec),
    }
}

/// Whether `slice` lies inside `frame` (`slice_ref` panics otherwise).
fn in_frame(slice: &[u8], frame: &Bytes) -> bool {
    let (start, end) = (
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
    );
    let (s, e) = (
        slice.as_ptr() as usize,
        slice.as_ptr() as usize + slice.len(),
    );
    s >= start && e <= end
}

/// A timeout in whole milliseconds, rounded up (never shorter than asked).
pub(super) fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Shared {
    /// Appends the request frame to `out`; on failure `out` is left as it
    /// was. The arguments are encoded as they are converted (references
    /// exported), with no list of wire values in between.
    pub(super) fn encode_request(
        &self,
        id: u64,
        target: u64,
        timeout: Duration,
        op: &OutOp,
        out: &mut Frames,
    ) -> Result<(), Error> {
        use wire::encode::{request_head, tag};
        let mut enc = Encoder::new(self);
        let limit = self.peer_max_frame;
        let timeout_ms = timeout_ms(timeout);
        let written = out.encode_with(limit, |body| {
            let head = |body: &mut Body<'_>, op, name: Option<&str>| {
                request_head(&mut body.writer(&[]), id, target, timeout_ms, op, name);
            };
            match op {
                OutOp::Call { method, args } => {
                    head(body, tag::CALL, Some(method));
                    enc.values_into(body, args)
                }
                OutOp::Invoke { args } => {
                    head(body, tag::INVOKE, None);
                    enc.values_into(body, args)
                }
                OutOp::GetAttr { name } => {
                    head(body, tag::GET_ATTR, Some(name));
                    Ok(())
                }
                OutOp::SetAttr { name, value } => {
                    head(body, tag::SET_ATTR, Some(name));
                    let v = enc.value(value);
                    enc.check()?;
                    wire::encode::value(&mut body.writer(&enc.big), &v);
                    Ok(())
                }
                OutOp::Dir => {
                    head(body, tag::DIR, None);
                    Ok(())
                }
            }
        });
        enc.settle(written, limit)
    }

    /// Appends the reply frame to `out`; a result the peer cannot take (too
    /// large, or too many new objects) becomes an error reply.
    pub(super) fn encode_reply_into(
        &self,
        id: u64,
        result: &Result<Value, RemoteError>,
        out: &mut Frames,
    ) -> Result<(), Error> {
        let mut enc = Encoder::new(self);
        let wire_result = match result {
            Ok(v) => Ok(enc.value(v)),
            Err(e) => Err(WireError::from(e)),
        };
        let refusal = match enc.finish_into(&Message::Reply { id, result: wire_result }, out) {
            Ok(()) => return Ok(()),
            Err(Error::Remote(refused)) => refused,
            Err(Error::FrameTooLarge { size, limit }) => RemoteError::new(
                ErrorKind::Refused,
                format!("the result ({size} bytes encoded) exceeds the caller's frame limit of {limit} bytes"),
            ),
            Err(other) => return Err(other),
        };
        Encoder::new(self).finish_into(
            &Message::Reply {
                id,
                result: Err(WireError::from(&refusal)),
            },
            out,
        )
    }

    /// Turns a received wire value into a value, resolving references.
    /// Byte strings of at least [`ZERO_COPY_MIN`] bytes are sliced out of
    /// `frame` rather than copied.
    pub(super) fn decode_value(
        &self,
        conn: &ConnRef<'_>,
        wire: WireValue<'_>,
        frame: &Bytes,
    ) -> Result<Value, RemoteError> {
        Ok(match wire {
            WireValue::Unit => Value::Unit,
            WireValue::Bool(b) => Value::Bool(b),
            WireValue::Int(i) => Value::Int(i),
            WireValue::UInt(u) => Value::UInt(u),
            WireValue::Float(f) => Value::Float(f),
            WireValue::Str(s) => Value::Str(s.into_owned()),
            WireValue::Bytes(b) => Value::Bytes(bytes_from(b, frame)),
            WireValue::List(items) => Value::List(self.decode_values(conn, items, frame)?),
            WireValue::Map(pairs) => {
                let mut map = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    map.push((
                        self.decode_value(conn, k, frame)?,
                        self.decode_value(conn, v, frame)?,
                    ));
                }
                Value::Map(map)
            }
            WireValue::SenderRef { id, type_name } => {
                let Some(conn) = conn.get() else {
                    return Err(RemoteError::new(
                        ErrorKind::Refused,
                        "the connection is closing: no reference can be received",
                    ));
                };
                let inner = self.imports.import(id, &type_name, |name| {
                    ProxyInner::new(conn.clone(), id, name)
                });
                Value::Proxy(Proxy::from_inner(inner))
            }
            WireValue::ReceiverRef(id) => match self.exports.get(id) {
                Some(obj) => Value::Object(obj),
                None => {
                    return Err(RemoteError::new(
                        ErrorKind::NoSuchObject,
                        format!("object #{id} is not (or no longer) exported on this connection"),
                    ))
                }
            },
        })
    }

    pub(super) fn decode_values(
        &self,
        conn: &ConnRef<'_>,
        wires: Vec<WireValue<'_>>,
        frame: &Bytes,
    ) -> Result<Vec<Value>, RemoteError> {
        // A loop: collecting into a `Result` cost a served call about 120
        // instructions more (callgrind).
        let mut values = Vec::with_capacity(wires.len());
        for wire in wires {
            values.push(self.decode_value(conn, wire, frame)?);
        }
        Ok(values)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::handshake::Role;
    use crate::objects_kit::{Function, Namespace};
    use crate::wire::Op;

    use super::super::outbox::Chunk;

    /// Two connected ends over in-memory pipes; the first with `config`.
    async fn pair(config: Config) -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let ((ar, aw), (br, bw)) = (tokio::io::split(a), tokio::io::split(b));
        let root = || Arc::new(Namespace::new("root")) as Arc<dyn Remote>;
        let (ours, theirs) = tokio::join!(
            Connection::establish(ar, aw, config, root(), "a", Role::Client),
            Connection::establish(br, bw, Config::default(), root(), "b", Role::Server),
        );
        (ours.unwrap(), theirs.unwrap())
    }

    fn flat(frames: &Frames) -> Vec<u8> {
        frames
            .chunks()
            .iter()
            .flat_map(|c| c.as_slice().to_vec())
            .collect()
    }

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_is_the_messages_bytes_and_its_big_argument_is_shared() {
        within(async {
            let (conn, _peer) = pair(Config::default()).await;
            let big = Bytes::from(vec![9u8; BIG + 5]);
            let op = OutOp::Call {
                method: "a_method_name_longer_than_the_room_left".into(),
                args: vec![Value::from(-7), Value::Bytes(big.clone()), Value::from("x")],
            };
            let mut frames = Frames::default();
            conn.shared
                .encode_request(300, 3, Duration::from_millis(1500), &op, &mut frames)
                .unwrap();
            assert!(
                frames
                    .chunks()
                    .iter()
                    .any(|c| matches!(c, Chunk::Shared(b) if b.as_ptr() == big.as_ptr())),
                "the big argument was copied"
            );
            let expected = Message::Request {
                id: 300,
                target: 3,
                timeout_ms: 1500,
                op: Op::Call {
                    method: Cow::Borrowed("a_method_name_longer_than_the_room_left"),
                    args: vec![
                        WireValue::Int(-7),
                        WireValue::Bytes(Cow::Borrowed(&big)),
                        WireValue::Str(Cow::Borrowed("x")),
                    ],
                },
            };
            let mut want = Vec::new();
            wire::encode_into(&expected, &mut want).unwrap();
            assert_eq!(flat(&frames), want);
        })
        .await
    }

    #[tokio::test]
    async fn a_refused_reference_leaves_the_frames_and_the_exports_as_they_were() {
        within(async {
            let (conn, _peer) = pair(Config::default().with_max_live_objects(1)).await;
            let f = |name: &'static str| Function::blocking(name, |_| Ok(Value::Unit)).into_value();
            let mut frames = Frames::default();
            let first = OutOp::GetAttr { name: "x".into() };
            conn.shared
                .encode_request(1, 0, Duration::from_secs(1), &first, &mut frames)
                .unwrap();
            let before = flat(&frames);
            // The first object is exported, the second is over the limit:
            // the request is refused after its first argument was written.
            let op = OutOp::Invoke {
                args: vec![f("a"), Value::Bytes(Bytes::from(vec![1u8; BIG])), f("b")],
            };
            let err = conn
                .shared
                .encode_request(2, 0, Duration::from_secs(1), &op, &mut frames)
                .unwrap_err();
            assert!(err.to_string().contains("live-object limit"), "{err}");
            assert_eq!(flat(&frames), before);
            assert_eq!(frames.len(), before.len());
            assert_eq!(frames.chunks().len(), 1);
            assert_eq!(conn.stats().exported_objects, 0);
        })
        .await
    }
}
