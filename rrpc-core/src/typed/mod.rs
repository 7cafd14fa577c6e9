//! Runtime support for typed proxies (the `#[service]` macro of
//! `rrpc-proxy-derive`, re-exported as `rrpc_client::service`).
//!
//! The macro turns a trait into three things: the trait itself, an adapter
//! `FooObject<T>` that exports any `T: Foo` as a [`Remote`](crate::Remote)
//! object, and a typed proxy `FooProxy` whose methods return a
//! [`TypedCall`]. This module holds what those generated items use:
//!
//! - [`TypedCall`] / [`TypedAsyncResult`]: a [`Call`](crate::Call) /
//!   [`AsyncResult`](crate::AsyncResult) that decodes its [`Value`] into a
//!   Rust type and its error into the method's error type;
//! - [`Handle`]: what a typed proxy holds — a proxy to a remote object, or a
//!   local object about to be sent by reference;
//! - [`TypedProxy`]: the trait every generated proxy implements;
//! - [`Callback`]: a typed closure passed by reference;
//! - [`ServiceError`]: how a user error type crosses the wire (kind and
//!   message) and absorbs transport errors (timeout, connection lost).
//!
//! Conversions between Rust types and [`Value`] are serde's: arguments and
//! results are any `Serialize`/`Deserialize` type, and typed proxies and
//! callbacks implement both by carrying their reference through
//! [`to_value`](crate::to_value)/[`from_value`](crate::from_value), so they
//! may also sit inside `Vec`s, `Option`s and structs.

mod call;
mod callback;
mod handle;
mod service_error;

#[doc(hidden)]
pub mod __private;

pub use call::{TypedAsyncResult, TypedCall};
pub use callback::Callback;
pub use handle::Handle;
pub use service_error::ServiceError;

use crate::proxy::Proxy;
use crate::remote::Member;
use crate::value::Value;

/// What every generated typed proxy (`FooProxy`) implements.
///
/// The typed proxy's inherent methods are the trait's methods; the generic
/// helpers live here so that they never clash with a method of the service.
pub trait TypedProxy: Clone + Sized {
    /// The type name the exported object reports (the trait's name).
    const TYPE_NAME: &'static str;

    /// Wraps a handle. No check is made that the object behind it implements
    /// the service: a wrong method fails at call time with `NoSuchMethod`.
    fn from_handle(handle: Handle) -> Self;

    /// The handle inside.
    fn handle(&self) -> &Handle;

    /// The methods and attributes the service declares, with their argument
    /// names and types (what the exported object lists).
    fn declared_members() -> Vec<Member>;

    /// Wraps a dynamic proxy.
    fn from_proxy(proxy: Proxy) -> Self {
        Self::from_handle(Handle::from(proxy))
    }

    /// The dynamic proxy inside, to reach the same object by name
    /// (`typed.proxy()?.call("add", (1, 2))`). `None` for a local object.
    fn proxy(&self) -> Option<&Proxy> {
        self.handle().proxy()
    }

    /// The reference as a [`Value`], to pass to dynamic calls.
    fn into_value(self) -> Value {
        self.handle().to_value()
    }
}
