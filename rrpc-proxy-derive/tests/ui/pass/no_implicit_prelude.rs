//! Hygiene: the generated code names everything by absolute paths, so it
//! compiles without the prelude.
#![no_implicit_prelude]

#[::rrpc_proxy_derive::service]
pub trait Calc {
    fn add(&self, a: i64, b: i64) -> i64;
    fn div(&self, a: i64, b: i64) -> ::std::result::Result<i64, ::rrpc_core::Error>;
    async fn slow(&self, xs: ::std::vec::Vec<::std::string::String>) -> ::std::option::Option<u8>;
    fn map(&self, f: ::rrpc_core::Callback<i64, i64>, xs: ::std::vec::Vec<i64>) -> ::std::vec::Vec<i64>;
    fn sibling(&self) -> CalcProxy;
    fn nothing(&self);
    #[rrpc(get)]
    fn total(&self) -> i64;
    #[rrpc(set)]
    fn set_total(&self, value: i64);
}

fn main() {}
