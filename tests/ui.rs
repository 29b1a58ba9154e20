//! Compile-time behaviour of `#[cached]`: what compiles, and the error (at
//! its span, with the fix) for everything that should not.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
