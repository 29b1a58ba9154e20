//! `ttl`, `stale`, `early`, `version` and `unless`: the function's static
//! policy, checked at compile time where the values are literals, and
//! what each computation decides for itself where they are expressions
//! (`ttl = FEED_TTL`, `ttl = settings::feed_ttl()`, evaluated when the
//! value is computed, where the arguments are in scope) or closures over
//! the value (`ttl = |token| token.expires_in`, `unless = |feed|
//! feed.items.is_empty()`).

use std::time::Duration;

use proc_macro2::Span;
use syn::{Expr, ExprClosure, LitInt};

use crate::args::{self, EarlyArg, TtlArg};
use crate::errors::Errors;

/// The function's policy, checked.
pub struct Timing {
    /// Literal durations, in the static policy.
    pub ttl: Option<Duration>,
    pub stale: Option<Duration>,
    pub early: Option<f64>,
    /// `early = CONST_EXPR`: checked when the constant is evaluated.
    pub early_const: Option<Expr>,
    pub version: u32,
    pub stale_if_error: Option<Duration>,
    /// What each computation decides.
    pub decide: Decide,
}

impl Timing {
    /// `stale` / `early` refresh in a spawned task.
    pub fn refreshes(&self) -> bool {
        self.stale.is_some()
            || self.decide.stale.is_some()
            || self.early.is_some()
            || self.early_const.is_some()
    }
}

/// The parts of the policy decided per computation.
#[derive(Default)]
pub struct Decide {
    pub ttl: Option<DecidedTtl>,
    pub stale: Option<Expr>,
    pub unless: Option<ExprClosure>,
}

impl Decide {
    /// Whether anything is decided per computation.
    pub fn any(&self) -> bool {
        self.ttl.is_some() || self.stale.is_some() || self.unless.is_some()
    }
}

/// A TTL decided when the value is computed.
pub enum DecidedTtl {
    /// `ttl = EXPR`.
    Expr(Expr),
    /// `ttl = |value| ..`.
    OfValue(ExprClosure),
}

/// Checks the timing options; `ids` says the function stores ids, where
/// nothing is decided per computation yet.
#[allow(clippy::too_many_arguments)]
pub fn check(
    ttl: Option<TtlArg>,
    stale: Option<TtlArg>,
    early: Option<EarlyArg>,
    version: Option<&LitInt>,
    unless: Option<(Span, ExprClosure)>,
    stale_if_error: Option<TtlArg>,
    fallible: bool,
    ids: bool,
    errs: &mut Errors,
) -> Timing {
    let kept = match &stale_if_error {
        Some(TtlArg::Expr(_) | TtlArg::OfValue(_)) => {
            errs.at(
                stale_if_error.as_ref().map_or(Span::call_site(), TtlArg::span),
                "`stale_if_error` takes a literal duration: `stale_if_error = \"1h\"` or `stale_if_error = 3600`",
            );
            None
        }
        other => check_duration(args::STALE_IF_ERROR, other.as_ref(), errs),
    };
    if let (Some(arg), false) = (&stale_if_error, fallible) {
        errs.at(
            arg.span(),
            "`stale_if_error` serves the expired value when the body returns `Err`: the \
             function must return a `Result` (a value that cannot fail is never replaced)",
        );
    }
    let static_ttl = check_duration(args::TTL, ttl.as_ref(), errs);
    let static_stale = check_duration(args::STALE, stale.as_ref(), errs);
    let mut decide = Decide::default();
    // Where the first per-computation option is, for the `ids` error.
    let decided_at = [&ttl, &stale]
        .into_iter()
        .flatten()
        .find(|a| matches!(a, TtlArg::Expr(_) | TtlArg::OfValue(_)))
        .map(TtlArg::span)
        .or(unless.as_ref().map(|(span, _)| *span));
    match ttl {
        Some(TtlArg::Expr(e)) => decide.ttl = Some(DecidedTtl::Expr(*e)),
        Some(TtlArg::OfValue(c))
            if one_input(&c, args::TTL, "`ttl = |token| token.expires_in`", errs) =>
        {
            decide.ttl = Some(DecidedTtl::OfValue(*c));
        }
        _ => {}
    }
    match stale {
        Some(TtlArg::Expr(e)) => decide.stale = Some(*e),
        Some(TtlArg::OfValue(c)) => errs.at(
            c.or1_token.span,
            "`stale` takes a duration (`stale = 600`, `stale = \"10m\"`, `stale = STALE_FOR`), \
             not a closure over the value",
        ),
        _ => {}
    }
    if let Some((_, c)) = unless {
        if one_input(
            &c,
            args::UNLESS,
            "`unless = |feed| feed.items.is_empty()`",
            errs,
        ) {
            decide.unless = Some(c);
        }
    }
    if let (true, Some(at)) = (ids, decided_at) {
        errs.at(
            at,
            "with `ids`, `ttl` and `stale` must be literals (`ttl = 3600`, `ttl = \"1h\"`) and \
             `unless` is not available: the stored value is the ids, not the objects",
        );
    }
    let (early, early_const) = match early {
        Some(EarlyArg::Literal(span, digits)) => (check_early(span, &digits, errs), None),
        Some(EarlyArg::Const(e)) => (None, Some(*e)),
        None => (None, None),
    };
    Timing {
        ttl: static_ttl,
        stale: static_stale,
        early,
        early_const,
        version: check_version(version, errs),
        stale_if_error: kept,
        decide,
    }
}

/// A closure over the value takes one argument.
fn one_input(c: &ExprClosure, name: &str, example: &str, errs: &mut Errors) -> bool {
    let ok = c.inputs.len() == 1 && c.asyncness.is_none();
    if !ok {
        errs.at(
            c.or1_token.span,
            format!("`{name} = |value| ..` takes one argument, the computed value, by reference: {example}"),
        );
    }
    ok
}

/// `ttl` / `stale`: a positive duration in the grammar the runtime's URLs
/// use (`cacheduration`).
fn check_duration(name: &str, arg: Option<&TtlArg>, errs: &mut Errors) -> Option<Duration> {
    let arg = arg?;
    if matches!(arg, TtlArg::Expr(_) | TtlArg::OfValue(_)) {
        return None;
    }
    match duration(name, arg) {
        Ok(d) => Some(d),
        Err(msg) => {
            errs.at(arg.span(), msg);
            None
        }
    }
}

/// The duration of `name = <arg>`, or what to write instead. `ttl = 300`
/// reads as `ttl = "300"`.
fn duration(name: &str, arg: &TtlArg) -> Result<Duration, String> {
    let d = match arg {
        TtlArg::Seconds(lit) => cacheduration::parse(lit.base10_digits()).ok_or_else(|| {
            format!("`{name}` must be a whole number of seconds, e.g. `{name} = 3600`")
        })?,
        TtlArg::Text(lit) => cacheduration::parse(&lit.value()).ok_or_else(|| {
            format!(
                "`{}` is not a duration; write seconds (`{name} = 3600`) or a string like \"90s\", \"10m\", \"1h\", \"1h30m\", \"500ms\"",
                lit.value()
            )
        })?,
        TtlArg::Expr(_) | TtlArg::OfValue(_) => unreachable!("literals only"),
    };
    if d.is_zero() {
        return Err(format!(
            "`{name}` must be greater than zero; to switch caching off use `Cache::disabled()`"
        ));
    }
    Ok(d)
}

/// `early`: XFetch's beta, a positive number.
fn check_early(span: Span, digits: &str, errs: &mut Errors) -> Option<f64> {
    match digits.parse::<f64>() {
        Ok(beta) if beta.is_finite() && beta > 0.0 => Some(beta),
        _ => {
            errs.at(
                span,
                "`early` must be a positive number (XFetch's beta): `early = 1.0`",
            );
            None
        }
    }
}

/// `version`: fits the envelope's u32.
fn check_version(version: Option<&LitInt>, errs: &mut Errors) -> u32 {
    let Some(lit) = version else { return 0 };
    lit.base10_parse::<u32>().unwrap_or_else(|_| {
        errs.at(lit.span(), "`version` must fit in a u32: `version = 2`");
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::LitStr;

    /// The macro reads `ttl = "..."` with the runtime's grammar: every
    /// example of `cacheduration` gives the listed duration (or an error),
    /// and bare seconds read like their text.
    #[test]
    fn ttl_reads_the_shared_grammar() {
        for &(text, expected) in cacheduration::EXAMPLES {
            let lit = TtlArg::Text(LitStr::new(text, Span::call_site()));
            let read = duration(args::TTL, &lit).ok();
            let expected = expected.filter(|d| !d.is_zero());
            assert_eq!(read, expected, "ttl = {text:?}");
        }
        let seconds = TtlArg::Seconds(LitInt::new("300", Span::call_site()));
        assert_eq!(duration(args::TTL, &seconds), Ok(Duration::from_secs(300)));
        let zero = TtlArg::Seconds(LitInt::new("0", Span::call_site()));
        assert!(duration(args::TTL, &zero)
            .unwrap_err()
            .contains("greater than zero"));
    }
}
