//! The `#[cached]` attribute. Use it as `cacheruntime::cached`; the
//! attribute reference is in the cacheruntime README.
//!
//! Layout, after thiserror and tracing-attributes: [`args`] parses the
//! attribute into typed arguments, [`template`] reads `key` templates,
//! [`valid`] checks every rule (one function per group, one error
//! collector) into a [`valid::Plan`], [`expand`] generates a thin wrapper
//! that calls `::cacheruntime::__private`, [`key`] renders keys, [`helpers`]
//! adds `<fn>_cache_key` / `<fn>_invalidate`, and [`fallback`] emits the
//! errors beside the function and stubs of its helpers. Set
//! `CACHEMACRO_DEBUG=1` to print expansions.

use proc_macro::TokenStream;

mod args;
mod expand;
mod fallback;
mod helpers;
mod key;
mod template;
mod valid;

/// Turns an `async fn` into a cached one. See the cacheruntime README for
/// the attribute reference.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(attr.into(), item.into()).into()
}
