//! rrpc server: the listener and accept loop, graceful shutdown, and the
//! objects the stock `rrpc-server` binary exports.
//!
//! ```no_run
//! use rrpc_core::{Function, Namespace, Value};
//! use rrpc_server::Server;
//!
//! # async fn run() -> std::io::Result<()> {
//! let root = Namespace::new("calc").with(
//!     "add",
//!     Function::blocking("add", |mut args| {
//!         let (a, b): (i64, i64) = (args.take(0, "a")?, args.take(1, "b")?);
//!         Ok(Value::from(a + b))
//!     })
//!     .into_value(),
//! );
//! let listening = Server::new(root).bind("127.0.0.1:0").await?;
//! println!("rrpc-server listening on {}", listening.local_addr());
//! listening.serve_until(tokio::signal::ctrl_c()).await;
//! # Ok(())
//! # }
//! ```

pub mod admission;
pub mod demo;
pub mod security;
mod server;
pub mod services;
pub mod tls;

pub use server::{Listening, RunningServer, Server, ServerHandle, ServerStats};
