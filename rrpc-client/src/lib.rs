//! rrpc client: connect to rrpc servers and use their objects through proxies.
//!
//! ```no_run
//! # async fn run() -> Result<(), rrpc_client::Error> {
//! let gandalf = rrpc_client::connect("127.0.0.1:18812").await?;
//! let obj = gandalf.root().call("MyClass", (0,)).await?.into_proxy()?;
//! assert_eq!(obj.call("f", (3,)).await?.as_i64(), Some(4));
//! gandalf.close();
//! # Ok(())
//! # }
//! ```
//!
//! Driver scripts that do not use async Rust use [`blocking::connect`] and
//! `.wait()` on each call.

pub mod blocking;
pub mod cli;
mod connect;
pub mod transfer;

pub use connect::{connect, connect_with, ConnectOptions};
pub use rrpc_core::{
    from_value, to_value, Args, AsyncResult, BgServing, Call, CallContext, Class, Config,
    Connection, ConnectionStats, Error, ErrorKind, Function, IntoArgs, Member, MemberKind,
    Namespace, Proxy, Remote, RemoteError, Reply, Value,
};
