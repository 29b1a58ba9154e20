//! The one error collector every rule writes into, so that every problem
//! with an attribute is reported at once, each at its span (serde's
//! `Ctxt`, thiserror's `valid.rs`).

use proc_macro2::Span;

/// Every rule pushes here; [`Errors::finish`] turns the lot into one
/// `syn::Error` that renders one `compile_error!` each.
#[derive(Default)]
pub struct Errors(Vec<syn::Error>);

impl Errors {
    /// Starts from what parsing already found.
    pub fn from_parse(errors: Vec<syn::Error>) -> Errors {
        Errors(errors)
    }

    pub fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.0.push(syn::Error::new(span, msg));
    }

    pub fn finish(self) -> Result<(), syn::Error> {
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
