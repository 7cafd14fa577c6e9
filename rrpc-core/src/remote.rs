//! The [`Remote`] trait: what an exported object implements, and the types
//! its handlers take and return.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::{ErrorKind, RemoteError};
use crate::value::{from_value, Value};

/// An object a peer can use through a proxy.
///
/// Every method has a default that reports "no such member", so an object
/// implements only what it offers. Handlers must not block: return
/// [`Reply::blocking`] for blocking work (it runs on the blocking pool) or
/// [`Reply::future`] for async work. A reply that is already known is
/// [`Reply::ready`] (or any `Result<impl Into<Value>, RemoteError>` via `into()`).
///
/// ```
/// use std::sync::Arc;
/// use rrpc_core::{Args, CallContext, Member, Remote, RemoteError, Reply};
///
/// struct Adder;
///
/// impl Remote for Adder {
///     fn type_name(&self) -> &str { "Adder" }
///     fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
///         match method {
///             "add" => (|| {
///                 let a: i64 = args.take(0, "a")?;
///                 let b: i64 = args.take(1, "b")?;
///                 Ok::<_, RemoteError>(a + b)
///             })().into(),
///             _ => Reply::err(RemoteError::no_such_method(self.type_name(), method)),
///         }
///     }
///     fn members(&self) -> Vec<Member> { vec![Member::method("add", "add(a: int, b: int) -> int")] }
/// }
/// ```
pub trait Remote: Any + Send + Sync {
    /// The type name peers see in listings, proxies and errors.
    fn type_name(&self) -> &str;

    /// Calls method `method` with `args`.
    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        let _ = (cx, args);
        Reply::err(RemoteError::no_such_method(self.type_name(), method))
    }

    /// Calls the object itself (a function, closure or class constructor).
    fn invoke(self: Arc<Self>, cx: CallContext, args: Args) -> Reply {
        let _ = (cx, args);
        Reply::err(RemoteError::new(
            ErrorKind::NotCallable,
            format!("{} is not callable", self.type_name()),
        ))
    }

    /// Reads attribute `name`.
    fn get_attr(self: Arc<Self>, cx: CallContext, name: &str) -> Reply {
        let _ = cx;
        Reply::err(RemoteError::no_such_attribute(self.type_name(), name))
    }

    /// Writes attribute `name`.
    fn set_attr(self: Arc<Self>, cx: CallContext, name: &str, value: Value) -> Reply {
        let _ = (cx, value);
        Reply::err(RemoteError::no_such_attribute(self.type_name(), name))
    }

    /// Lists the methods and attributes this object offers (RPyC's `dir`).
    fn members(&self) -> Vec<Member> {
        Vec::new()
    }
}

/// What a handler returns: a value now, a future, or blocking work.
pub enum Reply {
    /// The result is known.
    Ready(Result<Value, RemoteError>),
    /// The result comes from async work. It is polled once on the
    /// connection's reader and answered inline if it finishes; otherwise it
    /// waits without a thread and resumes on the reader (when a frame of this
    /// connection wakes it, such as the reply to a callback) or on a task of
    /// its own (when anything else does). Its `poll` must not block.
    Future(BoxFuture<'static, Result<Value, RemoteError>>),
    /// The result comes from blocking work, run on the blocking pool.
    Blocking(Box<dyn FnOnce() -> Result<Value, RemoteError> + Send>),
}

impl Reply {
    /// A value known now.
    pub fn ready(value: impl Into<Value>) -> Reply {
        Reply::Ready(Ok(value.into()))
    }

    /// An error known now.
    pub fn err(err: RemoteError) -> Reply {
        Reply::Ready(Err(err))
    }

    /// Async work; dropping it (cancellation) stops it.
    pub fn future<F, T>(fut: F) -> Reply
    where
        F: Future<Output = Result<T, RemoteError>> + Send + 'static,
        T: Into<Value>,
    {
        Reply::Future(Box::pin(async move { fut.await.map(Into::into) }))
    }

    /// Blocking work, run on the blocking thread pool.
    pub fn blocking<F, T>(work: F) -> Reply
    where
        F: FnOnce() -> Result<T, RemoteError> + Send + 'static,
        T: Into<Value>,
    {
        Reply::Blocking(Box::new(move || work().map(Into::into)))
    }
}

impl<T: Into<Value>> From<Result<T, RemoteError>> for Reply {
    fn from(result: Result<T, RemoteError>) -> Reply {
        Reply::Ready(result.map(Into::into))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Reply::Future(_) => f.write_str("Future(..)"),
            Reply::Blocking(_) => f.write_str("Blocking(..)"),
        }
    }
}

/// Positional arguments of a call, with typed access that gives clear errors.
#[derive(Debug, Default, Clone)]
pub struct Args(Vec<Value>);

impl Args {
    /// Wraps a list of values.
    pub fn new(values: Vec<Value>) -> Args {
        Args(values)
    }

    /// How many arguments were passed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no argument was passed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The argument at `index`, if passed.
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.0.get(index)
    }

    /// Fails unless between `min` and `max` arguments were passed.
    pub fn expect_count(&self, min: usize, max: usize) -> Result<(), RemoteError> {
        let n = self.0.len();
        if n < min || n > max {
            let wanted = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(RemoteError::bad_argument(format!(
                "expected {wanted} argument(s), got {n}"
            )));
        }
        Ok(())
    }

    /// Takes argument `index` (named `name` in errors) as a raw [`Value`].
    pub fn take_value(&mut self, index: usize, name: &str) -> Result<Value, RemoteError> {
        match self.0.get_mut(index) {
            Some(v) => Ok(std::mem::take(v)),
            None => Err(RemoteError::bad_argument(format!(
                "missing argument {index} (`{name}`)"
            ))),
        }
    }

    /// Takes argument `index` (named `name` in errors), which must be a
    /// remote object passed by reference (a callback, say).
    pub fn take_proxy(&mut self, index: usize, name: &str) -> Result<crate::Proxy, RemoteError> {
        match self.take_value(index, name)? {
            Value::Proxy(p) => Ok(p),
            other => Err(RemoteError::bad_argument(format!(
                "argument {index} (`{name}`): expected a callable passed by reference, got {}",
                other.type_name()
            ))),
        }
    }

    /// Takes argument `index` (named `name` in errors) converted to `T`.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        index: usize,
        name: &str,
    ) -> Result<T, RemoteError> {
        let value = self.take_value(index, name)?;
        let got = value.type_name();
        from_value(value).map_err(|e| {
            RemoteError::bad_argument(format!(
                "argument {index} (`{name}`): expected {}, got {got}: {e}",
                short_type_name::<T>()
            ))
        })
    }

    /// Takes argument `index` if it was passed, converted to `T`.
    pub fn take_opt<T: DeserializeOwned>(
        &mut self,
        index: usize,
        name: &str,
    ) -> Result<Option<T>, RemoteError> {
        match self.0.get(index) {
            None | Some(Value::Unit) => Ok(None),
            Some(_) => self.take(index, name).map(Some),
        }
    }

    /// The arguments as a vector.
    pub fn into_vec(self) -> Vec<Value> {
        self.0
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    match full.rfind("::") {
        Some(i) if !full.contains('<') => &full[i + 2..],
        _ => full,
    }
}

impl From<Vec<Value>> for Args {
    fn from(values: Vec<Value>) -> Args {
        Args(values)
    }
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(crate) conn: Connection,
    pub(crate) request_id: u64,
    pub(crate) cancel: crate::cancel::Cancel,
}

impl CallContext {
    /// The connection the request came on (to reach per-connection state, or
    /// the peer's root).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The request id, as the caller numbered it.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Whether the caller cancelled (or its deadline passed). Blocking
    /// handlers should check this in long loops.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the call is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// What kind of member a [`Member`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A method, called with arguments.
    Method,
    /// An attribute, read (and maybe written).
    Attribute,
}

/// One entry of an object's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name.
    pub name: String,
    /// Method or attribute.
    pub kind: MemberKind,
    /// A human-readable signature or type, e.g. `f(n: int) -> int`.
    pub signature: String,
    /// Whether an attribute can be written.
    pub writable: bool,
}

impl Member {
    /// A method with its signature.
    pub fn method(name: impl Into<String>, signature: impl Into<String>) -> Member {
        Member {
            name: name.into(),
            kind: MemberKind::Method,
            signature: signature.into(),
            writable: false,
        }
    }

    /// A read-only attribute with its type.
    pub fn attribute(name: impl Into<String>, ty: impl Into<String>) -> Member {
        Member {
            name: name.into(),
            kind: MemberKind::Attribute,
            signature: ty.into(),
            writable: false,
        }
    }

    /// A writable attribute with its type.
    pub fn writable_attribute(name: impl Into<String>, ty: impl Into<String>) -> Member {
        Member {
            writable: true,
            ..Member::attribute(name, ty)
        }
    }

    /// This member as a map value (what crosses the wire for `dir`).
    pub fn to_value(&self) -> Value {
        let kind = match self.kind {
            MemberKind::Method => "method",
            MemberKind::Attribute => "attribute",
        };
        Value::Map(vec![
            ("name".into(), self.name.as_str().into()),
            ("kind".into(), kind.into()),
            ("signature".into(), self.signature.as_str().into()),
            ("writable".into(), self.writable.into()),
        ])
    }

    /// Reads a member back from its map value.
    pub fn from_value(value: &Value) -> Option<Member> {
        let kind = match value.get("kind")?.as_str()? {
            "method" => MemberKind::Method,
            "attribute" => MemberKind::Attribute,
            _ => return None,
        };
        Some(Member {
            name: value.get("name")?.as_str()?.to_owned(),
            kind,
            signature: value.get("signature")?.as_str()?.to_owned(),
            writable: value
                .get("writable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// Downcasts an exported object to its concrete type.
pub fn downcast<T: Remote>(obj: &Arc<dyn Remote>) -> Option<Arc<T>> {
    let any: Arc<dyn Any + Send + Sync> = obj.clone();
    any.downcast::<T>().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn take_proxy_names_the_argument_when_it_is_not_a_reference() {
        let mut args = Args::new(vec![Value::from(3)]);
        let err = args.take_proxy(0, "callback").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("argument 0 (`callback`)"), "{text}");
        assert!(text.contains("passed by reference"), "{text}");
        let err = args.take_proxy(1, "more").unwrap_err();
        assert!(err.to_string().contains("missing argument 1"), "{err}");
    }
}
