//! Code generation: a thin wrapper around the original body that calls
//! `::cacheruntime::__private`, plus the two helpers (`helpers.rs`); on an
//! error, the fallback (`fallback.rs`).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, ReturnType};

use crate::args::Args;
use crate::key::{self, DefaultPrefix};
use crate::timing::{Decide, DecidedTtl};
use crate::valid::{self, Hydrator, Keyed, Plan, Rejected, Shape};
use crate::{fallback, helpers};

pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let msg = syn::Error::new(
                e.span(),
                format!("#[cached] goes on an `async fn` with a body: {e}"),
            )
            .to_compile_error();
            return quote!(#msg #item);
        }
    };
    let checked = match syn::parse2::<Args>(attr) {
        Ok(args) => valid::check(args, &func),
        Err(error) => Err(Box::new(Rejected {
            error,
            keyed: Keyed::of_signature(&func.sig),
        })),
    };
    let out = match checked {
        Ok(plan) => generate(&func, &plan),
        Err(rejected) => fallback::expand(&func, &rejected.keyed, rejected.error),
    };
    if std::env::var_os("CACHEMACRO_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out
}

/// `Duration::new(..)` of a checked duration, exact whatever its size.
fn duration(d: std::time::Duration) -> TokenStream {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}

fn generate(func: &ItemFn, plan: &Plan) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let Plan {
        keyed,
        tags,
        timing,
        shape,
    } = plan;
    let name = sig.ident.to_string();
    let ttl = timing.ttl.map(|d| {
        let d = duration(d);
        quote!(.ttl(#d))
    });
    let stale = match (timing.stale, &timing.decide.stale) {
        (Some(d), _) => {
            let d = duration(d);
            Some(quote!(.stale(#d)))
        }
        // Decided per computation; the static policy only says that stale
        // entries are served while one caller refreshes.
        (None, Some(_)) => Some(quote!(.stale(::core::time::Duration::ZERO))),
        (None, None) => None,
    };
    // A constant expression is evaluated with the static policy: a beta
    // that is not a positive number fails the build there.
    let early = match (&timing.early, &timing.early_const) {
        (Some(beta), _) => Some(quote!(.early(#beta))),
        (None, Some(e)) => Some(quote_spanned! {e.span()=>
            .early(::cacheruntime::__private::early_beta(#e))
        }),
        (None, None) => None,
    };
    let kept = timing.stale_if_error.map(|d| {
        let d = duration(d);
        quote!(.stale_if_error(#d))
    });
    let version = timing.version;
    let policy = quote!(::cacheruntime::__private::Policy::new() #ttl #stale #early #kept .version(#version));
    // `stale` / `early` refresh in a spawned task: the body must be
    // `Send + 'static` (owned arguments).
    let refreshing = timing.refreshes();
    let cache = key::cache_ref(keyed);
    let key = key::render(
        keyed,
        quote!(::cacheruntime::__private::key_for(__cachemacro_cache)),
        DefaultPrefix::Site,
        true,
    );
    let tags = key::render_tags(tags);
    let key = quote!(#key #tags);
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream(),
        ReturnType::Default => quote!(()),
    };
    let deciding = timing.decide.any();
    let entry = match (shape, refreshing, deciding) {
        (_, false, true) => "cached_result_deciding",
        (_, true, true) => "cached_result_deciding_refreshing",
        (Shape::Value(_), false, false) => "cached_value",
        (Shape::Value(_), true, false) => "cached_value_refreshing",
        (_, false, false) => "cached_result",
        (_, true, false) => "cached_result_refreshing",
    };
    // The "fake return edge" (tracing-attributes): pins the async block's
    // output to the declared return type, so `?` and `.into()` in the body
    // infer as they did, and type errors point at the signature.
    // The body's statements go straight into the async block (not as a
    // nested block, which would trip `unused_braces` on one-line bodies).
    let stmts = &block.stmts;
    let is_ids = matches!(shape, Shape::Ids { .. });
    // With `ids`, a caller that did not run the body (a waiter, a stale hit)
    // hydrates after handing the body over, and the hydrator may use the
    // arguments: the body borrows them instead of taking them (`async`, not
    // `async move`), or, when it may run as a background refresh and must
    // own them, takes clones.
    let mover = if is_ids && !refreshing {
        quote!()
    } else {
        quote!(move)
    };
    let edge = fake_return_edge(&ret);
    let body = quote_spanned! {block.span()=>
        async #mover {
            #edge
            #(#stmts)*
        }
    };
    let body = if deciding {
        decided_body(&timing.decide, shape, &ret, stmts, block.span())
    } else {
        body
    };
    let body = if is_ids && refreshing {
        let clones = keyed.params.iter().map(|p| {
            let ident = &p.ident;
            quote_spanned! {ident.span()=>
                #[allow(unused_variables, unused_mut)]
                let mut #ident = ::cacheruntime::__private::clone_for_refresh(&#ident);
            }
        });
        quote!({
            #(#clones)*
            #body
        })
    } else {
        body
    };
    // The function's static call site (name, policy, stats) and its cache.
    // One static for every instantiation of a generic function or impl: the
    // site keeps what it computes per type name.
    let site = quote! {
        static __CACHEMACRO_SITE: ::cacheruntime::__private::Site =
            ::cacheruntime::__private::Site::new(#name, ::core::module_path!(), #policy);
        let __cachemacro_cache: &::cacheruntime::Cache = #cache;
    };
    let helpers = helpers::helpers(func, keyed);
    let (value, hit) = match shape {
        Shape::Ids { ty, hydrator } => {
            let entry = Ident::new(entry, Span::call_site());
            let entry = quote!(::cacheruntime::__private::#entry);
            let ids = ids_body(&site, &key, hydrator, ty, &entry, &body);
            return quote! {
                #(#attrs)*
                #vis #sig {
                    #ids
                }
                #helpers
            };
        }
        Shape::Value(ty) => (Some(ty), quote!(__cachemacro_value)),
        Shape::Ok(ty) => (
            ty.as_ref(),
            quote!(::core::result::Result::Ok(__cachemacro_value)),
        ),
    };
    // The calls that need the stored type to be `Cacheable` are spanned at
    // that type: a missing `Serialize` / `Deserialize` is one error there
    // (the compiler reports one unmet bound once per span), worded by the
    // trait's `on_unimplemented`.
    let at = match (value, &sig.output) {
        (Some(ty), _) => ty.span(),
        (None, ReturnType::Type(_, ty)) => ty.span(),
        (None, ReturnType::Default) => Span::call_site(),
    };
    // The whole calls, arguments too: the compiler points an unmet bound
    // at the argument whose type carries the bounded parameter.
    let local_hit = quote_spanned! {at=>
        ::cacheruntime::__private::local_hit(
            __cachemacro_cache,
            &__CACHEMACRO_SITE,
            &__cachemacro_k,
            __cachemacro_memo,
        )
    };
    let entry = Ident::new(entry, at);
    let slow = quote_spanned! {at=>
        ::std::boxed::Box::pin(::cacheruntime::__private::#entry(
            __cachemacro_cache,
            &__CACHEMACRO_SITE,
            __cachemacro_k,
            __cachemacro_memo,
            __cachemacro_first,
            #body,
        ))
    };
    // An `async fn`'s bounds are checked again where its future is awaited.
    let awaited = if deciding && matches!(shape, Shape::Value(_)) {
        // A plain value went through the result entry point as `Ok`.
        quote_spanned! {at=>
            match __cachemacro_slow.await {
                ::core::result::Result::Ok(__cachemacro_value) => __cachemacro_value,
                ::core::result::Result::Err(__cachemacro_never) => match __cachemacro_never {},
            }
        }
    } else {
        quote_spanned!(at=> __cachemacro_slow.await)
    };
    let memo = match value {
        Some(ty) => memo_of(ty.to_token_stream()),
        None => quote!(::cacheruntime::__private::Memo::decode_only()),
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #site
            // Everything before the await lives in this block, so the key
            // buffer is not kept in the future's state: in-process hits
            // return from here, synchronously, and only the boxed slow path
            // is awaited.
            let __cachemacro_slow = {
                #key
                let __cachemacro_memo = #memo;
                let __cachemacro_first = match #local_hit {
                    ::core::result::Result::Ok(__cachemacro_value) => return #hit,
                    ::core::result::Result::Err(__cachemacro_other) => __cachemacro_other,
                };
                #slow
            };
            #awaited
        }
        #helpers
    }
}

/// The "fake return edge" (tracing-attributes): an unreachable `return` of
/// the declared type, so that the async block's output is pinned to it.
fn fake_return_edge(ret: &TokenStream) -> TokenStream {
    quote! {
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::let_unit_value,
            clippy::unreachable,
            clippy::empty_loop,
            clippy::needless_return
        )]
        if false {
            let __cachemacro_fake_return: #ret = loop {};
            return __cachemacro_fake_return;
        }
    }
}

/// The body of a function that decides per computation how its value is
/// stored: the statements run in an inner block that borrows the arguments
/// (so the decision's expressions can read them too), then the decision is
/// made over the value (an `Ok` value for `Result` functions; an `Err`
/// stores nothing whatever is decided). Yields `(outcome, decision)`, a
/// plain value as `Ok::<_, Infallible>`.
fn decided_body(
    decide: &Decide,
    shape: &Shape,
    ret: &TokenStream,
    stmts: &[syn::Stmt],
    span: Span,
) -> TokenStream {
    let edge = fake_return_edge(ret);
    let private = quote!(::cacheruntime::__private);
    let mut steps = Vec::new();
    match &decide.ttl {
        Some(DecidedTtl::Expr(expr)) => steps.push(quote_spanned! {expr.span()=>
            __cachemacro_decision = __cachemacro_decision.ttl(#private::ttl_of(#expr));
        }),
        Some(DecidedTtl::OfValue(closure)) => {
            let (pat, body) = (&closure.inputs[0], &closure.body);
            steps.push(quote_spanned! {closure.body.span()=>
                __cachemacro_decision = __cachemacro_decision.ttl(#private::ttl_of({
                    let #pat = __cachemacro_value;
                    #body
                }));
            });
        }
        None => {}
    }
    if let Some(expr) = &decide.stale {
        steps.push(quote_spanned! {expr.span()=>
            __cachemacro_decision = __cachemacro_decision.stale(#private::ttl_of(#expr));
        });
    }
    if let Some(closure) = &decide.unless {
        let (pat, body) = (&closure.inputs[0], &closure.body);
        steps.push(quote_spanned! {closure.body.span()=>
            let __cachemacro_unless: bool = {
                let #pat = __cachemacro_value;
                #body
            };
            if __cachemacro_unless {
                __cachemacro_decision = __cachemacro_decision.skip();
            }
        });
    }
    let decide = quote! {
        #[allow(unused_mut)]
        let mut __cachemacro_decision = #private::Decision::new();
        #(#steps)*
        __cachemacro_decision
    };
    let (decision, outcome) = match shape {
        Shape::Value(_) => (
            quote! {{
                let __cachemacro_value = &__cachemacro_out;
                #decide
            }},
            quote!(::core::result::Result::Ok::<_, ::core::convert::Infallible>(__cachemacro_out)),
        ),
        _ => (
            quote! {
                match &__cachemacro_out {
                    ::core::result::Result::Ok(__cachemacro_value) => { #decide }
                    ::core::result::Result::Err(_) => #private::Decision::new(),
                }
            },
            quote!(__cachemacro_out),
        ),
    };
    quote_spanned! {span=>
        async move {
            let __cachemacro_out: #ret = async {
                #edge
                #(#stmts)*
            }
            .await;
            let __cachemacro_decision = #decision;
            (#outcome, __cachemacro_decision)
        }
    }
}

/// The body of an `ids = ...` function: the stored value is the result's
/// ids; a caller whose miss ran the body returns its objects as computed,
/// every other caller hands the ids to the hydrator.
fn ids_body(
    site: &TokenStream,
    key: &TokenStream,
    hydrator: &Hydrator,
    ty: &syn::Type,
    entry: &TokenStream,
    body: &TokenStream,
) -> TokenStream {
    let shape = quote!(<#ty as ::cacheruntime::__private::IdShape>);
    let memo = memo_of(quote!(#shape::Ids));
    let assert = quote_spanned! {ty.span()=>
        let _ = ::cacheruntime::__private::assert_id_shape::<#ty>;
    };
    // The ids are bound in the branch's own scope, so the hydrator's future
    // may borrow them (`|ids| Book::by_ids(&pool, &ids)`).
    let hydrate = match hydrator {
        Hydrator::Closure {
            pat,
            body,
            is_async: false,
        } => quote! {
            let #pat = __cachemacro_list;
            let __cachemacro_found = (#body).await?;
        },
        Hydrator::Closure {
            pat,
            body,
            is_async: true,
        } => quote! {
            let #pat = __cachemacro_list;
            let __cachemacro_found = (async move { #body }).await?;
        },
        Hydrator::Call(expr) => quote! {
            let __cachemacro_found = (#expr)(__cachemacro_list).await?;
        },
    };
    quote! {
        #assert
        #site
        let __cachemacro_slot = ::cacheruntime::__private::IdSlot::<#ty>::new();
        #key
        let __cachemacro_memo = #memo;
        let __cachemacro_ids: #shape::Ids = match ::cacheruntime::__private::local_hit(
            __cachemacro_cache,
            &__CACHEMACRO_SITE,
            &__cachemacro_k,
            __cachemacro_memo,
        ) {
            ::core::result::Result::Ok(__cachemacro_ids) => __cachemacro_ids,
            // Boxed, as the other shapes' slow path: the core's layers each
            // keep a copy of the unstarted body, and a body awaiting another
            // cached function would grow this future several-fold per level.
            ::core::result::Result::Err(__cachemacro_first) => ::std::boxed::Box::pin(#entry(
                __cachemacro_cache,
                &__CACHEMACRO_SITE,
                __cachemacro_k,
                __cachemacro_memo,
                __cachemacro_first,
                ::cacheruntime::__private::store_ids(&__cachemacro_slot, #body),
            ))
            .await?,
        };
        if let ::core::option::Option::Some(__cachemacro_objects) = __cachemacro_slot.take() {
            return ::core::result::Result::Ok(__cachemacro_objects);
        }
        let __cachemacro_list = #shape::list(&__cachemacro_ids);
        let __cachemacro_rows = if __cachemacro_list.is_empty() {
            ::std::vec::Vec::new()
        } else {
            #hydrate
            <_ as ::cacheruntime::__private::Rows<#shape::Item>>::into_rows(__cachemacro_found)
        };
        ::core::result::Result::Ok(#shape::arrange(__cachemacro_ids, __cachemacro_rows))
    }
}

/// Autoref specialisation: values of `ty` that are `Clone` get the
/// in-process decoded-value memo, others are decoded on every hit.
fn memo_of(ty: TokenStream) -> TokenStream {
    quote! {{
        #[allow(unused_imports, clippy::needless_borrow)]
        use ::cacheruntime::__private::{ViaClone as _, ViaDecode as _};
        (&&::cacheruntime::__private::Probe::<#ty>::new()).memo()
    }}
}
