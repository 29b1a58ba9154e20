//! The `#[cached]` attribute of [cacheruntime]. Depend on `cacheruntime`
//! and use it as `cacheruntime::cached`: the code it generates calls
//! `::cacheruntime::__private`, and the attribute's reference is
//! [`cacheruntime::cached`][reference].
//!
//! Layout, after thiserror and tracing-attributes: `args` parses the
//! attribute into typed arguments, `template` reads `key` templates,
//! `valid` checks every rule (one function per group, one error
//! collector, `errors`) into a `valid::Plan`, with the function's
//! `arguments` and the `privacy` guard (every argument in the key, in
//! `vary` or in `skip`), `expand` generates a thin wrapper
//! that calls `::cacheruntime::__private`, `key` renders keys, `helpers`
//! adds `<fn>_cache_key` / `<fn>_invalidate`, and `fallback` emits the
//! errors beside the function and stubs of its helpers (the modules are
//! private: `cargo doc --document-private-items` shows them). Set
//! `CACHEMACRO_DEBUG=1` to print expansions.
//!
//! [cacheruntime]: https://docs.rs/cacheruntime
//! [reference]: https://docs.rs/cacheruntime/latest/cacheruntime/attr.cached.html

use proc_macro::TokenStream;

mod args;
mod arguments;
mod errors;
mod expand;
mod fallback;
mod helpers;
mod key;
mod privacy;
mod template;
mod timing;
mod valid;

/// Implemented in the `cachemacro` crate and re-exported by `cacheruntime`,
/// whose runtime the generated code calls: depend on `cacheruntime` and
/// write `cacheruntime::cached`, never `cachemacro::cached`.
//
// cacheruntime writes the attribute's reference on its `pub use`; rustdoc
// shows that text first and this paragraph after it, so it must read well
// as the last words of the reference as well as on its own.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(attr.into(), item.into()).into()
}
