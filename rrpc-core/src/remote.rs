//! The [`Remote`] trait: what an exported object implements.
use std::any::Any;

/// An object that can be used by a peer through a proxy.
pub trait Remote: Any + Send + Sync {
    /// The type name shown to peers (in `dir` listings and errors).
    fn type_name(&self) -> &str;
}
