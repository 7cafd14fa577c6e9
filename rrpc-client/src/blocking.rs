//! The blocking API for driver scripts: the connection runs on a background
//! runtime it owns, and every call is made with `.wait()`.
//!
//! ```no_run
//! # fn run() -> Result<(), rrpc_client::Error> {
//! let gandalf = rrpc_client::blocking::connect("127.0.0.1:18812")?;
//! let obj = gandalf.root().call("MyClass", (0,)).wait()?.into_proxy()?;
//! assert_eq!(obj.call("f", (3,)).wait()?.as_i64(), Some(4));
//! gandalf.close();
//! # Ok(())
//! # }
//! ```

use std::net::ToSocketAddrs;

use rrpc_core::{Connection, Error};

use crate::connect::ConnectOptions;

/// Connects with default options; see [`connect_with`].
pub fn connect(addr: impl ToSocketAddrs) -> Result<Connection, Error> {
    connect_with(addr, ConnectOptions::default())
}

/// Connects from blocking code. The connection's tasks (its background
/// serving: replies, the server's callbacks, async-result callbacks) run on
/// a small runtime owned by the connection, stopped when it is dropped.
pub fn connect_with(
    addr: impl ToSocketAddrs,
    options: ConnectOptions,
) -> Result<Connection, Error> {
    let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rrpc-bg")
        .enable_all()
        .build()?;
    let conn = runtime.block_on(crate::connect_with(&addrs[..], options))?;
    conn.attach_runtime(runtime);
    Ok(conn)
}
