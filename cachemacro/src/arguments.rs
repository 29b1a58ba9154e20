//! The function's arguments as the key sees them: named ones (which a key
//! can render), pattern-bound ones (which it cannot), and the receiver.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, Pat, Signature, Type};

use crate::errors::Errors;

/// A named argument of the function.
pub struct Param {
    pub ident: Ident,
    pub ty: Type,
}

/// The function's arguments as the key sees them.
pub struct Arguments {
    pub params: Vec<Param>,
    /// Arguments bound by a pattern (`(a, b): (u32, u32)`): no name; and
    /// whether the pattern is `_` (the function cannot see the value).
    pub unnamed: Vec<(Span, bool)>,
    /// `self`'s span and how it is taken (`&self`).
    pub receiver: Option<(Span, &'static str)>,
}

impl Arguments {
    pub fn names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.ident.to_string()).collect()
    }

    /// "its arguments are: a, b", for messages about a name that is none.
    pub fn listing(&self) -> String {
        let names = self.names();
        if names.is_empty() {
            "it has no named arguments".to_owned()
        } else {
            format!("its arguments are: {}", names.join(", "))
        }
    }
}

/// Reads the arguments; a receiver must be `&self`.
pub fn read_arguments(sig: &Signature, errs: &mut Errors) -> Arguments {
    let mut arguments = Arguments {
        params: Vec::new(),
        unnamed: Vec::new(),
        receiver: None,
    };
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                let shown = match (&r.reference, &r.mutability) {
                    (Some(_), Some(_)) => "&mut self",
                    (Some(_), None) => "&self",
                    (None, _) => "self",
                };
                arguments.receiver = Some((r.self_token.span, shown));
                if r.reference.is_none() || r.colon_token.is_some() {
                    errs.at(
                        r.span(),
                        "#[cached] methods must take `&self`: the cached call cannot consume `self`",
                    );
                }
            }
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() => arguments.params.push(Param {
                    ident: pi.ident.clone(),
                    ty: (*pt.ty).clone(),
                }),
                other => arguments
                    .unnamed
                    .push((other.span(), matches!(other, Pat::Wild(_)))),
            },
        }
    }
    arguments
}
