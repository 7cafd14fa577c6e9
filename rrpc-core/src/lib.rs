//! rrpc core: the wire format, the [`Value`] model, the object tables and
//! the symmetric connection engine of rrpc, an RPyC-style remote-object RPC
//! framework.
//!
//! Most users reach this crate through `rrpc-client` and `rrpc-server`,
//! which re-export what they need. The pieces:
//!
//! - [`Value`]: data by value, objects ([`Value::Object`]) and proxies
//!   ([`Value::Proxy`]) by reference; [`to_value`]/[`from_value`] convert
//!   serde types.
//! - [`Remote`]: what an exported object implements; [`Function`], [`Class`]
//!   and [`Namespace`] are ready-made ones.
//! - [`Connection`]: one engine for both sides, with [`Proxy`] handles to the
//!   peer's objects, [`Call`]s that are awaited, waited for or started as an
//!   [`AsyncResult`].
//! - [`typed`]: runtime support of typed proxies ([`TypedCall`],
//!   [`Callback`], [`TypedProxy`], [`ServiceError`]).

mod async_result;
mod call;
mod cancel;
pub mod config;
mod connection;
pub mod error;
pub mod handshake;
mod objects;
mod objects_kit;
mod proxy;
pub mod remote;
pub mod typed;
pub mod value;
pub mod wire;

pub use async_result::AsyncResult;
pub use call::{Call, IntoArgs};
pub use config::Config;
pub use connection::{BgServing, Connection, ConnectionStats};
pub use error::{Error, ErrorKind, RemoteError};
pub use objects_kit::{Class, Function, Namespace};
pub use proxy::Proxy;
pub use remote::{downcast, Args, CallContext, Member, MemberKind, Remote, Reply};
pub use typed::{Callback, ServiceError, TypedAsyncResult, TypedCall, TypedProxy};
pub use value::{from_value, to_value, Value, ValueError};
