//! The privacy guard. An argument that is neither in the key template nor
//! in `vary` shares one entry between all of its values: forgetting
//! `user_id` serves one user's result to every other. With a template,
//! every argument (and a `&self` receiver) must be in the key, in `vary`,
//! or in `skip = [...]`, which says it does not change the result (a pool,
//! a client). A default key (no `key =`) has every argument already; there
//! `skip` leaves arguments out of it.

use proc_macro2::Span;
use syn::{Expr, Ident};

use crate::arguments::Arguments;
use crate::errors::Errors;

/// Each `vary` name is an argument, listed once.
pub fn check_vary(
    vary: Option<(Span, Vec<Ident>)>,
    arguments: &Arguments,
    fn_name: &Ident,
    errs: &mut Errors,
) -> Vec<Ident> {
    let names = arguments.names();
    let mut checked: Vec<Ident> = Vec::new();
    for ident in vary.map(|(_, idents)| idents).unwrap_or_default() {
        let s = ident.to_string();
        if checked.contains(&ident) {
            errs.at(ident.span(), format!("`{s}` is listed twice in `vary`"));
        } else if !names.contains(&s) {
            errs.at(
                ident.span(),
                format!(
                    "`vary = {s}` does not name an argument of `{fn_name}`; {}",
                    arguments.listing()
                ),
            );
        }
        checked.push(ident);
    }
    checked
}

/// Checks `skip` (each name an argument or `self`, listed once, in neither
/// the key nor `vary`) and, with a template whose placeholders' roots are
/// `roots`, that no argument is left out of all three. An argument that is
/// the `cache = ...` expression itself (`cache = cache`) is the handle the
/// result is stored in, not an input of the result: it needs no `skip`.
/// Returns the names skipped.
pub fn check_skip(
    skip: Option<(Span, Vec<Ident>)>,
    roots: Option<&[String]>,
    vary: &[Ident],
    cache: Option<&Expr>,
    arguments: &Arguments,
    fn_name: &Ident,
    errs: &mut Errors,
) -> Vec<String> {
    let names = arguments.names();
    let in_vary = |name: &str| vary.iter().any(|v| v == name);
    let in_key = |name: &str| roots.is_some_and(|roots| roots.iter().any(|r| r == name));
    let mut skipped: Vec<String> = Vec::new();
    for ident in skip.map(|(_, idents)| idents).unwrap_or_default() {
        let s = ident.to_string();
        if skipped.contains(&s) {
            errs.at(ident.span(), format!("`{s}` is listed twice in `skip`"));
        } else if s == "self" && arguments.receiver.is_none() {
            errs.at(
                ident.span(),
                format!("`skip = [self]`, but `{fn_name}` has no `&self` receiver"),
            );
        } else if s != "self" && !names.contains(&s) {
            errs.at(
                ident.span(),
                format!(
                    "`skip = [{s}]` does not name an argument of `{fn_name}`; {}",
                    arguments.listing()
                ),
            );
        } else if in_key(&s) || in_vary(&s) {
            let place = if in_key(&s) { "the key" } else { "`vary`" };
            errs.at(
                ident.span(),
                format!(
                    "`{s}` is in {place} and in `skip`: `skip` is for arguments that do not \
                     change the result; remove it from `skip`"
                ),
            );
        }
        skipped.push(s);
    }
    let Some(roots) = roots else {
        return skipped;
    };
    let handle = cache.and_then(bare_argument);
    let accounted = |name: &str| {
        in_key(name)
            || in_vary(name)
            || skipped.iter().any(|s| s == name)
            || handle.as_ref().is_some_and(|h| h == name)
    };
    for param in &arguments.params {
        let name = param.ident.to_string();
        if !accounted(&name) {
            errs.at(
                param.ident.span(),
                format!(
                    "`{name}` is neither in the key of `{fn_name}` nor in `vary`, so every value \
                     of `{name}` would share one cached entry (one caller's result served to \
                     another); put it in the key (`{{{name}}}`) or in `vary = [{name}]`, or, if \
                     it does not change the result (a pool, a client), list it in \
                     `skip = [{name}]`"
                ),
            );
        }
    }
    if let Some((span, shown)) = arguments.receiver {
        if !roots.iter().any(|r| r == "self") && !skipped.iter().any(|s| s == "self") {
            errs.at(
                span,
                format!(
                    "`{shown}` is not in the key of `{fn_name}`, so every receiver would share \
                     one cached entry; put the fields that change the result in the key \
                     (`{{self.id}}`), or, if none does, write `skip = [self]`"
                ),
            );
        }
    }
    for (span, wild) in &arguments.unnamed {
        if !wild {
            errs.at(
                *span,
                "an argument bound by a pattern cannot be named in the key, so its values \
                 would share one cached entry; bind it to a name and put that in the key or \
                 in `vary`",
            );
        }
    }
    skipped
}

/// The argument a `cache = ...` expression is, if it is one alone (`cache`,
/// `&cache`, `*cache`, `(cache)`), not a field or a call on it.
pub fn bare_argument(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(Ident::to_string),
        Expr::Reference(r) => bare_argument(&r.expr),
        Expr::Paren(p) => bare_argument(&p.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => bare_argument(&u.expr),
        _ => None,
    }
}
