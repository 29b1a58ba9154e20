//! What `#[cached]` emits when a rule fails (thiserror's `fallback.rs`): the
//! errors, the function as written, and stubs of `<fn>_cache_key` and
//! `<fn>_invalidate`. The function's callers and the helpers' callers then
//! compile on, so one mistake gives its own errors and no "cannot find
//! function" beside them.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::helpers;
use crate::valid::Keyed;

pub fn expand(func: &ItemFn, keyed: &Keyed, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    let stubs = helpers::stubs(func, keyed);
    quote! {
        #error
        #func
        #stubs
    }
}
