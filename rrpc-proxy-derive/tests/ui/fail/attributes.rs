#[rrpc_proxy_derive::service]
pub trait Thing {
    #[rrpc(gett)]
    fn colour(&self) -> String;
    #[rrpc(get)]
    fn size(&self, unit: String) -> u64;
    #[rrpc(get)]
    fn nothing(&self);
    #[rrpc(set)]
    fn resize(&self, size: u64);
    #[rrpc(set)]
    fn set_weight(&self, a: u64, b: u64);
    fn run(&self);
    fn run_async(&self);
}

fn main() {}
