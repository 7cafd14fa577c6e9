//! rrpc core: wire format, value model, object table and connection engine.

pub mod proxy;
pub mod remote;
pub mod value;

pub use proxy::Proxy;
pub use remote::Remote;
pub use value::{from_value, to_value, Value, ValueError};
