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

/// Why [`connect_with`] refuses to run inside an async runtime.
const IN_ASYNC: &str = "rrpc_client::blocking::connect called from async code: \
use rrpc_client::connect(..).await there, or call it inside tokio::task::spawn_blocking";

/// Connects with default options; see [`connect_with`].
pub fn connect(addr: impl ToSocketAddrs) -> Result<Connection, Error> {
    connect_with(addr, ConnectOptions::default())
}

/// Connects from blocking code. The connection's tasks (its background
/// serving: replies, the server's callbacks, async-result callbacks) run on
/// a small runtime owned by the connection, stopped when it is dropped.
///
/// Called from inside an async runtime it returns an error (instead of the
/// runtime's panic): async code uses [`crate::connect`]`(..).await`, or
/// runs the blocking code in `tokio::task::spawn_blocking`.
pub fn connect_with(
    addr: impl ToSocketAddrs,
    options: ConnectOptions,
) -> Result<Connection, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::from(std::io::Error::other(IN_ASYNC)));
    }
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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn connecting_from_async_code_is_an_error_not_a_panic() {
        let e = super::connect("127.0.0.1:1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("rrpc_client::connect(..).await"), "{e}");
        assert!(e.contains("spawn_blocking"), "{e}");
    }
}
