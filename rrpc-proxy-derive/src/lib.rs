//! `#[service]`: one Rust trait, both sides of an rrpc object.
//!
//! ```ignore
//! #[rrpc_client::service]
//! pub trait Calc {
//!     /// Adds two numbers.
//!     fn add(&self, a: i64, b: i64) -> i64;
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
//!     #[rrpc(get)]
//!     fn total(&self) -> i64;
//!     #[rrpc(set)]
//!     fn set_total(&self, value: i64);
//! }
//! ```
//!
//! generates, next to the trait itself:
//!
//! - `CalcObject<T>`: exports any `T: Calc` as a remote object (sync methods
//!   run on the blocking pool, `async fn`s as tasks), with a member listing
//!   that names every method and attribute with argument names and types;
//! - `CalcProxy`: the typed proxy. `calc.add(1, 2)` is a
//!   `TypedCall<i64>` (`.await` it, or `.wait()` in blocking code);
//!   `calc.add_async(1, 2)` is a `TypedAsyncResult<i64>`; attributes read
//!   with `calc.total()` and write with `calc.set_total(5)`.
//!
//! The generated code names the runtime by absolute paths, `::rrpc_core` by
//! default; `#[service(crate = "::rrpc_client::core")]` points it elsewhere
//! (for crates that depend on `rrpc-client` only). See the README's "Typed
//! proxies" section and `rrpc_core::typed`.
//!
//! The macro works in three steps: [`parse`] checks the trait and builds a
//! [`model`], which [`generate`] turns into code.

mod generate;
mod model;
mod parse;

use proc_macro::TokenStream;

/// Turns a trait into an exported-object adapter (`FooObject<T>`) and a typed
/// proxy (`FooProxy`). See the crate documentation.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::service(attr.into(), item.into()) {
        Ok(service) => generate::service(&service).into(),
        Err(failure) => failure.into_tokens().into(),
    }
}
