#[rrpc_proxy_derive::service]
pub trait Calc {
    fn add(&self, _: i64, b: i64) -> i64;
}

fn main() {}
