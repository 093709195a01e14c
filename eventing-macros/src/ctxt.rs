//! The error collector every stage reports to, after serde_derive's `internals::Ctxt`.

use std::cell::RefCell;
use std::fmt::Display;
use std::thread;

use quote::ToTokens;
use syn::Error;

/// Collects the errors of all stages so that they are reported at once.
///
/// It must be consumed with [`Ctxt::check`]: dropping it unchecked is a bug in this
/// crate (an error could be lost) and panics. References can be shared, as the
/// errors sit behind a `RefCell`.
pub(crate) struct Ctxt {
    /// `None` once checked, so an unchecked drop can be told from a checked one.
    errors: RefCell<Option<Vec<Error>>>,
}

impl Ctxt {
    /// An empty collector; it still has to be checked.
    pub(crate) fn new() -> Self {
        Self {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error spanned on the tokens of `tokens`.
    pub(crate) fn error_spanned_by(&self, tokens: impl ToTokens, message: impl Display) {
        self.syn_error(Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error as it is.
    pub(crate) fn syn_error(&self, error: Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("Ctxt used after check()")
            .push(error);
    }

    /// Consumes the collector: every recorded error combined into one, if any.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self.errors.borrow_mut().take().expect("Ctxt checked twice");
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                for error in errors {
                    first.combine(error);
                }
                Err(first)
            }
        }
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && self.errors.borrow().is_some() {
            panic!("eventing-macros: an error collector was dropped without check()");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ctxt;
    use proc_macro2::Span;

    #[test]
    fn no_errors_check_ok() {
        assert!(Ctxt::new().check().is_ok());
    }

    #[test]
    fn all_errors_are_combined_in_order() {
        let cx = Ctxt::new();
        cx.syn_error(syn::Error::new(Span::call_site(), "first"));
        cx.error_spanned_by(quote::quote!(x), "second");
        let error = cx.check().unwrap_err();
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["first", "second"]);
    }

    #[test]
    #[should_panic(expected = "without check()")]
    fn dropping_unchecked_panics() {
        let cx = Ctxt::new();
        cx.error_spanned_by(quote::quote!(x), "lost");
    }
}
