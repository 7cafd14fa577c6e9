//! Compile tests of `#[service]`: what must compile, and what must fail with
//! a helpful message at the offending token (the `.stderr` files). The
//! messages depend on the compiler version; regenerate them with
//! `TRYBUILD=overwrite cargo test -p rrpc-proxy-derive --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
