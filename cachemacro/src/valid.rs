//! Every semantic rule of `#[cached]`, checked in one pass that reports all
//! problems at once, each at its span.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::{Args, TtlArg};
use crate::template::{self, Piece};

/// A named argument of the function.
pub struct Param {
    pub ident: Ident,
    pub ty: Type,
}

pub enum KeyPlan {
    /// A `key = "..."` template, with its literal's span.
    Template(Vec<Piece>, Span),
    /// No template: the function's path (with impl type, generic arguments
    /// and enclosing functions, read at run time from a closure's type
    /// name) and every argument. Not for methods: it cannot see `self`.
    Default,
}

/// What `expand` needs, all checked.
pub struct Plan {
    pub key: KeyPlan,
    pub ttl_ms: Option<u64>,
    pub version: u32,
    pub stale_ms: Option<u64>,
    pub early: Option<f64>,
    pub vary: Vec<Ident>,
    pub cache: Option<syn::Expr>,
    /// Returns `Result<T, E>`: only `Ok` is cached.
    pub fallible: bool,
    /// The stored type (`T` of `Result<T, E>`, or the return type).
    pub value_ty: Option<Type>,
    /// `ids = ...`: the hydrator; the stored value is the ids of `value_ty`.
    pub ids: Option<Hydrator>,
    pub params: Vec<Param>,
    pub has_receiver: bool,
}

/// How the stored ids become objects again on a hit.
pub enum Hydrator {
    /// `|ids| expr` (or `async |ids| expr`): inlined, so `expr` may borrow
    /// the function's arguments and the ids.
    Closure {
        pat: Box<Pat>,
        body: Box<syn::Expr>,
        is_async: bool,
    },
    /// Anything else: called with the ids.
    Call(syn::Expr),
}

/// Collects errors; combines them into one `syn::Error` at the end.
#[derive(Default)]
struct Errors(Vec<syn::Error>);

impl Errors {
    fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.0.push(syn::Error::new(span, msg));
    }

    fn finish(self) -> Result<(), syn::Error> {
        let mut it = self.0.into_iter();
        match it.next() {
            None => Ok(()),
            Some(mut first) => {
                first.extend(it);
                Err(first)
            }
        }
    }
}

pub fn check(args: Args, func: &ItemFn) -> Result<Plan, syn::Error> {
    let mut errs = Errors(args.errors);
    let sig = &func.sig;
    let fn_name = &sig.ident;

    if sig.asyncness.is_none() {
        errs.at(
            sig.fn_token.span(),
            "#[cached] works on `async fn` only; make the function `async` (its callers then `.await` it)",
        );
    }
    if let Some(v) = &sig.variadic {
        errs.at(v.span(), "#[cached] functions cannot be variadic");
    }

    // Arguments.
    let mut params = Vec::new();
    let mut unnamed = Vec::new();
    let mut receiver = None;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                let shown = match (&r.reference, &r.mutability) {
                    (Some(_), Some(_)) => "&mut self",
                    (Some(_), None) => "&self",
                    (None, _) => "self",
                };
                receiver = Some((r.self_token.span, shown));
                if r.reference.is_none() || r.colon_token.is_some() {
                    errs.at(
                        r.span(),
                        "#[cached] methods must take `&self`: the cached call cannot consume `self`",
                    );
                }
            }
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() => params.push(Param {
                    ident: pi.ident.clone(),
                    ty: (*pt.ty).clone(),
                }),
                other => unnamed.push(other.span()),
            },
        }
    }
    let has_receiver = receiver.is_some();
    let names: Vec<String> = params.iter().map(|p| p.ident.to_string()).collect();
    let listing = if names.is_empty() {
        "it has no named arguments".to_owned()
    } else {
        format!("its arguments are: {}", names.join(", "))
    };

    // Key.
    let key = match &args.key {
        Some(lit) => match template::parse(&lit.value()) {
            Ok(pieces) => {
                for p in &pieces {
                    if let Piece::Placeholder { root, .. } = p {
                        if root == "self" {
                            if !has_receiver {
                                errs.at(lit.span(), format!(
                                    "`{{self...}}` in the key, but `{fn_name}` has no `&self` receiver"
                                ));
                            }
                        } else if !names.contains(root) {
                            errs.at(lit.span(), format!(
                                "`{{{root}}}` in the key does not name an argument of `{fn_name}`; {listing}"
                            ));
                        }
                    }
                }
                KeyPlan::Template(pieces, lit.span())
            }
            Err(problems) => {
                for p in problems {
                    errs.at(lit.span(), p);
                }
                KeyPlan::Default
            }
        },
        None => {
            if let Some((span, shown)) = receiver {
                let vary: Vec<String> = args
                    .vary
                    .iter()
                    .flat_map(|(_, idents)| idents.iter().map(Ident::to_string))
                    .collect();
                errs.at(span, receiver_needs_a_key(func, shown, &names, &vary));
            }
            for span in &unnamed {
                errs.at(
                    *span,
                    "without `key = \"...\"` every argument goes into the key, so each needs a name; \
                     bind it to a name or write a key template",
                );
            }
            KeyPlan::Default
        }
    };

    // Vary.
    let mut vary = Vec::new();
    if let Some((_, idents)) = args.vary {
        for ident in idents {
            let s = ident.to_string();
            if vary.contains(&ident) {
                errs.at(ident.span(), format!("`{s}` is listed twice in `vary`"));
            } else if !names.contains(&s) {
                errs.at(
                    ident.span(),
                    format!("`vary = {s}` does not name an argument of `{fn_name}`; {listing}"),
                );
            }
            vary.push(ident);
        }
    }

    // TTL.
    let ttl_ms = match &args.ttl {
        None => None,
        Some(ttl) => match ttl_millis(ttl) {
            Ok(ms) => Some(ms),
            Err(msg) => {
                errs.at(ttl.span(), msg);
                None
            }
        },
    };

    let stale_ms = match &args.stale {
        None => None,
        Some(stale) => match ttl_millis(stale) {
            Ok(ms) => Some(ms),
            Err(msg) => {
                errs.at(
                    stale.span(),
                    msg.replace("`ttl`", "`stale`")
                        .replace("ttl = ", "stale = "),
                );
                None
            }
        },
    };

    let early = match &args.early {
        None => None,
        Some((span, digits)) => match digits.parse::<f64>() {
            Ok(beta) if beta.is_finite() && beta > 0.0 => Some(beta),
            _ => {
                errs.at(
                    *span,
                    "`early` must be a positive number (XFetch's beta): `early = 1.0`",
                );
                None
            }
        },
    };

    // A refresh runs the body in a spawned task: it cannot borrow.
    let refreshing = match (&args.stale, &args.early) {
        (Some(_), _) => Some("stale"),
        (None, Some(_)) => Some("early"),
        (None, None) => None,
    };
    if let Some(what) = refreshing {
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

    let version = match &args.version {
        None => 0,
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(v) => v,
            Err(_) => {
                errs.at(lit.span(), "`version` must fit in a u32: `version = 2`");
                0
            }
        },
    };

    // Return type.
    let (fallible, value_ty) = match &sig.output {
        ReturnType::Default => {
            errs.at(
                sig.ident.span(),
                format!(
                    "`{fn_name}` returns nothing, so there is nothing to cache; return the value"
                ),
            );
            (false, None)
        }
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(it) = &**ty {
                errs.at(
                    it.span(),
                    "#[cached] needs a concrete return type to store, not `impl Trait`",
                );
            }
            match result_ok_type(ty) {
                Some(ok) => (true, ok),
                None => (false, Some((**ty).clone())),
            }
        }
    };

    // Ids.
    let ids = match args.ids {
        None => None,
        Some((span, expr)) => {
            if !fallible {
                let at = match &sig.output {
                    ReturnType::Type(_, ty) => ty.span(),
                    ReturnType::Default => span,
                };
                errs.at(
                    at,
                    "`ids` needs a fallible return, `Result<Vec<T>, E>` or `Result<Option<T>, E>` \
                     with `T: CacheId`: a hit fetches the objects by id, which can fail",
                );
            }
            if fallible && value_ty.is_none() {
                errs.at(
                    span,
                    "`ids` needs the `Ok` type named in the signature: `Result<Vec<Book>, E>`",
                );
            }
            match expr {
                syn::Expr::Closure(c) if c.inputs.len() != 1 => {
                    errs.at(
                        c.span(),
                        "the `ids` closure takes one argument, the stored ids (a `Vec` of `T::Id`): \
                         `ids = |ids| Book::by_ids(&pool, &ids)`",
                    );
                    None
                }
                syn::Expr::Closure(c) => Some(Hydrator::Closure {
                    pat: Box::new(c.inputs.into_iter().next().expect("one input")),
                    body: c.body,
                    is_async: c.asyncness.is_some(),
                }),
                other => Some(Hydrator::Call(other)),
            }
        }
    };

    errs.finish()?;
    Ok(Plan {
        key,
        ttl_ms,
        version,
        stale_ms,
        early,
        vary,
        cache: args.cache,
        fallible,
        value_ty,
        ids,
        params,
        has_receiver,
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
        if let syn::Expr::Path(p) = &*e.base {
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

fn ttl_millis(ttl: &TtlArg) -> Result<u64, String> {
    let ms = match ttl {
        TtlArg::Seconds(lit) => lit
            .base10_parse::<u64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| "`ttl` must be a whole number of seconds, e.g. `ttl = 3600`".to_owned())?,
        TtlArg::Text(lit) => cacheduration::parse(&lit.value())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
            format!(
                "`{}` is not a duration; write seconds (`ttl = 3600`) or a string like \"90s\", \"10m\", \"1h\", \"1h30m\", \"500ms\"",
                lit.value()
            )
        })?,
    };
    if ms == 0 {
        return Err(
            "`ttl` must be greater than zero; to switch caching off use `Cache::disabled()`".into(),
        );
    }
    Ok(ms)
}
