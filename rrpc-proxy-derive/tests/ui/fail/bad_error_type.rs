#[rrpc_proxy_derive::service]
pub trait Files {
    fn read(&self, path: String) -> Result<Vec<u8>, std::io::Error>;
}

fn main() {}
