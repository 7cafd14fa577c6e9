//! A crate that depends on rrpc-client only points the macro at its
//! re-export of the core crate.
use rrpc_client::{Namespace, TypedProxy};

#[rrpc_client::service(crate = "::rrpc_client::core")]
pub trait Greeter {
    fn greet(&self, name: String) -> String;
}

struct Hello;

impl Greeter for Hello {
    fn greet(&self, name: String) -> String {
        format!("hello, {name}")
    }
}

fn main() {
    let _root = Namespace::new("root").with("greeter", GreeterObject::new(Hello));
    let local: GreeterProxy = GreeterObject::new(Hello).into_typed();
    assert!(local.proxy().is_none());
    assert_eq!(GreeterProxy::TYPE_NAME, "Greeter");
}
