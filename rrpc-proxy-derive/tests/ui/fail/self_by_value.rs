#[rrpc_proxy_derive::service]
pub trait Calc {
    fn consume(self) -> i64;
    fn mutate(&mut self, by: i64);
    fn typed_self(self: Box<Self>);
    fn no_receiver(a: i64) -> i64;
}

fn main() {}
