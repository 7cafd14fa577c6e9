//! [`TypedCall`] and [`TypedAsyncResult`]: calls whose results are Rust types.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::service_error::ServiceError;
use crate::async_result::AsyncResult;
use crate::call::Call;
use crate::error::Error;
use crate::value::{from_value, Value};

/// A typed remote call ready to go: `.await` it, `.wait()` for it, or
/// `.start()` it for a [`TypedAsyncResult`]. Its result is the method's
/// `T`, its error the method's `E` (or [`Error`] for infallible methods).
#[must_use = "a TypedCall does nothing until it is awaited, waited for or started"]
pub struct TypedCall<T, E = Error> {
    inner: Inner,
    _out: PhantomData<fn() -> (T, E)>,
}

enum Inner {
    Call(Call),
    /// Failed before anything was sent (an argument that does not encode, a
    /// local object), or computed locally (a local callback).
    Ready(Result<Value, Error>),
}

impl<T, E> TypedCall<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: ServiceError,
{
    /// Wraps a dynamic call.
    pub fn new(call: Call) -> Self {
        Self::from_inner(Inner::Call(call))
    }

    /// A call whose outcome is already known.
    pub fn ready(outcome: Result<Value, Error>) -> Self {
        Self::from_inner(Inner::Ready(outcome))
    }

    /// A call if it could be prepared, its error otherwise.
    pub fn from_result(call: Result<Call, Error>) -> Self {
        match call {
            Ok(call) => Self::new(call),
            Err(e) => Self::ready(Err(e)),
        }
    }

    fn from_inner(inner: Inner) -> Self {
        TypedCall {
            inner,
            _out: PhantomData,
        }
    }

    /// Overrides the connection's default deadline for this call.
    pub fn timeout(self, timeout: Duration) -> Self {
        match self.inner {
            Inner::Call(call) => Self::new(call.timeout(timeout)),
            ready => Self::from_inner(ready),
        }
    }

    /// Makes the call and blocks the current thread until it completes (for
    /// blocking code; `.await` it in async code).
    pub fn wait(self) -> Result<T, E> {
        match self.inner {
            Inner::Call(call) => decode(call.wait()),
            Inner::Ready(outcome) => decode(outcome),
        }
    }

    /// Starts the call and returns at once.
    pub fn start(self) -> TypedAsyncResult<T, E> {
        let inner = match self.inner {
            Inner::Call(call) => Started::Pending(call.start()),
            Inner::Ready(outcome) => Started::Done(outcome),
        };
        TypedAsyncResult {
            inner,
            _out: PhantomData,
        }
    }
}

impl<T, E> IntoFuture for TypedCall<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: ServiceError,
{
    type Output = Result<T, E>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.inner {
                Inner::Call(call) => decode(call.await),
                Inner::Ready(outcome) => decode(outcome),
            }
        })
    }
}

impl<T, E> fmt::Debug for TypedCall<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Call(call) => f.debug_tuple("TypedCall").field(call).finish(),
            Inner::Ready(outcome) => f.debug_tuple("TypedCall").field(outcome).finish(),
        }
    }
}

/// Decodes a call's outcome into the method's types.
pub(crate) fn decode<T: DeserializeOwned, E: ServiceError>(
    outcome: Result<Value, Error>,
) -> Result<T, E> {
    match outcome {
        Ok(value) => from_value(value).map_err(|e| E::from_error(Error::Value(e))),
        Err(err) => Err(E::from_error(err)),
    }
}

/// The eventual result of a typed call ([`TypedCall::start`], or a typed
/// proxy's `foo_async` method): poll it, block on it, give it callbacks, or
/// await it — [`AsyncResult`] with the method's types.
pub struct TypedAsyncResult<T, E = Error> {
    inner: Started,
    _out: PhantomData<fn() -> (T, E)>,
}

enum Started {
    Pending(AsyncResult),
    Done(Result<Value, Error>),
}

impl<T, E> TypedAsyncResult<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: ServiceError,
{
    /// Whether the result has arrived.
    pub fn ready(&self) -> bool {
        match &self.inner {
            Started::Pending(r) => r.ready(),
            Started::Done(_) => true,
        }
    }

    /// Waits at most `timeout` for the result; returns whether it arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        match &self.inner {
            Started::Pending(r) => r.wait(timeout),
            Started::Done(_) => true,
        }
    }

    /// The result, blocking the thread until it arrives. In async code,
    /// `.await` the result instead.
    pub fn value(&self) -> Result<T, E> {
        decode(self.raw_value())
    }

    fn raw_value(&self) -> Result<Value, Error> {
        match &self.inner {
            Started::Pending(r) => r.value(),
            Started::Done(outcome) => outcome.clone(),
        }
    }

    /// The error, if the call finished with one (without blocking).
    pub fn error(&self) -> Option<E> {
        if !self.ready() {
            return None;
        }
        self.value().err()
    }

    /// Runs `callback` with the result when it arrives, on the connection's
    /// background pool (at once, on this thread, if the outcome was known
    /// before anything was sent).
    pub fn add_callback<F>(&self, callback: F)
    where
        F: FnOnce(Result<T, E>) + Send + 'static,
    {
        match &self.inner {
            Started::Pending(r) => r.add_callback(move |r| callback(decode(r.value()))),
            Started::Done(outcome) => callback(decode(outcome.clone())),
        }
    }

    /// The untyped result inside, if the call was sent.
    pub fn as_untyped(&self) -> Option<&AsyncResult> {
        match &self.inner {
            Started::Pending(r) => Some(r),
            Started::Done(_) => None,
        }
    }
}

impl<T, E> Future for TypedAsyncResult<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: ServiceError,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            Started::Pending(r) => Pin::new(r).poll(cx).map(decode),
            Started::Done(outcome) => Poll::Ready(decode(outcome.clone())),
        }
    }
}

impl<T, E> Clone for TypedAsyncResult<T, E> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            Started::Pending(r) => Started::Pending(r.clone()),
            Started::Done(outcome) => Started::Done(outcome.clone()),
        };
        TypedAsyncResult {
            inner,
            _out: PhantomData,
        }
    }
}

impl<T, E> fmt::Debug for TypedAsyncResult<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Started::Pending(r) => write!(f, "Typed{r:?}"),
            Started::Done(outcome) => f.debug_tuple("TypedAsyncResult").field(outcome).finish(),
        }
    }
}
