#[rrpc_proxy_derive::service]
pub trait Store<T> {
    fn get(&self, key: String) -> i64;
    fn put<V: Clone>(&self, value: V);
    type Item;
}

fn main() {}
