pub struct Opaque;

#[rrpc_proxy_derive::service]
pub trait Store {
    fn put(&self, item: Opaque);
}

fn main() {}
