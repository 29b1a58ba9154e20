//! Code generation: a thin wrapper around the original body that calls
//! `::cacheruntime::__private`, plus two helpers per function.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{GenericParam, Ident, ItemFn, ReturnType, WherePredicate};

use crate::args::Args;
use crate::template::Piece;
use crate::valid::{self, Hydrator, KeyPlan, Plan};

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
    let out = syn::parse2::<Args>(attr)
        .and_then(|args| valid::check(args, &func))
        .map(|plan| generate(&func, &plan))
        // On error keep the function as written, so its callers do not
        // drown the real message in "cannot find function" errors.
        .unwrap_or_else(|e| {
            let e = e.to_compile_error();
            quote!(#e #func)
        });
    if std::env::var_os("CACHEMACRO_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out
}

/// Where the default key's prefix comes from in generated code. Either way
/// it is the path of a closure made right there (`|| ()`), whose type name
/// tells impl types, generic instantiations and enclosing functions apart.
enum DefaultPrefix {
    /// The function's `Site` static (kept for the first instantiation).
    Site,
    /// Computed on the spot in the helper named `.1` of the function named
    /// `.0` (the helpers cannot see the static).
    Helper(String, Ident),
}

/// Statements building the key in a local `__cachemacro_k`, in place (no
/// moves of the inline buffer): from `start` (a `KeyBuilder` expression),
/// the template or default pieces, then (if `with_vary`) the `vary` segments.
fn render_key(
    plan: &Plan,
    start: TokenStream,
    prefix: DefaultPrefix,
    with_vary: bool,
) -> TokenStream {
    let mut steps = Vec::new();
    match &plan.key {
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
            for p in &plan.params {
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
        for v in &plan.vary {
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

fn cache_ref(plan: &Plan) -> TokenStream {
    match &plan.cache {
        Some(expr) => quote_spanned!(expr.span()=> &(#expr)),
        None => quote!(::cacheruntime::__private::default_cache()),
    }
}

fn generate(func: &ItemFn, plan: &Plan) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = sig.ident.to_string();
    let ttl = plan
        .ttl_ms
        .map(|ms| quote!(.ttl(::core::time::Duration::from_millis(#ms))));
    let version = plan.version;
    let stale = plan
        .stale_ms
        .map(|ms| quote!(.stale(::core::time::Duration::from_millis(#ms))));
    let early = plan.early.map(|beta| quote!(.early(#beta)));
    let policy =
        quote!(::cacheruntime::__private::Policy::new() #ttl #stale #early .version(#version));
    // `stale` / `early` refresh in a spawned task: the body must be
    // `Send + 'static` (owned arguments).
    let refreshing = plan.stale_ms.is_some() || plan.early.is_some();
    let cache = cache_ref(plan);
    let key = render_key(
        plan,
        quote!(::cacheruntime::__private::key_for(__cachemacro_cache)),
        DefaultPrefix::Site,
        true,
    );
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream(),
        ReturnType::Default => quote!(()),
    };
    let (entry, hit) = match (plan.fallible, refreshing) {
        (true, false) => (
            quote!(cached_result),
            quote!(::core::result::Result::Ok(__cachemacro_value)),
        ),
        (true, true) => (
            quote!(cached_result_refreshing),
            quote!(::core::result::Result::Ok(__cachemacro_value)),
        ),
        (false, false) => (quote!(cached_value), quote!(__cachemacro_value)),
        (false, true) => (quote!(cached_value_refreshing), quote!(__cachemacro_value)),
    };
    let storable = plan.value_ty.as_ref().map(|ty| {
        quote_spanned! {ty.span()=>
            let _ = ::cacheruntime::__private::assert_cacheable::<#ty>;
        }
    });
    // The "fake return edge" (tracing-attributes): pins the async block's
    // output to the declared return type, so `?` and `.into()` in the body
    // infer as they did, and type errors point at the signature.
    // The body's statements go straight into the async block (not as a
    // nested block, which would trip `unused_braces` on one-line bodies).
    let stmts = &block.stmts;
    // With `ids`, a caller that did not run the body (a waiter, a stale hit)
    // hydrates after handing the body over, and the hydrator may use the
    // arguments: the body borrows them instead of taking them (`async`, not
    // `async move`), or, when it may run as a background refresh and must
    // own them, takes clones.
    let mover = if plan.ids.is_some() && !refreshing {
        quote!()
    } else {
        quote!(move)
    };
    let body = quote_spanned! {block.span()=>
        async #mover {
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
            #(#stmts)*
        }
    };
    let body = if plan.ids.is_some() && refreshing {
        let clones = plan.params.iter().map(|p| {
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
    let memo = match &plan.value_ty {
        Some(ty) => memo_of(ty.to_token_stream()),
        None => quote!(::cacheruntime::__private::Memo::decode_only()),
    };
    // The function's static call site (name, policy, stats) and its cache.
    // One static for every instantiation of a generic function or impl: the
    // site keeps what it computes per type name.
    let site = quote! {
        static __CACHEMACRO_SITE: ::cacheruntime::__private::Site =
            ::cacheruntime::__private::Site::new(#name, ::core::module_path!(), #policy);
        let __cachemacro_cache: &::cacheruntime::Cache = #cache;
    };
    let helpers = helpers(func, plan);
    if let (Some(hydrator), Some(ty)) = (&plan.ids, &plan.value_ty) {
        let ids = ids_body(&site, &key, hydrator, ty, &entry, &body);
        return quote! {
            #(#attrs)*
            #vis #sig {
                #ids
            }
            #helpers
        };
    }
    quote! {
        #(#attrs)*
        #vis #sig {
            #storable
            #site
            // Everything before the await lives in this block, so the key
            // buffer is not kept in the future's state: in-process hits
            // return from here, synchronously, and only the boxed slow path
            // is awaited.
            let __cachemacro_slow = {
                #key
                let __cachemacro_memo = #memo;
                let __cachemacro_first = match ::cacheruntime::__private::local_hit(
                    __cachemacro_cache,
                    &__CACHEMACRO_SITE,
                    &__cachemacro_k,
                    __cachemacro_memo,
                ) {
                    ::cacheruntime::__private::Fast::Hit(__cachemacro_value) => return #hit,
                    __cachemacro_other => __cachemacro_other,
                };
                ::std::boxed::Box::pin(::cacheruntime::__private::#entry(
                    __cachemacro_cache,
                    &__CACHEMACRO_SITE,
                    __cachemacro_k,
                    __cachemacro_memo,
                    __cachemacro_first,
                    #body,
                ))
            };
            __cachemacro_slow
            .await
        }
        #helpers
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
            ::cacheruntime::__private::Fast::Hit(__cachemacro_ids) => __cachemacro_ids,
            __cachemacro_first => ::cacheruntime::__private::#entry(
                __cachemacro_cache,
                &__CACHEMACRO_SITE,
                __cachemacro_k,
                __cachemacro_memo,
                __cachemacro_first,
                ::cacheruntime::__private::store_ids(&__cachemacro_slot, #body),
            )
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

/// `<fn>_cache_key(..)` and `<fn>_invalidate(..)`, taking only the
/// arguments the key (and the `cache` expression) use.
fn helpers(func: &ItemFn, plan: &Plan) -> TokenStream {
    let sig = &func.sig;
    let vis = &func.vis;
    let name = sig.ident.to_string();
    let key_fn = format_ident!("{}_cache_key", sig.ident);
    let invalidate_fn = format_ident!("{}_invalidate", sig.ident);

    // Which arguments the helpers need: the key's, plus (for the
    // invalidation, which needs the cache) the `cache` expression's.
    let mut key_args: HashSet<String> = HashSet::new();
    match &plan.key {
        KeyPlan::Template(pieces, _) => {
            for p in pieces {
                if let Piece::Placeholder { root, .. } = p {
                    key_args.insert(root.clone());
                }
            }
        }
        KeyPlan::Default => key_args.extend(plan.params.iter().map(|p| p.ident.to_string())),
    }
    let mut cache_args = key_args.clone();
    if let Some(expr) = &plan.cache {
        let mut idents = IdentCollector::default();
        idents.visit_expr(expr);
        cache_args.extend(idents.idents);
    }
    let (key_generics, key_params) = helper_signature(plan, &sig.generics, &key_args);
    let (inv_generics, inv_params) = helper_signature(plan, &sig.generics, &cache_args);
    let (_, _, key_where) = key_generics.split_for_impl();
    let (_, _, inv_where) = inv_generics.split_for_impl();
    let base_key = |helper: &Ident| {
        render_key(
            plan,
            quote!(::cacheruntime::__private::KeyBuilder::new()),
            DefaultPrefix::Helper(name.clone(), helper.clone()),
            false,
        )
    };
    let (key_fn_key, invalidate_fn_key) = (base_key(&key_fn), base_key(&invalidate_fn));
    let cache = cache_ref(plan);
    let (invalidate, what) = if plan.vary.is_empty() {
        (
            quote!(__cachemacro_cache.delete(&__cachemacro_key).await),
            "the entry",
        )
    } else {
        (
            quote!(
                __cachemacro_cache
                    .invalidate_prefix(&::cacheruntime::__private::variants_prefix(
                        &__cachemacro_key
                    ))
                    .await
            ),
            "every `vary` variant of the entry",
        )
    };
    let key_doc = format!(
        "The cache key of [`{name}`] for these arguments{}. Generated by `#[cached]`.",
        if plan.vary.is_empty() {
            ""
        } else {
            " (its `vary` variants are stored under this key followed by `:`)"
        }
    );
    let invalidate_doc =
        format!("Drops {what} of [`{name}`] for these arguments. Generated by `#[cached]`.");
    // With a default key the helpers take every generic parameter.
    let turbofish = matches!(plan.key, KeyPlan::Default)
        && sig
            .generics
            .params
            .iter()
            .any(|g| !matches!(g, GenericParam::Lifetime(_)));
    let (key_doc, invalidate_doc) = if turbofish {
        let note = |helper: &Ident| {
            format!(
                "\n\nIt takes every generic parameter of [`{name}`] (the key holds their \
                 arguments), so one that no argument names is given as for the function: \
                 `{helper}::<T, ..>(..)`."
            )
        };
        (
            key_doc + &note(&key_fn),
            invalidate_doc + &note(&invalidate_fn),
        )
    } else {
        (key_doc, invalidate_doc)
    };
    quote! {
        #[doc = #key_doc]
        #[allow(
            dead_code,
            clippy::needless_lifetimes,
            clippy::extra_unused_lifetimes,
            clippy::extra_unused_type_parameters
        )]
        #vis fn #key_fn #key_generics (#key_params) -> ::std::string::String #key_where {
            #key_fn_key
            __cachemacro_k.finish()
        }

        #[doc = #invalidate_doc]
        #[allow(
            dead_code,
            clippy::needless_lifetimes,
            clippy::extra_unused_lifetimes,
            clippy::extra_unused_type_parameters
        )]
        #vis async fn #invalidate_fn #inv_generics (#inv_params) -> ::core::result::Result<(), ::cacheruntime::Error> #inv_where {
            let __cachemacro_cache: &::cacheruntime::Cache = #cache;
            #invalidate_fn_key
            let __cachemacro_key: ::std::string::String = __cachemacro_k.finish();
            #invalidate
        }
    }
}

/// A helper's generics and parameters: the receiver and arguments named in
/// `used`, and the generic parameters (and where-predicates) their types
/// mention, so no unused generic makes the helper uncallable. With a
/// default key, every generic parameter and the whole where-clause: the
/// key's path has the function's generic arguments, which the helper's must
/// repeat (callers give the ones no argument names by turbofish).
fn helper_signature(
    plan: &Plan,
    generics: &syn::Generics,
    used: &HashSet<String>,
) -> (syn::Generics, TokenStream) {
    let uses_self = plan.has_receiver && used.contains("self");
    let params: Vec<_> = plan
        .params
        .iter()
        .filter(|p| used.contains(&p.ident.to_string()))
        .collect();
    let receiver = uses_self.then(|| quote!(&self,));
    let args = params.iter().map(|p| {
        let (ident, ty) = (&p.ident, &p.ty);
        quote!(#ident: #ty)
    });
    let inputs = quote!(#receiver #(#args),*);
    if matches!(plan.key, KeyPlan::Default) {
        return (generics.clone(), inputs);
    }
    let mut mentioned = IdentCollector::default();
    for p in &params {
        mentioned.visit_type(&p.ty);
    }
    let name_of = |g: &GenericParam| match g {
        GenericParam::Type(t) => t.ident.to_string(),
        GenericParam::Const(c) => c.ident.to_string(),
        GenericParam::Lifetime(l) => l.lifetime.ident.to_string(),
    };
    let is_kept = |mentioned: &IdentCollector, g: &GenericParam| match g {
        GenericParam::Lifetime(l) => mentioned.lifetimes.contains(&l.lifetime.ident.to_string()),
        other => mentioned.idents.contains(&name_of(other)),
    };
    let predicates: Vec<&WherePredicate> = generics
        .where_clause
        .iter()
        .flat_map(|wc| wc.predicates.iter())
        .collect();
    // What a kept parameter's bounds mention is kept too (`A: From<B>`
    // needs `B`), and so on until nothing new is mentioned.
    loop {
        let before = mentioned.idents.len() + mentioned.lifetimes.len();
        let kept: Vec<&GenericParam> = generics
            .params
            .iter()
            .filter(|g| is_kept(&mentioned, g))
            .collect();
        for g in kept {
            let mut c = IdentCollector::default();
            c.visit_generic_param(g);
            mentioned.absorb(c);
        }
        for pred in &predicates {
            let mut bounded = IdentCollector::default();
            match pred {
                WherePredicate::Type(t) => bounded.visit_type(&t.bounded_ty),
                WherePredicate::Lifetime(l) => {
                    bounded.lifetimes.insert(l.lifetime.ident.to_string());
                }
                _ => {}
            }
            let about_kept = bounded.idents.iter().any(|i| mentioned.idents.contains(i))
                || bounded
                    .lifetimes
                    .iter()
                    .any(|l| mentioned.lifetimes.contains(l));
            if about_kept {
                let mut c = IdentCollector::default();
                c.visit_where_predicate(pred);
                mentioned.absorb(c);
            }
        }
        if mentioned.idents.len() + mentioned.lifetimes.len() == before {
            break;
        }
    }
    let mut generics = generics.clone();
    let dropped: HashSet<String> = generics
        .params
        .iter()
        .filter(|g| !is_kept(&mentioned, g))
        .map(name_of)
        .collect();
    generics.params = generics
        .params
        .iter()
        .filter(|g| is_kept(&mentioned, g))
        .cloned()
        .collect();
    if let Some(wc) = &mut generics.where_clause {
        // Only predicates about dropped parameters go.
        wc.predicates = wc
            .predicates
            .iter()
            .filter(|pred| {
                let mut c = IdentCollector::default();
                c.visit_where_predicate(pred);
                !c.idents
                    .iter()
                    .chain(&c.lifetimes)
                    .any(|i| dropped.contains(i))
            })
            .cloned()
            .collect();
    }
    (generics, inputs)
}

/// Every identifier and lifetime name in a piece of syntax.
#[derive(Default)]
struct IdentCollector {
    idents: HashSet<String>,
    lifetimes: HashSet<String>,
}

impl IdentCollector {
    fn absorb(&mut self, other: IdentCollector) {
        self.idents.extend(other.idents);
        self.lifetimes.extend(other.lifetimes);
    }
}

impl<'ast> Visit<'ast> for IdentCollector {
    fn visit_ident(&mut self, i: &'ast Ident) {
        self.idents.insert(i.to_string());
    }
    fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
        self.lifetimes.insert(l.ident.to_string());
    }
    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        if let Some(i) = p.path.get_ident() {
            self.idents.insert(i.to_string());
        }
        syn::visit::visit_expr_path(self, p);
    }
}
