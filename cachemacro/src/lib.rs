//! The `#[cached]` attribute. Use it as `cacheruntime::cached`; the
//! attribute reference is in the cacheruntime README.
//!
//! Layout, after thiserror and tracing-attributes: [`args`] parses the
//! attribute into typed arguments, [`template`] reads `key` templates,
//! [`valid`] checks everything in one pass and reports every error at its
//! span, [`expand`] generates a thin wrapper that calls
//! `::cacheruntime::__private`. Set `CACHEMACRO_DEBUG=1` to print expansions.

use proc_macro::TokenStream;

mod args;
mod expand;
mod template;
mod valid;

/// Turns an `async fn` into a cached one. See the cacheruntime README for
/// the attribute reference.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(attr.into(), item.into()).into()
}
