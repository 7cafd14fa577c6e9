//! [`Callback`]: a typed closure passed by reference.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::call::TypedCall;
use super::handle::Handle;
use crate::error::{Error, RemoteError};
use crate::objects_kit::Function;
use crate::remote::Args;
use crate::value::{to_value, Value};

type LocalFn<A> = dyn Fn(A) -> Result<Value, RemoteError> + Send + Sync;

/// A typed closure passed by reference: built from a local closure with
/// [`Callback::new`], it reaches the peer as a proxy that calls back here.
/// `A` is the one argument (use a tuple for several, `()` for none), `R`
/// the result.
///
/// In a service trait: `fn map(&self, f: Callback<i64, i64>, xs: Vec<i64>) -> Vec<i64>;`
/// the server calls `f.call(x)` (`.wait()` in sync methods, `.await` in
/// async ones); the client passes `Callback::new(|x: i64| x * 2)`.
pub struct Callback<A, R> {
    handle: Handle,
    local: Option<Arc<LocalFn<A>>>,
    _sig: PhantomData<fn(A) -> R>,
}

impl<A, R> Callback<A, R>
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + 'static,
{
    /// A callback running `f` here, on the blocking pool, when the peer
    /// calls it.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        Self::try_new(move |a| Ok(f(a)))
    }

    /// A callback that may fail; its error reaches the caller with its kind
    /// and message.
    pub fn try_new<F>(f: F) -> Self
    where
        F: Fn(A) -> Result<R, RemoteError> + Send + Sync + 'static,
    {
        let name = format!("Callback<{}, {}>", short::<A>(), short::<R>());
        let local: Arc<LocalFn<A>> =
            Arc::new(move |a| f(a).and_then(|r| to_value(&r).map_err(RemoteError::from)));
        let remote_side = local.clone();
        let function = Function::blocking(name.clone(), move |mut args: Args| {
            let a = if args.is_empty() {
                crate::from_value(Value::Unit).map_err(|e| {
                    RemoteError::bad_argument(format!("missing argument 0 of {name}: {e}"))
                })?
            } else {
                args.expect_count(1, 1)?;
                args.take(0, "arg")?
            };
            remote_side(a)
        });
        Callback {
            handle: Handle::local(Arc::new(function)),
            local: Some(local),
            _sig: PhantomData,
        }
    }
}

impl<A, R> Callback<A, R>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    /// Calls the callback: through the connection if it is remote, directly
    /// if it was made here.
    pub fn call(&self, arg: A) -> TypedCall<R> {
        if let Some(local) = &self.local {
            return TypedCall::ready(local(arg).map_err(Error::Remote));
        }
        let args = match to_value(&arg) {
            Ok(Value::Unit) => Vec::new(),
            Ok(v) => vec![v],
            Err(e) => return TypedCall::ready(Err(Error::Value(e))),
        };
        TypedCall::from_result(self.handle.invoke(args))
    }
}

impl<A, R> Callback<A, R> {
    /// Wraps a handle to a callable object (a proxy to a remote closure).
    pub fn from_handle(handle: Handle) -> Self {
        Callback {
            handle,
            local: None,
            _sig: PhantomData,
        }
    }

    /// The reference inside.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

fn short<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    match full.rfind("::") {
        Some(i) if !full.contains('<') => &full[i + 2..],
        _ => full,
    }
}

impl<A, R> Clone for Callback<A, R> {
    fn clone(&self) -> Self {
        Callback {
            handle: self.handle.clone(),
            local: self.local.clone(),
            _sig: PhantomData,
        }
    }
}

impl<A, R> fmt::Debug for Callback<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Callback").field(&self.handle).finish()
    }
}

impl<A, R> Serialize for Callback<A, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.handle.serialize(serializer)
    }
}

impl<'de, A, R> Deserialize<'de> for Callback<A, R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Handle::deserialize(deserializer).map(Callback::from_handle)
    }
}
