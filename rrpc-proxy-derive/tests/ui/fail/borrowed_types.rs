#[rrpc_proxy_derive::service]
pub trait Files {
    fn open(&self, path: &str) -> u64;
    fn write(&self, data: &[u8]);
    fn name(&self) -> &String;
}

fn main() {}
