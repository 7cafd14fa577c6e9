//! Proxies (RPyC's netrefs): local handles to objects owned by a peer.
use std::fmt;

/// A reference to an object owned by a peer.
#[derive(Clone)]
pub struct Proxy {
    id: u64,
}

impl Proxy {
    /// Whether two proxies refer to the same remote object.
    pub fn same_object(&self, other: &Proxy) -> bool {
        self.id == other.id
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<proxy #{}>", self.id)
    }
}
