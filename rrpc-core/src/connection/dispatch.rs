//! Routing received messages, and serving the peer's requests.
//!
//! A request whose handler answers at once ([`Reply::Ready`]) is served
//! inline by the reader: no task, no timer, and its reply joins the batch the
//! reader writes after the burst of frames it is handling. So does an async
//! handler that finishes at its first poll. One that is pending is *parked*
//! ([`super::parked`]): registered so that the peer can cancel it, bounded by
//! the in-flight limit, and polled again by the reader or by a task of its
//! own, depending on what wakes it.

use std::borrow::Cow;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::cancel::Cancel;
use bytes::Bytes;
use compact_str::CompactString;

use crate::error::{Error, ErrorKind, RemoteError};
use crate::objects::ROOT_ID;
use crate::remote::{Args, CallContext, Member, Remote, Reply};
use crate::value::Value;
use crate::wire::{Message, Op};

use super::codec::ConnRef;
use super::outbox::Frames;
use super::parked::{Parked, Request};
use super::{with_scratch, Connection, Shared};

/// What a request asked for, kept to name it in errors and logs: the name
/// borrowed from the frame, or (by a request that is parked) a copy, held
/// without an allocation when short.
pub(super) enum What<S = CompactString> {
    Call(S),
    Invoke,
    GetAttr(S),
    SetAttr(S),
    Dir,
}

/// A request's [`What`], its name borrowed from the frame.
pub(super) type Asked<'a> = What<Cow<'a, str>>;

impl<S: AsRef<str>> What<S> {
    pub(super) fn to_owned(&self) -> What {
        match self {
            What::Call(m) => What::Call(m.as_ref().into()),
            What::Invoke => What::Invoke,
            What::GetAttr(n) => What::GetAttr(n.as_ref().into()),
            What::SetAttr(n) => What::SetAttr(n.as_ref().into()),
            What::Dir => What::Dir,
        }
    }
}

impl<S: AsRef<str>> fmt::Display for What<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Call(m) => write!(f, "call {}", m.as_ref()),
            What::Invoke => f.write_str("invoke"),
            What::GetAttr(n) => write!(f, "getattr {}", n.as_ref()),
            What::SetAttr(n) => write!(f, "setattr {}", n.as_ref()),
            What::Dir => f.write_str("dir"),
        }
    }
}

impl Shared {
    /// Routes one message; an `Err` is a protocol violation that ends the
    /// connection. Replies answered inline are appended to `replies`.
    pub(super) fn handle_message(
        self: &Arc<Shared>,
        msg: Message<'_>,
        frame: &Bytes,
        replies: &mut Frames,
    ) -> Result<(), String> {
        match msg {
            Message::Request {
                id,
                target,
                timeout_ms,
                op,
            } => {
                // (Only requests with a task are in `running`, and each holds
                // an in-flight slot: no lookup while none is.)
                if self.in_flight.load(Ordering::Acquire) > 0 && self.running.contains_key(&id) {
                    // Its reply, its cancel and its deadline would be mixed
                    // up with those of the request already running.
                    return Err(format!("request id {id} is already in use"));
                }
                let Some(conn) = self.connection() else {
                    return Ok(()); // closing: nobody is left to serve it
                };
                self.on_request(conn, id, target, timeout_ms, op, frame, replies);
            }
            Message::Reply { id, result } => {
                // Decode even if nobody waits any more, so that references in
                // the reply are counted and then released.
                let conn = ConnRef::lazy(self);
                let result = match result {
                    Ok(wire) => self.decode_value(&conn, wire, frame).map_err(Error::Remote),
                    Err(err) => Err(Error::Remote(err.into())),
                };
                if let Some((_, waiter)) = self.pending.remove(&id) {
                    waiter.settle(result);
                }
            }
            Message::Cancel { id } => {
                if let Some((_, running)) = self.running.remove(&id) {
                    tracing::debug!(conn = self.id, request = id, "cancelled by the peer");
                    running.stop();
                }
            }
            Message::Release { refs } => {
                let mut released = Vec::new();
                for (id, n) in refs {
                    released.extend(self.exports.release(id, n));
                }
                drop(released);
            }
            Message::Goodbye { reason } => {
                self.close(Error::ConnectionLost(
                    format!("the peer said goodbye: {reason}").into(),
                ));
            }
            Message::Ping => {
                // At most one answer is owed, however many pings arrived.
                self.control.lock().unwrap_or_else(|p| p.into_inner()).pong = true;
                self.control_queued();
            }
            Message::Pong => {} // its arrival already counted as a sign of life
        }
        Ok(())
    }

    /// Refuses request `id` with `err`: the refusal joins the replies of
    /// the burst being handled.
    pub(super) fn refuse(self: &Arc<Shared>, id: u64, err: RemoteError, replies: &mut Frames) {
        if let Err(e) = self.encode_reply_into(id, &Err(err), replies) {
            tracing::warn!(conn = self.id, request = id, "cannot encode a refusal: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request(
        self: &Arc<Shared>,
        conn: Connection,
        id: u64,
        target: u64,
        timeout_ms: u64,
        op: Op<'_>,
        frame: &Bytes,
        replies: &mut Frames,
    ) {
        self.active();
        if self.draining.load(Ordering::SeqCst) {
            return self.refuse(
                id,
                RemoteError::new(ErrorKind::Refused, "the server is shutting down"),
                replies,
            );
        }
        if !self.serving.load(Ordering::SeqCst) {
            return self.refuse(
                id,
                RemoteError::new(
                    ErrorKind::Refused,
                    "this side has stopped serving requests (BgServing stopped)",
                ),
                replies,
            );
        }
        let Some(permit) = InFlight::enter(self) else {
            return self.refuse(
                id,
                RemoteError::new(
                    ErrorKind::Refused,
                    format!(
                        "too many calls in flight on this connection (limit {})",
                        self.config.max_in_flight
                    ),
                ),
                replies,
            );
        };
        let obj = if target == ROOT_ID {
            Some(self.root.clone())
        } else {
            self.exports.get(target)
        };
        let Some(obj) = obj else {
            return self.refuse(
                id,
                RemoteError::new(
                    ErrorKind::NoSuchObject,
                    format!("object #{target} is not (or no longer) exported on this connection"),
                ),
                replies,
            );
        };
        let cancel = Cancel::default();
        let cx = CallContext {
            conn,
            request_id: id,
            cancel: cancel.clone(),
        };
        let started = AssertUnwindSafe(|| self.start(obj.clone(), cx, op, frame));
        let (reply, what) = match std::panic::catch_unwind(started) {
            Ok(Ok(started)) => started,
            Ok(Err((err, what))) => (Reply::Ready(Err(err)), what),
            Err(panic) => (Reply::Ready(Err(panicked(&*panic))), What::Invoke),
        };
        match reply {
            Reply::Ready(result) => {
                let result = result.map_err(|e| in_context(e, obj.as_ref(), &what));
                self.reply_into(id, &result, replies);
                drop(permit);
            }
            Reply::Future(work) => {
                self.serve_async(id, obj, what, timeout_ms, cancel, permit, work, replies)
            }
            Reply::Blocking(work) => {
                let work = async move {
                    match tokio::task::spawn_blocking(work).await {
                        Ok(result) => result,
                        Err(join) if join.is_panic() => Err(panicked(&*join.into_panic())),
                        Err(_) => Err(RemoteError::new(
                            ErrorKind::Cancelled,
                            "the blocking handler was cancelled",
                        )),
                    }
                };
                let work = Box::pin(work);
                self.serve_async(id, obj, what, timeout_ms, cancel, permit, work, replies)
            }
        }
    }

    /// Decodes the operation and calls the handler (which must not block).
    #[allow(clippy::type_complexity)]
    fn start<'a>(
        &self,
        obj: Arc<dyn Remote>,
        cx: CallContext,
        op: Op<'a>,
        frame: &Bytes,
    ) -> Result<(Reply, Asked<'a>), (RemoteError, Asked<'a>)> {
        let conn = ConnRef::Known(&cx.conn);
        Ok(match op {
            Op::Call { method, args } => {
                let what = What::Call(method);
                let args = match self.decode_values(&conn, args, frame) {
                    Ok(args) => args,
                    Err(e) => return Err((e, what)),
                };
                let method = match &what {
                    What::Call(m) => m.as_ref(),
                    _ => "",
                };
                (obj.call(cx, method, Args::new(args)), what)
            }
            Op::Invoke { args } => match self.decode_values(&conn, args, frame) {
                Ok(args) => (obj.invoke(cx, Args::new(args)), What::Invoke),
                Err(e) => return Err((e, What::Invoke)),
            },
            Op::GetAttr { name } => {
                let reply = obj.get_attr(cx, &name);
                (reply, What::GetAttr(name))
            }
            Op::SetAttr { name, value } => {
                let what = What::SetAttr(name);
                let value = match self.decode_value(&conn, value, frame) {
                    Ok(v) => v,
                    Err(e) => return Err((e, what)),
                };
                let name = match &what {
                    What::SetAttr(n) => n.as_ref(),
                    _ => "",
                };
                (obj.set_attr(cx, name, value), what)
            }
            Op::Dir => (
                Reply::ready(Value::List(
                    obj.members().iter().map(Member::to_value).collect(),
                )),
                What::Dir,
            ),
        })
    }

    /// Encodes the reply to request `id` into the batch of the burst.
    pub(super) fn reply_into(
        &self,
        id: u64,
        result: &Result<Value, RemoteError>,
        replies: &mut Frames,
    ) {
        // Straight into the batch: no frame of its own, no copy.
        if let Err(e) = self.encode_reply_into(id, result, replies) {
            tracing::warn!(conn = self.id, request = id, "cannot encode reply: {e}");
        }
    }

    /// Polls an async handler once, here on the reader: most that need
    /// nothing from elsewhere finish at once and are answered inline. One
    /// that is pending is parked (see [`super::parked`]).
    #[allow(clippy::too_many_arguments)]
    fn serve_async(
        self: &Arc<Shared>,
        id: u64,
        obj: Arc<dyn Remote>,
        what: Asked<'_>,
        timeout_ms: u64,
        cancel: Cancel,
        permit: InFlight,
        work: Work,
        replies: &mut Frames,
    ) {
        let parked = Parked::new(self, id, work, permit);
        match parked.first_poll() {
            Poll::Ready(result) => {
                let result = result.map_err(|e| in_context(e, obj.as_ref(), &what));
                self.reply_into(id, &result, replies);
            }
            Poll::Pending => {
                // The caller gives up at its deadline and cancels; this side
                // stops the work a little later, should the cancel not come
                // (so the caller sees its own timeout, not this side's). The
                // connection's timer task cancels the request then: no timer
                // of its own.
                let limit = (timeout_ms > 0).then(|| {
                    let timeout = Duration::from_millis(timeout_ms);
                    timeout
                        + (timeout / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
                });
                let deadline = limit.map_or(u64::MAX, |limit| {
                    self.now_ms()
                        .saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
                });
                let span = tracing::debug_span!("request", conn = self.id, id, target = %obj.type_name(), op = %what);
                let request = Request {
                    obj,
                    what: what.to_owned(),
                    cancel,
                    limit,
                    deadline,
                    span,
                };
                parked.park(self, request);
            }
        }
    }

    pub(super) async fn send_reply(&self, id: u64, result: Result<Value, RemoteError>) {
        self.outbox.reserve(&self.closed).await;
        if self.is_closed() {
            return; // nobody to tell
        }
        with_scratch(|frames| match self.encode_reply_into(id, &result, frames) {
            // One reply of a request served by a task of its own: written at
            // once if the writer is idle.
            Ok(()) => self.send(frames, 0),
            Err(e) => tracing::warn!(conn = self.id, request = id, "cannot encode reply: {e}"),
        });
    }
}

pub(super) type Work = futures::future::BoxFuture<'static, Result<Value, RemoteError>>;

/// One request counted against the in-flight limit, until dropped.
pub(super) struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Option<InFlight> {
        let before = shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= shared.config.max_in_flight {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(shared.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn in_context<S: AsRef<str>>(
    err: RemoteError,
    obj: &dyn Remote,
    what: &What<S>,
) -> RemoteError {
    err.context(format!("in {}: {what}", obj.type_name()))
}

pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> RemoteError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_owned());
    RemoteError::internal(format!("the handler panicked: {what}"))
}
