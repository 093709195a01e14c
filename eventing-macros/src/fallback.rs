//! What is emitted after an error, after thiserror's `fallback`: the item unchanged,
//! every error, and for `#[event]` a stand-in `impl Event`, so that the user sees
//! exactly their own mistakes and no follow-on error at each place the type is used
//! as an event (in `#[event_listener]`, `impl EventListener<E>`, `send_event`...).

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Error, WhereClause, parse_quote};

use crate::ast::{Item, Target};
use crate::attr::EventArgs;

/// The item as written and the errors, if any: nothing is implemented or registered.
pub(crate) fn item(item: &Item, errors: syn::Result<()>) -> TokenStream {
    let errors = errors.err().map(Error::into_compile_error);
    quote!(#item #errors)
}

/// The item, the errors and a stand-in `impl Event` that is not registered.
///
/// `Event` has the hidden supertrait `SerdeEvent` (serde's traits, `Send`, `Sync`,
/// `'static`). The stand-in must not demand it of a type whose error was about
/// something else, or a type without the serde derives would get serde errors at
/// the attribute as well. So, as thiserror's stand-in does with `Debug`, it moves
/// the supertrait into a `where` clause made higher-ranked (`for<'a>`), which the
/// compiler does not check where the impl is written (trivial bounds are
/// unstable), only where `T: Event` is used. The descriptor is a plain static.
///
/// When the `crate` path given was unusable there is no path to name the trait by,
/// and only the item and the errors are emitted.
pub(crate) fn event(item: &Item, target: &Target, args: &EventArgs, error: Error) -> TokenStream {
    let Some(krate) = args.krate.tokens() else {
        return self::item(item, Err(error));
    };
    let errors = error.into_compile_error();
    let ident = &target.ident;
    let (impl_generics, ty_generics, where_clause) = target.generics.split_for_impl();
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| WhereClause {
        where_token: Default::default(),
        predicates: Default::default(),
    });
    where_clause.predicates.push(parse_quote! {
        for<'__stand_in> #ident #ty_generics: #krate::__private::SerdeEvent
    });
    let name = ident.to_string();
    quote! {
        #item
        #errors
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {
                fn descriptor() -> &'static #krate::EventDescriptor {
                    static DESCRIPTOR: #krate::EventDescriptor = #krate::__private::EventDescriptor::__new(
                        #name,
                        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                        false,
                        ::core::option::Option::None,
                        ::core::option::Option::None,
                        {
                            fn schema() -> ::core::option::Option<#krate::__private::serde_json::Value> {
                                ::core::option::Option::None
                            }
                            schema
                        },
                    );
                    &DESCRIPTOR
                }
            }
        };
    }
}
