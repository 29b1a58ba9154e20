//! The statements that build a key in generated code: the template's
//! pieces (or the default key's path and arguments), then `vary`'s.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::Ident;

use crate::template::Piece;
use crate::valid::{KeyPlan, Keyed};

/// Where the default key's prefix comes from in generated code. Either way
/// it is the path of a closure made right there (`|| ()`), whose type name
/// tells impl types, generic instantiations and enclosing functions apart.
pub enum DefaultPrefix {
    /// The function's `Site` static (kept for the first instantiation).
    Site,
    /// Computed on the spot in the helper named `.1` of the function named
    /// `.0` (the helpers cannot see the static).
    Helper(String, Ident),
}

/// Statements building the key in a local `__cachemacro_k`, in place (no
/// moves of the inline buffer): from `start` (a `KeyBuilder` expression),
/// the template or default pieces, then (if `with_vary`) the `vary` segments.
pub fn render(
    keyed: &Keyed,
    start: TokenStream,
    prefix: DefaultPrefix,
    with_vary: bool,
) -> TokenStream {
    let mut steps = Vec::new();
    match &keyed.key {
        KeyPlan::Template(pieces, span) => {
            for piece in pieces {
                match piece {
                    Piece::Literal(text) if text.is_empty() => {}
                    Piece::Literal(text) => {
                        steps.push(quote!(__cachemacro_k.literal(#text);));
                    }
                    Piece::Placeholder { root, path } => {
                        let expr = placeholder_expr(root, path, *span);
                        steps.push(push_value(quote!(), &expr, *span));
                    }
                }
            }
        }
        KeyPlan::Default => {
            steps.push(match prefix {
                // `line!()` and `column!()` in generated code give the place
                // of the `#[cached]` attribute, the same for the function and
                // its helpers.
                DefaultPrefix::Site => quote! {
                    __cachemacro_k.literal(&__CACHEMACRO_SITE.default_prefix(
                        || (),
                        ::core::line!(),
                        ::core::column!(),
                    ));
                },
                DefaultPrefix::Helper(name, helper) => {
                    let helper = helper.to_string();
                    quote! {
                        __cachemacro_k.literal(&::cacheruntime::__private::helper_default_prefix(
                            || (),
                            #name,
                            #helper,
                            ::core::line!(),
                            ::core::column!(),
                        ));
                    }
                }
            });
            for p in keyed.default_key_params() {
                let ident = &p.ident;
                steps.push(push_value(
                    quote!(__cachemacro_k.literal(":");),
                    &ident.to_token_stream(),
                    ident.span(),
                ));
            }
        }
    }
    if with_vary {
        for v in &keyed.vary {
            steps.push(push_value(
                quote!(__cachemacro_k.literal(":");),
                &v.to_token_stream(),
                v.span(),
            ));
        }
    }
    quote! {
        let mut __cachemacro_k: ::cacheruntime::__private::KeyBuilder = #start;
        #(#steps)*
    }
}

/// Statements adding each tag to the key in `__cachemacro_k`, each
/// rendered like a key template, by a builder of its own.
pub fn render_tags(tags: &[(Vec<Piece>, Span)]) -> TokenStream {
    let tags = tags.iter().map(|(pieces, span)| {
        let steps = pieces.iter().map(|piece| match piece {
            Piece::Literal(text) if text.is_empty() => quote!(),
            Piece::Literal(text) => quote!(__cachemacro_k.literal(#text);),
            Piece::Placeholder { root, path } => {
                push_value(quote!(), &placeholder_expr(root, path, *span), *span)
            }
        });
        quote! {
            __cachemacro_k.tag({
                let mut __cachemacro_k = ::cacheruntime::__private::KeyBuilder::new();
                #(#steps)*
                __cachemacro_k
            });
        }
    });
    quote!(#(#tags)*)
}

/// Appends one escaped value (after `before`), checked for `Display` at
/// `span` so a missing impl is reported at the argument.
fn push_value(before: TokenStream, expr: &TokenStream, span: Span) -> TokenStream {
    let arg = quote_spanned!(span=> ::cacheruntime::__private::display(&#expr));
    quote! {
        #before
        {
            #[allow(unused_imports, clippy::needless_borrow)]
            use ::cacheruntime::__private::{KeyDisplay as _, KeyInt as _};
            (&&#arg).push_to(&mut __cachemacro_k);
        }
    }
}

fn placeholder_expr(root: &str, path: &[String], span: Span) -> TokenStream {
    let mut expr = if root == "self" {
        quote_spanned!(span=> self)
    } else {
        Ident::new(root, span).into_token_stream()
    };
    for field in path {
        if let Ok(index) = field.parse::<u32>() {
            let index = syn::Index { index, span };
            expr = quote!(#expr.#index);
        } else {
            let field = Ident::new(field, span);
            expr = quote!(#expr.#field);
        }
    }
    expr
}

/// The `&Cache` the function and its invalidation use: `cache = "feeds"`
/// names one of the installed `Caches`, resolved once per install.
pub fn cache_ref(keyed: &Keyed) -> TokenStream {
    match &keyed.cache {
        Some(syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(name),
            ..
        })) => quote_spanned! {name.span()=> {
            static __CACHEMACRO_NAMED: ::cacheruntime::__private::NamedCache =
                ::cacheruntime::__private::NamedCache::new(#name);
            __CACHEMACRO_NAMED.get()
        }},
        Some(expr) => quote_spanned!(expr.span()=> &(#expr)),
        None => quote!(::cacheruntime::__private::default_cache()),
    }
}
