//! Proxies (RPyC's netrefs): local handles to objects owned by the peer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::call::{Call, IntoArgs, OutOp};
use crate::connection::Connection;
use crate::error::Error;
use crate::objects::ROOT_ID;
use crate::remote::{Args, CallContext, Member, Remote, Reply};
use crate::value::Value;
use crate::AsyncResult;

/// A reference to an object owned by the peer. Cloning is cheap; when the
/// last clone drops, the owner is told (in a batched release message).
///
/// Every operation returns a [`Call`]: `.await` it in async code, `.wait()`
/// it in blocking code, or `.start()` it for an [`AsyncResult`].
#[derive(Clone)]
pub struct Proxy {
    pub(crate) inner: Arc<ProxyInner>,
}

pub(crate) struct ProxyInner {
    conn: Connection,
    id: u64,
    type_name: Arc<str>,
    /// References the peer sent us for this id that this proxy stands for.
    refs: AtomicU64,
}

impl ProxyInner {
    pub(crate) fn new(conn: Connection, id: u64, type_name: Arc<str>) -> Arc<ProxyInner> {
        Arc::new(ProxyInner {
            conn,
            id,
            type_name,
            refs: AtomicU64::new(if id == ROOT_ID { 0 } else { 1 }),
        })
    }

    pub(crate) fn add_ref(&self) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for ProxyInner {
    fn drop(&mut self) {
        if self.id != ROOT_ID {
            let refs = *self.refs.get_mut();
            self.conn
                .shared
                .proxy_dropped(self.id, self as *const ProxyInner, refs);
        }
    }
}

impl Proxy {
    pub(crate) fn from_inner(inner: Arc<ProxyInner>) -> Proxy {
        Proxy { inner }
    }

    /// The connection this proxy lives on.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// The owner's id of the object.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The type name the owner gave the object.
    pub fn type_name(&self) -> &str {
        &self.inner.type_name
    }

    /// Whether two proxies refer to the same remote object. A connection
    /// keeps one live proxy per remote object, so this is handle identity.
    pub fn same_object(&self, other: &Proxy) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn op(&self, op: OutOp) -> Call {
        Call::new(self.inner.conn.clone(), self.inner.id, op)
    }

    /// Calls method `method` of the remote object.
    pub fn call(&self, method: &str, args: impl IntoArgs) -> Call {
        self.op(OutOp::Call {
            method: method.into(),
            args: args.into_args(),
        })
    }

    /// Calls method `method` and returns at once with an [`AsyncResult`].
    pub fn call_async(&self, method: &str, args: impl IntoArgs) -> AsyncResult {
        self.call(method, args).start()
    }

    /// Calls the remote object itself (a function, closure or class).
    pub fn invoke(&self, args: impl IntoArgs) -> Call {
        self.op(OutOp::Invoke {
            args: args.into_args(),
        })
    }

    /// Reads attribute `name`.
    pub fn get(&self, name: &str) -> Call {
        self.op(OutOp::GetAttr { name: name.into() })
    }

    /// Writes attribute `name`.
    pub fn set(&self, name: &str, value: impl Into<Value>) -> Call {
        self.op(OutOp::SetAttr {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Lists the remote object's members (RPyC's `dir`).
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        let listing = self.op(OutOp::Dir).await?;
        members_from(listing)
    }

    /// Lists the remote object's members, blocking.
    pub fn members_blocking(&self) -> Result<Vec<Member>, Error> {
        members_from(self.op(OutOp::Dir).wait()?)
    }
}

fn members_from(listing: Value) -> Result<Vec<Member>, Error> {
    match listing {
        Value::List(items) => items
            .iter()
            .map(|v| {
                Member::from_value(v)
                    .ok_or_else(|| Error::Protocol(format!("malformed member listing entry {v:?}")))
            })
            .collect(),
        other => Err(Error::Protocol(format!(
            "member listing is not a list: {other:?}"
        ))),
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<proxy {} #{} on {}>",
            self.inner.type_name,
            self.inner.id,
            self.inner.conn.peer()
        )
    }
}

/// A proxy sent over *another* connection is exported there as a forwarder:
/// calls through it are relayed to the owner.
impl Remote for Proxy {
    fn type_name(&self) -> &str {
        &self.inner.type_name
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, args: Args) -> Reply {
        let call = Proxy::call(&self, method, args.into_vec());
        Reply::future(async move { call.await.map_err(Into::into) })
    }

    fn invoke(self: Arc<Self>, _cx: CallContext, args: Args) -> Reply {
        let call = Proxy::invoke(&self, args.into_vec());
        Reply::future(async move { call.await.map_err(Into::into) })
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        let call = Proxy::get(&self, name);
        Reply::future(async move { call.await.map_err(Into::into) })
    }

    fn set_attr(self: Arc<Self>, _cx: CallContext, name: &str, value: Value) -> Reply {
        let call = Proxy::set(&self, name, value);
        Reply::future(async move { call.await.map_err(Into::into) })
    }
}
