//! Routing received messages, and serving the peer's requests.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, RemoteError};
use crate::objects::ROOT_ID;
use crate::remote::{Args, CallContext, Member, Remote, Reply};
use crate::value::Value;
use crate::wire::{Message, Op};

use super::{Connection, Shared};

/// A received operation with its values decoded.
enum InOp {
    Call { method: String, args: Vec<Value> },
    Invoke { args: Vec<Value> },
    GetAttr { name: String },
    SetAttr { name: String, value: Value },
    Dir,
}

impl Shared {
    /// Routes one message; an `Err` is a protocol violation that ends the connection.
    pub(super) fn handle_message(self: &Arc<Shared>, msg: Message<'_>) -> Result<(), String> {
        match msg {
            Message::Request {
                id,
                target,
                timeout_ms,
                op,
            } => {
                let Some(conn) = self.connection() else {
                    return Ok(()); // closing: nobody is left to serve it
                };
                self.on_request(conn, id, target, timeout_ms, op);
            }
            Message::Reply { id, result } => {
                let Some(conn) = self.connection() else {
                    return Ok(());
                };
                // Decode even if nobody waits any more, so that references in
                // the reply are counted and then released.
                let result = match result {
                    Ok(wire) => self.decode_value(&conn, wire).map_err(Error::Remote),
                    Err(err) => Err(Error::Remote(err.into())),
                };
                if let Some((_, waiter)) = self.pending.remove(&id) {
                    let _ = waiter.send(result);
                }
            }
            Message::Cancel { id } => {
                if let Some((_, token)) = self.running.remove(&id) {
                    tracing::debug!(conn = self.id, request = id, "cancelled by the peer");
                    token.cancel();
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
                self.control.lock().unwrap_or_else(|p| p.into_inner()).pongs = 1;
                self.wake_writer.notify_one();
            }
            Message::Pong => {} // its arrival already counted as a sign of life
        }
        Ok(())
    }

    /// Refuses request `id` with `err` (the reply is sent by a task).
    ///
    /// Refusals are queued without waiting: a peer that floods requests and
    /// does not read its replies fills the queue, and then further refusals
    /// are dropped (its calls time out) instead of piling up here.
    pub(super) fn refuse(self: &Arc<Shared>, id: u64, err: RemoteError) {
        match self.encode_reply(id, &Err(err)) {
            Ok(frame) => {
                if self.out.try_send(frame).is_err() {
                    tracing::debug!(
                        conn = self.id,
                        request = id,
                        "refusal dropped: the peer is not reading"
                    );
                }
            }
            Err(e) => tracing::warn!(conn = self.id, request = id, "cannot encode a refusal: {e}"),
        }
    }

    fn on_request(
        self: &Arc<Shared>,
        conn: Connection,
        id: u64,
        target: u64,
        timeout_ms: u64,
        op: Op<'_>,
    ) {
        let describe = op.describe();
        self.active();
        if self.draining.load(Ordering::SeqCst) {
            return self.refuse(
                id,
                RemoteError::new(ErrorKind::Refused, "the server is shutting down"),
            );
        }
        if !self.serving.load(Ordering::SeqCst) {
            return self.refuse(
                id,
                RemoteError::new(
                    ErrorKind::Refused,
                    "this side has stopped serving requests (BgServing stopped)",
                ),
            );
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return self.refuse(
                id,
                RemoteError::new(
                    ErrorKind::Refused,
                    format!(
                        "too many calls in flight on this connection (limit {})",
                        self.config.max_in_flight
                    ),
                ),
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
            );
        };
        let op = match self.decode_op(&conn, op) {
            Ok(op) => op,
            Err(err) => {
                return self.refuse(id, err.context(format!("while decoding `{describe}`")))
            }
        };
        let cancel = self.closed.child_token();
        self.running.insert(id, cancel.clone());
        let cx = CallContext {
            conn,
            request_id: id,
            cancel: cancel.clone(),
        };
        let deadline = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        let type_name = obj.type_name().to_owned();
        let span = tracing::debug_span!("request", conn = self.id, id, target = %type_name, op = %describe);
        let shared = self.clone();
        self.tasks.spawn(
            async move {
                let work = AssertUnwindSafe(run(obj, cx, op)).catch_unwind();
                let outcome = tokio::select! {
                    r = work => Some(r.unwrap_or_else(|panic| Err(panicked(&*panic)))),
                    _ = sleep_opt(deadline) => Some(Err(RemoteError::new(
                        ErrorKind::Timeout,
                        format!("the call ran past its deadline of {deadline:?} and was stopped"),
                    ))),
                    _ = cancel.cancelled() => None,
                };
                shared.running.remove(&id);
                if shared.running.is_empty() {
                    shared.drained.notify_waiters();
                }
                drop(permit);
                match outcome {
                    Some(result) => {
                        let result =
                            result.map_err(|e| e.context(format!("in {type_name}: {describe}")));
                        if let Err(e) = &result {
                            tracing::debug!("request failed: {e}");
                        }
                        shared.send_reply(id, result).await;
                    }
                    None => tracing::debug!("request cancelled"),
                }
            }
            .instrument(span),
        );
    }

    fn decode_op(&self, conn: &Connection, op: Op<'_>) -> Result<InOp, RemoteError> {
        Ok(match op {
            Op::Call { method, args } => InOp::Call {
                method: method.into_owned(),
                args: self.decode_values(conn, args)?,
            },
            Op::Invoke { args } => InOp::Invoke {
                args: self.decode_values(conn, args)?,
            },
            Op::GetAttr { name } => InOp::GetAttr {
                name: name.into_owned(),
            },
            Op::SetAttr { name, value } => InOp::SetAttr {
                name: name.into_owned(),
                value: self.decode_value(conn, value)?,
            },
            Op::Dir => InOp::Dir,
        })
    }

    async fn send_reply(&self, id: u64, result: Result<Value, RemoteError>) {
        match self.encode_reply(id, &result) {
            Ok(frame) => {
                // Fails only when the connection is closed: nobody to tell.
                let _ = self.out.send(frame).await;
            }
            Err(e) => tracing::warn!(conn = self.id, request = id, "cannot encode reply: {e}"),
        }
    }
}

async fn sleep_opt(deadline: Option<Duration>) {
    match deadline {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> RemoteError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_owned());
    RemoteError::internal(format!("the handler panicked: {what}"))
}

async fn run(obj: Arc<dyn Remote>, cx: CallContext, op: InOp) -> Result<Value, RemoteError> {
    let reply = match op {
        InOp::Call { method, args } => obj.call(cx, &method, Args::new(args)),
        InOp::Invoke { args } => obj.invoke(cx, Args::new(args)),
        InOp::GetAttr { name } => obj.get_attr(cx, &name),
        InOp::SetAttr { name, value } => obj.set_attr(cx, &name, value),
        InOp::Dir => Reply::ready(Value::List(
            obj.members().iter().map(Member::to_value).collect(),
        )),
    };
    match reply {
        Reply::Ready(result) => result,
        Reply::Future(fut) => fut.await,
        Reply::Blocking(work) => match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => Err(panicked(&*join.into_panic())),
            Err(_) => Err(RemoteError::new(
                ErrorKind::Cancelled,
                "the blocking handler was cancelled",
            )),
        },
    }
}
