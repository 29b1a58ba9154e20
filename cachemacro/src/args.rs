//! The attribute's arguments, parsed into a typed struct.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{bracketed, Expr, Ident, LitInt, LitStr, Token};

/// Attribute names, in one place.
pub const KEY: &str = "key";
pub const TTL: &str = "ttl";
pub const VARY: &str = "vary";
pub const CACHE: &str = "cache";
pub const VERSION: &str = "version";
pub const STALE: &str = "stale";
pub const EARLY: &str = "early";
pub const IDS: &str = "ids";
pub const SKIP: &str = "skip";
pub const UNLESS: &str = "unless";
pub const STALE_IF_ERROR: &str = "stale_if_error";
pub const TAGS: &str = "tags";
pub const ALL: &[&str] = &[
    KEY,
    TTL,
    VARY,
    SKIP,
    CACHE,
    VERSION,
    STALE,
    EARLY,
    IDS,
    UNLESS,
    STALE_IF_ERROR,
    TAGS,
];

/// `ttl = 3600` or `ttl = "10m"` (checked at compile time), any other
/// expression of type `Duration` or integer seconds (evaluated when the
/// value is computed), or, for `ttl` only, `|value| ..` (the TTL of that
/// value).
pub enum TtlArg {
    Seconds(LitInt),
    Text(LitStr),
    Expr(Box<Expr>),
    OfValue(Box<syn::ExprClosure>),
}

impl TtlArg {
    pub fn span(&self) -> Span {
        match self {
            TtlArg::Seconds(l) => l.span(),
            TtlArg::Text(l) => l.span(),
            TtlArg::Expr(e) => e.span(),
            TtlArg::OfValue(c) => c.span(),
        }
    }

    fn of(expr: Expr) -> TtlArg {
        match expr {
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => TtlArg::Seconds(i),
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => TtlArg::Text(s),
            Expr::Closure(c) => TtlArg::OfValue(Box::new(c)),
            other => TtlArg::Expr(Box::new(other)),
        }
    }
}

/// `early = 1.0` (checked at compile time) or a constant expression
/// (`early = XFETCH_BETA`): XFetch's beta sits in the function's static
/// policy, read on every hit.
pub enum EarlyArg {
    /// A number literal, with its span and digits.
    Literal(Span, String),
    /// A constant expression of a number type.
    Const(Box<Expr>),
}

/// Everything `#[cached(...)]` can say. Values are syntactically checked
/// here; their meaning against the function is checked in `valid`.
#[derive(Default)]
pub struct Args {
    pub key: Option<LitStr>,
    pub ttl: Option<TtlArg>,
    pub vary: Option<(Span, Vec<Ident>)>,
    /// `skip = [pool, self]`: arguments that do not change the result.
    pub skip: Option<(Span, Vec<Ident>)>,
    /// `unless = |value| ..`: values not to store.
    pub unless: Option<(Span, syn::ExprClosure)>,
    /// `stale_if_error = "1h"`: serve the expired value when the body fails.
    pub stale_if_error: Option<TtlArg>,
    /// `tags = ["author:{author_id}", "catalog"]`, with the span of the
    /// name `tags`.
    pub tags: Option<(Span, Vec<LitStr>)>,
    pub cache: Option<Expr>,
    pub version: Option<LitInt>,
    pub stale: Option<TtlArg>,
    pub early: Option<EarlyArg>,
    /// `ids = |ids| Book::by_ids(&pool, &ids)`: the hydrator, with the
    /// span of the name `ids`.
    pub ids: Option<(Span, Expr)>,
    /// Problems that do not stop parsing (unknown or duplicate names, wrong
    /// value kinds), reported together with the validation errors.
    pub errors: Vec<syn::Error>,
}

/// Stores a value once; a second one is an error at its name.
fn set_once<T>(slot: &mut Option<T>, value: T, name: &Ident, errors: &mut Vec<syn::Error>) {
    if slot.is_some() {
        errors.push(syn::Error::new(
            name.span(),
            format!("duplicate `{name}`: give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let name: Ident = input.call(syn::ext::IdentExt::parse_any)?;
            let known = ALL.contains(&name.to_string().as_str());
            if !input.peek(Token![=]) {
                let msg = if known {
                    format!("`{name}` needs a value: {}", example(&name.to_string()))
                } else {
                    unknown(&name)
                };
                args.errors.push(syn::Error::new(name.span(), msg));
                if !input.is_empty() && !input.peek(Token![,]) {
                    return Err(input.error("expected `,` or `= value`"));
                }
            } else {
                input.parse::<Token![=]>()?;
                match name.to_string().as_str() {
                    KEY => match input.parse::<Expr>()? {
                        Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(s),
                            ..
                        }) => set_once(&mut args.key, s, &name, &mut args.errors),
                        other => args.errors.push(syn::Error::new(
                            other.span(),
                            "`key` must be a string literal: `key = \"author:{author_id}:top_books\"`",
                        )),
                    },
                    TTL => {
                        let arg = TtlArg::of(input.parse::<Expr>()?);
                        set_once(&mut args.ttl, arg, &name, &mut args.errors);
                    }
                    SKIP => {
                        let span = name.span();
                        let idents = if input.peek(syn::token::Bracket) {
                            let content;
                            bracketed!(content in input);
                            content
                                .parse_terminated(Ident::parse_any, Token![,])?
                                .into_iter()
                                .collect()
                        } else {
                            vec![Ident::parse_any(input).map_err(|e| {
                                syn::Error::new(
                                    e.span(),
                                    "`skip` takes an argument name or a list: `skip = pool` or `skip = [pool, self]`",
                                )
                            })?]
                        };
                        set_once(&mut args.skip, (span, idents), &name, &mut args.errors);
                    }
                    VARY => {
                        let span = name.span();
                        let idents = if input.peek(syn::token::Bracket) {
                            let content;
                            bracketed!(content in input);
                            content
                                .parse_terminated(Ident::parse, Token![,])?
                                .into_iter()
                                .collect()
                        } else {
                            vec![input.parse::<Ident>().map_err(|e| {
                                syn::Error::new(
                                    e.span(),
                                    "`vary` takes an argument name or a list: `vary = user_id` or `vary = [user_id, locale]`",
                                )
                            })?]
                        };
                        set_once(&mut args.vary, (span, idents), &name, &mut args.errors);
                    }
                    CACHE => {
                        let expr: Expr = input.parse()?;
                        set_once(&mut args.cache, expr, &name, &mut args.errors);
                    }
                    IDS => {
                        let expr: Expr = input.parse()?;
                        set_once(&mut args.ids, (name.span(), expr), &name, &mut args.errors);
                    }
                    STALE => {
                        let arg = TtlArg::of(input.parse::<Expr>()?);
                        set_once(&mut args.stale, arg, &name, &mut args.errors);
                    }
                    TAGS => {
                        let span = name.span();
                        let tags = match input.parse::<Expr>()? {
                            Expr::Array(array) => array.elems.into_iter().map(tag_literal).collect(),
                            other => vec![tag_literal(other)],
                        };
                        let (tags, bad): (Vec<_>, Vec<_>) = tags.into_iter().partition(Result::is_ok);
                        args.errors.extend(bad.into_iter().filter_map(Result::err));
                        let tags = tags.into_iter().filter_map(Result::ok).collect();
                        set_once(&mut args.tags, (span, tags), &name, &mut args.errors);
                    }
                    STALE_IF_ERROR => {
                        let arg = TtlArg::of(input.parse::<Expr>()?);
                        set_once(&mut args.stale_if_error, arg, &name, &mut args.errors);
                    }
                    UNLESS => match input.parse::<Expr>()? {
                        Expr::Closure(c) => {
                            set_once(&mut args.unless, (name.span(), c), &name, &mut args.errors)
                        }
                        other => args.errors.push(syn::Error::new(
                            other.span(),
                            "`unless` takes a closure over the computed value: `unless = |feed| feed.items.is_empty()`",
                        )),
                    },
                    EARLY => {
                        let arg = match input.parse::<Expr>()? {
                            Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Float(f),
                                ..
                            }) => EarlyArg::Literal(f.span(), f.base10_digits().to_owned()),
                            Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Int(i),
                                ..
                            }) => EarlyArg::Literal(i.span(), i.base10_digits().to_owned()),
                            other => EarlyArg::Const(Box::new(other)),
                        };
                        set_once(&mut args.early, arg, &name, &mut args.errors);
                    }
                    VERSION => match input.parse::<Expr>()? {
                        Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Int(i),
                            ..
                        }) => set_once(&mut args.version, i, &name, &mut args.errors),
                        other => args.errors.push(syn::Error::new(
                            other.span(),
                            "`version` must be an integer: `version = 2`",
                        )),
                    },
                    _ => {
                        let _skipped: Expr = input.parse()?;
                        args.errors.push(syn::Error::new(name.span(), unknown(&name)));
                    }
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

/// One tag of `tags = [..]`: a string literal (a template).
fn tag_literal(expr: Expr) -> Result<LitStr, syn::Error> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Ok(s),
        other => Err(syn::Error::new(
            other.span(),
            "a tag is a string literal, a template like the key's: \
             `tags = [\"author:{author_id}\", \"catalog\"]`",
        )),
    }
}

fn unknown(name: &Ident) -> String {
    format!(
        "unknown #[cached] option `{name}`; expected one of: {}",
        ALL.join(", ")
    )
}

fn example(name: &str) -> &'static str {
    match name {
        KEY => "`key = \"author:{author_id}:top_books\"`",
        TTL => "`ttl = 3600`, `ttl = \"1h\"`, `ttl = FEED_TTL` or `ttl = |token| token.expires_in`",
        VARY => "`vary = user_id` or `vary = [user_id, locale]`",
        SKIP => "`skip = pool` or `skip = [pool, self]`",
        CACHE => "`cache = MY_CACHE` (anything `&(...)` turns into `&Cache`)",
        STALE => "`stale = 600` or `stale = \"10m\"`",
        EARLY => "`early = 1.0` or `early = XFETCH_BETA` (a constant)",
        IDS => "`ids = |ids| Book::by_ids(&pool, &ids)`",
        UNLESS => "`unless = |feed| feed.items.is_empty()`",
        STALE_IF_ERROR => "`stale_if_error = \"1h\"` or `stale_if_error = 3600`",
        TAGS => "`tags = [\"author:{author_id}\", \"catalog\"]`",
        _ => "`version = 2`",
    }
}
