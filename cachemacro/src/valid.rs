//! Every semantic rule of `#[cached]`: one function per group of rules,
//! each writing into one collector ([`Errors`]), so that every problem is
//! reported at once, each at its span (serde's `Ctxt`, thiserror's
//! `valid.rs`).

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Expr, FnArg, GenericArgument, Ident, ItemFn, LitStr, Pat, PathArguments, ReturnType, Signature,
    Type,
};

use crate::args::{self, Args};
pub use crate::arguments::Param;
use crate::arguments::{read_arguments, Arguments};
use crate::errors::Errors;
use crate::privacy::{check_skip, check_vary};
use crate::template::{self, Piece};
use crate::timing;
pub use crate::timing::Timing;

pub enum KeyPlan {
    /// A `key = "..."` template, with its literal's span.
    Template(Vec<Piece>, Span),
    /// No template: the function's path (with impl type, generic arguments
    /// and enclosing functions, read at run time from a closure's type
    /// name) and every argument. Not for methods: it cannot see `self`.
    Default,
}

/// What the key and the two helpers are made of. Known even when another
/// rule fails, so that the fallback can still stub the helpers.
pub struct Keyed {
    pub key: KeyPlan,
    pub vary: Vec<Ident>,
    pub cache: Option<Expr>,
    pub params: Vec<Param>,
    /// Arguments a default key leaves out (`skip`, the cache argument).
    pub left_out: Vec<String>,
    pub has_receiver: bool,
}

impl Keyed {
    /// The arguments a default key is made of, in order.
    pub fn default_key_params(&self) -> impl Iterator<Item = &Param> {
        self.params
            .iter()
            .filter(|p| !self.left_out.iter().any(|l| p.ident == l))
    }
}

impl Keyed {
    /// For a function whose attribute did not parse: a default key over
    /// every named argument (what the helpers of a key-less function take).
    pub fn of_signature(sig: &Signature) -> Keyed {
        let arguments = read_arguments(sig, &mut Errors::default());
        Keyed {
            key: KeyPlan::Default,
            vary: Vec::new(),
            cache: None,
            params: arguments.params,
            left_out: Vec::new(),
            has_receiver: arguments.receiver.is_some(),
        }
    }
}

/// What the function returns, and so what is stored and how a hit becomes
/// its return value.
pub enum Shape {
    /// `-> T`: every value is stored and a hit is returned as it is.
    Value(Type),
    /// `-> Result<T, E>`: `Ok(T)` is stored, `Err` never; a hit is `Ok`.
    /// `None` when `T` cannot be named (a `Result` alias without
    /// arguments): it is inferred.
    Ok(Option<Type>),
    /// `ids = ...` on `-> Result<S, E>` with `S` a `Vec<T>` or an
    /// `Option<T>`, `T: CacheId`: the ids of `S` are stored, and a hit hands
    /// them to the hydrator.
    Ids { ty: Type, hydrator: Hydrator },
}

/// How the stored ids become objects again on a hit.
pub enum Hydrator {
    /// `|ids| expr` (or `async |ids| expr`): inlined, so `expr` may borrow
    /// the function's arguments and the ids.
    Closure {
        pat: Box<Pat>,
        body: Box<Expr>,
        is_async: bool,
    },
    /// Anything else: called with the ids.
    Call(Expr),
}

/// What `expand` needs, all checked.
pub struct Plan {
    pub keyed: Keyed,
    /// `tags = [..]`: each tag's template, with its literal's span.
    pub tags: Vec<(Vec<Piece>, Span)>,
    pub timing: Timing,
    pub shape: Shape,
}

/// Every problem found, and what the fallback needs to stub the helpers.
pub struct Rejected {
    pub error: syn::Error,
    pub keyed: Keyed,
}

pub fn check(args: Args, func: &ItemFn) -> Result<Plan, Box<Rejected>> {
    let Args {
        key,
        ttl,
        vary,
        cache,
        version,
        stale,
        early,
        ids,
        skip,
        unless,
        stale_if_error,
        tags,
        errors,
    } = args;
    let mut errs = Errors::from_parse(errors);
    let sig = &func.sig;
    check_signature(sig, &mut errs);
    let arguments = read_arguments(sig, &mut errs);
    let key = check_key(key.as_ref(), vary.as_ref(), func, &arguments, &mut errs);
    let vary = check_vary(vary, &arguments, &sig.ident, &mut errs);
    let tags = check_tags(tags, func, &arguments, &mut errs);
    let roots = match &key {
        KeyPlan::Template(pieces, _) => Some(template::roots(pieces)),
        KeyPlan::Default => None,
    };
    // A template that failed its own checks planned a default key, and is
    // not guarded: that would only repeat its errors.
    let skipped = check_skip(
        skip,
        roots.as_deref(),
        &vary,
        cache.as_ref(),
        &arguments,
        &sig.ident,
        &mut errs,
    );
    // A refresh (`stale`, or else `early`) runs the body in a spawned task.
    let refresher = match (&stale, &early) {
        (Some(_), _) => Some(args::STALE),
        (None, Some(_)) => Some(args::EARLY),
        (None, None) => None,
    };
    if let Some(what) = refresher {
        check_owned_for_refresh(sig, what, &mut errs);
    }
    check_cache_name(cache.as_ref(), &mut errs);
    let shape = check_shape(sig, ids, &mut errs);
    let timing = timing::check(
        ttl,
        stale,
        early,
        version.as_ref(),
        unless,
        stale_if_error,
        !matches!(shape, Some(Shape::Value(_))),
        matches!(shape, Some(Shape::Ids { .. })),
        &mut errs,
    );
    // A default key has every argument but those skipped and the one that
    // is the cache itself (`cache = cache`): where a value is stored does
    // not change it. (The helpers still take them where the `cache`
    // expression needs them.)
    let mut left_out: Vec<String> = Vec::new();
    if matches!(key, KeyPlan::Default) {
        left_out.extend(skipped.iter().cloned());
        left_out.extend(cache.as_ref().and_then(crate::privacy::bare_argument));
    }
    let params = arguments.params;
    let keyed = Keyed {
        key,
        vary,
        cache,
        params,
        left_out,
        has_receiver: arguments.receiver.is_some(),
    };
    match errs.finish() {
        Err(error) => Err(Box::new(Rejected { error, keyed })),
        Ok(()) => Ok(Plan {
            keyed,
            tags,
            timing,
            shape: shape.expect("a function without a shape has an error"),
        }),
    }
}

/// `async`, not variadic.
fn check_signature(sig: &Signature, errs: &mut Errors) {
    if sig.asyncness.is_none() {
        errs.at(
            sig.fn_token.span(),
            "#[cached] works on `async fn` only; make the function `async` (its callers then `.await` it)",
        );
    }
    if let Some(v) = &sig.variadic {
        errs.at(v.span(), "#[cached] functions cannot be variadic");
    }
}

/// A template's placeholders name arguments (or `self` of a method); a
/// default key needs every argument named and no receiver. A template with
/// a problem plans a default key: the fallback's helpers then take every
/// argument, the likeliest thing their callers pass.
fn check_key(
    template: Option<&LitStr>,
    vary: Option<&(Span, Vec<Ident>)>,
    func: &ItemFn,
    arguments: &Arguments,
    errs: &mut Errors,
) -> KeyPlan {
    let names = arguments.names();
    let Some(lit) = template else {
        if let Some((span, shown)) = arguments.receiver {
            let vary: Vec<String> = vary
                .iter()
                .flat_map(|(_, idents)| idents.iter().map(Ident::to_string))
                .collect();
            errs.at(span, receiver_needs_a_key(func, shown, &names, &vary));
        }
        for (span, _) in &arguments.unnamed {
            errs.at(
                *span,
                "without `key = \"...\"` every argument goes into the key, so each needs a name; \
                 bind it to a name or write a key template",
            );
        }
        return KeyPlan::Default;
    };
    let pieces = match template::parse(&lit.value()) {
        Ok(pieces) => pieces,
        Err(problems) => {
            for p in problems {
                errs.at(lit.span(), p);
            }
            return KeyPlan::Default;
        }
    };
    let sound = placeholders_name_arguments(&pieces, lit, "key", func, arguments, errs);
    if sound {
        KeyPlan::Template(pieces, lit.span())
    } else {
        KeyPlan::Default
    }
}

/// Every placeholder of a template (`what`: the key, a tag) names an
/// argument, or `self` of a method; each that does not is reported.
fn placeholders_name_arguments(
    pieces: &[Piece],
    lit: &LitStr,
    what: &str,
    func: &ItemFn,
    arguments: &Arguments,
    errs: &mut Errors,
) -> bool {
    let fn_name = &func.sig.ident;
    let names = arguments.names();
    let mut sound = true;
    for p in pieces {
        if let Piece::Placeholder { root, .. } = p {
            if root == "self" {
                if arguments.receiver.is_none() {
                    sound = false;
                    errs.at(
                        lit.span(),
                        format!(
                            "`{{self...}}` in the {what}, but `{fn_name}` has no `&self` receiver"
                        ),
                    );
                }
            } else if !names.contains(root) {
                sound = false;
                errs.at(
                    lit.span(),
                    format!(
                        "`{{{root}}}` in the {what} does not name an argument of `{fn_name}`; {}",
                        arguments.listing()
                    ),
                );
            }
        }
    }
    sound
}

/// `tags = ["author:{author_id}", "catalog"]`: each a template like the
/// key's, over the arguments (an argument in a tag does not count as in
/// the key: tags say which entries an invalidation drops, not which
/// values differ).
pub fn check_tags(
    tags: Option<(Span, Vec<LitStr>)>,
    func: &ItemFn,
    arguments: &Arguments,
    errs: &mut Errors,
) -> Vec<(Vec<Piece>, Span)> {
    let Some((span, tags)) = tags else {
        return Vec::new();
    };
    if tags.is_empty() {
        errs.at(
            span,
            "`tags` is empty: list a tag, `tags = [\"author:{author_id}\"]`, or leave it out",
        );
    }
    if tags.len() > 32 {
        errs.at(
            tags[32].span(),
            "an entry has at most 32 tags: tag a coarser group",
        );
    }
    let mut out = Vec::new();
    for lit in tags {
        match template::parse(&lit.value()) {
            Ok(pieces)
                if pieces
                    .iter()
                    .all(|p| matches!(p, Piece::Literal(t) if t.is_empty())) =>
            {
                errs.at(lit.span(), "a tag must not be empty");
            }
            Ok(pieces) => {
                if placeholders_name_arguments(&pieces, &lit, "tag", func, arguments, errs) {
                    out.push((pieces, lit.span()));
                }
            }
            Err(problems) => {
                for p in problems {
                    errs.at(lit.span(), p);
                }
            }
        }
    }
    out
}

/// A refresh (`what` is `stale` or `early`) runs the body in a spawned
/// task: it cannot borrow.
fn check_owned_for_refresh(sig: &Signature, what: &str, errs: &mut Errors) {
    for input in &sig.inputs {
        let borrowed = match input {
            FnArg::Receiver(r) => r.reference.is_some(),
            FnArg::Typed(pt) => matches!(&*pt.ty, Type::Reference(_)),
        };
        if borrowed {
            errs.at(
                input.span(),
                format!(
                    "`{what}` refreshes in a background task, so the function's arguments must \
                     be owned: take `String` instead of `&str` (methods on `&self` cannot use it)"
                ),
            );
        }
    }
}

/// The return type: something concrete to store; with `ids`, a `Result`
/// whose `Ok` type is named, and a hydrator taking one argument. `None`
/// only after an error.
fn check_shape(sig: &Signature, ids: Option<(Span, Expr)>, errs: &mut Errors) -> Option<Shape> {
    let ReturnType::Type(_, ty) = &sig.output else {
        errs.at(
            sig.ident.span(),
            format!(
                "`{}` returns nothing, so there is nothing to cache; return the value",
                sig.ident
            ),
        );
        return None;
    };
    if let Type::ImplTrait(it) = &**ty {
        errs.at(
            it.span(),
            "#[cached] needs a concrete return type to store, not `impl Trait`",
        );
    }
    let ok = result_ok_type(ty);
    let Some((name_span, expr)) = ids else {
        return Some(match ok {
            Some(ok) => Shape::Ok(ok),
            None => Shape::Value((**ty).clone()),
        });
    };
    let ok = match ok {
        None => {
            errs.at(
                ty.span(),
                "`ids` needs a fallible return, `Result<Vec<T>, E>` or `Result<Option<T>, E>` \
                 with `T: CacheId`: a hit fetches the objects by id, which can fail",
            );
            None
        }
        Some(None) => {
            errs.at(
                name_span,
                "`ids` needs the `Ok` type named in the signature: `Result<Vec<Book>, E>`",
            );
            None
        }
        Some(Some(ok)) => Some(ok),
    };
    let hydrator = match expr {
        Expr::Closure(c) if c.inputs.len() != 1 => {
            errs.at(
                c.span(),
                "the `ids` closure takes one argument, the stored ids (a `Vec` of `T::Id`): \
                 `ids = |ids| Book::by_ids(&pool, &ids)`",
            );
            None
        }
        Expr::Closure(c) => Some(Hydrator::Closure {
            pat: Box::new(c.inputs.into_iter().next().expect("one input")),
            body: c.body,
            is_async: c.asyncness.is_some(),
        }),
        other => Some(Hydrator::Call(other)),
    };
    Some(Shape::Ids {
        ty: ok?,
        hydrator: hydrator?,
    })
}

/// Why a method needs a key template, with one to start from: the fields
/// of `self` the body reads, then the arguments (but `vary`'s).
fn receiver_needs_a_key(func: &ItemFn, shown: &str, names: &[String], vary: &[String]) -> String {
    let fn_name = &func.sig.ident;
    let mut fields = SelfFields::default();
    fields.visit_block(&func.block);
    let mut template = fn_name.to_string();
    for field in &fields.0 {
        template.push_str(&format!(":{{self.{field}}}"));
    }
    if fields.0.is_empty() {
        template.push_str(":{self.id}");
    }
    for name in names.iter().filter(|n| !vary.contains(n)) {
        template.push_str(&format!(":{{{name}}}"));
    }
    let example = if fields.0.is_empty() {
        format!(", e.g. `key = \"{template}\"`")
    } else {
        let listed: Vec<String> = fields.0.iter().map(|f| format!("`self.{f}`")).collect();
        format!(
            " (the body reads {}): `key = \"{template}\"`",
            listed.join(", ")
        )
    };
    format!(
        "`{fn_name}` takes `{shown}`, which a key without a template leaves out, so every value it is \
         called on would share its entries; write a key naming the fields of `self` the result \
         depends on{example}"
    )
}

/// The fields read as `self.field` in a body, in order of first use.
#[derive(Default)]
struct SelfFields(Vec<String>);

impl<'ast> Visit<'ast> for SelfFields {
    fn visit_expr_field(&mut self, e: &'ast syn::ExprField) {
        if let Expr::Path(p) = &*e.base {
            if p.path.is_ident("self") {
                let field = match &e.member {
                    syn::Member::Named(ident) => ident.to_string(),
                    syn::Member::Unnamed(index) => index.index.to_string(),
                };
                if !self.0.contains(&field) {
                    self.0.push(field);
                }
            }
        }
        syn::visit::visit_expr_field(self, e);
    }
}

/// `Some(Some(T))` for `Result<T, ..>` (`Some(None)` when `T` cannot be
/// named), `None` for anything else.
fn result_ok_type(ty: &Type) -> Option<Option<Type>> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let ok = match &last.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    };
    Some(ok)
}

/// `cache = "feeds"`: a name `CACHE_URL_FEEDS` can spell.
fn check_cache_name(cache: Option<&Expr>, errs: &mut Errors) {
    let Some(Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(name),
        ..
    })) = cache
    else {
        return;
    };
    let value = name.value();
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        errs.at(
            name.span(),
            format!(
                "`cache = {value:?}`: a cache name is lower-case letters, digits and `_`, as \
                 `CACHE_URL_<NAME>` spells it in upper case (`cache = \"feeds\"` for CACHE_URL_FEEDS)"
            ),
        );
    }
}
