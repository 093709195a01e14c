//! Code generation. Output names only paths under `<crate>::__private` and is wrapped
//! in `const _: () = { ... };` so it adds nothing to the user's namespace.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Fields, Path};

use crate::attr::{Errors, EventArgs, ListenerArgs};

fn option_str(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

fn runtime_path(krate: Option<Path>) -> TokenStream {
    match krate {
        Some(path) => quote!(#path),
        None => quote!(::eventing),
    }
}

/// On error, emit the item unchanged beside the errors so the rest of the user's
/// crate (and their IDE) keeps working.
fn with_errors(item: &TokenStream, error: Error) -> TokenStream {
    let errors = error.into_compile_error();
    quote!(#item #errors)
}

fn reject_generics(input: &DeriveInput, what: &str, errors: &mut Errors) {
    if !input.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &input.generics,
            format!(
                "{what} cannot be generic: its name and registration are fixed at compile time"
            ),
        ));
    }
}

pub(crate) fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(item.clone()) {
        Ok(input) => input,
        Err(_) => {
            return with_errors(
                &item,
                Error::new_spanned(
                    &item,
                    "#[event] goes on a struct or an enum that derives serde's Serialize and Deserialize",
                ),
            );
        }
    };
    let mut errors = Errors::default();
    let args = match EventArgs::parse(args, &mut errors) {
        Ok(args) => args,
        Err(error) => return with_errors(&item, error),
    };
    if let Data::Union(data) = &input.data {
        errors.push(Error::new(
            data.union_token.span(),
            "#[event] cannot go on a union: serde cannot serialize unions; use a struct or an enum",
        ));
    }
    reject_generics(&input, "an event", &mut errors);
    if let Err(error) = errors.into_result() {
        return with_errors(&item, error);
    }

    let krate = runtime_path(args.krate);
    let ident = &input.ident;
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => {
            let name = ident.to_string();
            quote!(#name)
        }
    };
    let durable = args.durable;
    let version = option_str(args.version.as_deref());
    let codec = option_str(args.codec.as_deref());
    // Spanned on the type's name so a missing serde derive points at the type.
    let event_trait = quote_spanned!(ident.span()=> #krate::Event);
    quote! {
        #item
        const _: () = {
            #[automatically_derived]
            impl #event_trait for #ident {
                fn descriptor() -> &'static #krate::EventDescriptor {
                    static DESCRIPTOR: #krate::EventDescriptor = #krate::__private::EventDescriptor::__new(
                        #name,
                        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                        #durable,
                        #version,
                        #codec,
                        {
                            fn schema() -> ::core::option::Option<#krate::__private::serde_json::Value> {
                                #[allow(unused_imports)]
                                use #krate::__private::{NoSchema as _, WithSchema as _};
                                (&&#krate::__private::SchemaProbe::<#ident>::new()).payload_schema()
                            }
                            schema
                        },
                    );
                    &DESCRIPTOR
                }
            }
            #krate::__private::inventory::submit! {
                #krate::__private::EventRegistration::__new(<#ident as #krate::Event>::descriptor)
            }
        };
    }
}

pub(crate) fn event_listener(args: TokenStream, item: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(item.clone()) {
        Ok(input) => input,
        Err(_) => {
            return with_errors(
                &item,
                Error::new_spanned(
                    &item,
                    "#[event_listener] goes on a struct that implements EventListener<YourEvent>",
                ),
            );
        }
    };
    let mut errors = Errors::default();
    let args = match ListenerArgs::parse(args, &mut errors) {
        Ok(args) => args,
        Err(error) => return with_errors(&item, error),
    };
    let unit = match &input.data {
        Data::Struct(data) => matches!(data.fields, Fields::Unit),
        Data::Enum(data) => {
            errors.push(Error::new(
                data.enum_token.span(),
                "#[event_listener] goes on a struct; bind state as struct fields",
            ));
            false
        }
        Data::Union(data) => {
            errors.push(Error::new(
                data.union_token.span(),
                "#[event_listener] goes on a struct, not a union",
            ));
            false
        }
    };
    reject_generics(&input, "a listener", &mut errors);
    if let Err(error) = errors.into_result() {
        return with_errors(&item, error);
    }

    let krate = runtime_path(args.krate);
    let ident = &input.ident;
    let event = &args.event;
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => {
            let name = ident.to_string();
            quote!(#name)
        }
    };
    let per_process = args.per_process;
    let singleton = args.singleton;
    let version = option_str(args.version.as_deref());
    // A unit struct carries no state, so the runtime can make one itself; any other
    // listener must be bound as an instance on the manager.
    let construct = if unit {
        quote! {
            ::core::option::Option::Some({
                fn construct() -> #krate::__private::AnyListener {
                    #krate::__private::Arc::new(#ident)
                }
                construct
            })
        }
    } else {
        quote!(::core::option::Option::None)
    };
    // Spanned on the event type: a type that is not an #[event] is reported there.
    let event_descriptor = quote_spanned! {event.span()=>
        #krate::__private::event_descriptor::<#event>
    };
    // Spanned on the listener's name: a missing `impl EventListener<E>` points there.
    let bind = quote_spanned! {ident.span()=>
        #krate::__private::bind::<#ident, #event>
    };
    quote! {
        #item
        const _: () = {
            #krate::__private::inventory::submit! {
                #krate::__private::ListenerDescriptor::__new(
                    #name,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    #per_process,
                    #singleton,
                    #version,
                    #event_descriptor,
                    ::core::any::TypeId::of::<#ident>,
                    #construct,
                    #bind,
                )
            }
        };
    }
}
