//! Compile-time behaviour of `#[event]` and `#[event_listener]`: what compiles, and
//! the spanned errors misuse gets.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
