//! Code generation, run only when every check passed; on any error the item goes
//! to `fallback` instead.
//!
//! The output names only paths under the runtime crate and is wrapped in
//! `const _: () = { ... };` so it adds nothing to the user's namespace.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, LitStr};

use crate::ast::{self, Item, Param, Shape, Target};
use crate::attr::{EventArgs, ListenerArgs, Setting};
use crate::ctxt::Ctxt;
use crate::{fallback, valid};

/// What `#[event]` on something other than a type is told.
const EVENT_PLACEMENT: &str =
    "#[event] goes on a struct or an enum that derives serde's Serialize and Deserialize";

/// What `#[event_listener]` on something other than a type is told.
const LISTENER_PLACEMENT: &str = "#[event_listener] goes on a struct that implements EventListener<YourEvent>, or on an `async fn` taking the event";

/// `#[event(args)]` on `item`: the item, an `impl Event` and its registration; or,
/// after any error, the item, every error and a stand-in `impl Event`.
pub(crate) fn event(args: TokenStream, item: &Item) -> TokenStream {
    let cx = Ctxt::new();
    let args = EventArgs::parse(&cx, args);
    let Some(target) = item.target() else {
        cx.error_spanned_by(item, EVENT_PLACEMENT);
        return fallback::item(item, cx.check());
    };
    valid::event(&cx, target, &args);
    match cx.check() {
        Ok(()) => event_impl(item, target, &args),
        Err(error) => fallback::event(item, target, &args, error),
    }
}

/// `#[event_listener(args)]` on `item`: the item and its registration; or, after
/// any error, the item and every error, with no registration.
pub(crate) fn event_listener(args: TokenStream, item: &Item) -> TokenStream {
    let cx = Ctxt::new();
    let args = ListenerArgs::parse(&cx, args);
    if let Some(function) = item.function() {
        valid::listener_fn(&cx, function, &args);
        return match cx.check() {
            Ok(()) => listener_fn_registration(item, function, &args),
            Err(error) => fallback::item(item, Err(error)),
        };
    }
    let Some(target) = item.target() else {
        cx.error_spanned_by(item, LISTENER_PLACEMENT);
        return fallback::item(item, cx.check());
    };
    valid::listener(&cx, target, &args);
    match cx.check() {
        Ok(()) => listener_registration(item, target, &args),
        Err(error) => fallback::item(item, Err(error)),
    }
}

fn event_impl(item: &Item, target: &Target, args: &EventArgs) -> TokenStream {
    let krate = args.krate.tokens().unwrap_or_else(|| quote!(::eventing));
    let ident = &target.ident;
    let name = name_or_ident(args.name.as_ref(), target);
    let durable = args.durable.as_ref().is_some_and(|setting| setting.value);
    // Checked in `valid`, so the version normalizes; the literal is only a formality.
    let version = option_str(args.version.as_ref().map(|setting| {
        let text = setting.value.value();
        valid::normalize_version(&text).unwrap_or(text)
    }));
    let codec = option_str(args.codec.as_ref().map(|setting| setting.value.value()));
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

fn listener_registration(item: &Item, target: &Target, args: &ListenerArgs) -> TokenStream {
    let krate = args.krate.tokens().unwrap_or_else(|| quote!(::eventing));
    let ident = &target.ident;
    let event = &args.event;
    let name = name_or_ident(args.name.as_ref(), target);
    let per_process = args.per_process.as_ref().is_some_and(|s| s.value);
    let singleton = args.singleton.as_ref().is_some_and(|s| s.value);
    let version = option_str(args.version.as_ref().map(|setting| setting.value.value()));
    // A unit struct carries no state, so the runtime can make one itself; any other
    // listener must be bound as an instance on the manager.
    let construct = if let Shape::Struct { unit: true } = target.shape {
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

/// `#[event_listener(E, ..)]` on `async fn f(event: E, ..)`: the function as written,
/// a hidden listener type whose `on` calls it, and the registration. The
/// listener's identity is the function item's type, so
/// `EventManagerBuilder::listener(f)` selects it.
fn listener_fn_registration(item: &Item, function: &ItemFn, args: &ListenerArgs) -> TokenStream {
    let krate = args.krate.tokens().unwrap_or_else(|| quote!(::eventing));
    let ident = &function.sig.ident;
    let event = &args.event;
    let name = match &args.name {
        Some(setting) => {
            let lit = &setting.value;
            quote!(#lit)
        }
        None => {
            let name = ident.to_string();
            quote!(#name)
        }
    };
    let per_process = args.per_process.as_ref().is_some_and(|s| s.value);
    let singleton = args.singleton.as_ref().is_some_and(|s| s.value);
    let version = option_str(args.version.as_ref().map(|setting| setting.value.value()));
    let mut state_ty = None;
    let mut call_args = Vec::new();
    for (n, (_, ty)) in ast::typed_inputs(function)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // Spanned on the parameter's type, so a mismatch is reported there.
        call_args.push(match (n, ast::param(ty)) {
            (0, _) => quote_spanned!(ty.span()=> event),
            (_, Param::Context { by_ref: true }) => quote_spanned!(ty.span()=> ctx),
            (_, Param::Context { by_ref: false }) => {
                quote_spanned!(ty.span()=> ::core::clone::Clone::clone(ctx))
            }
            (_, Param::State(inner)) => {
                state_ty = Some(inner.clone());
                quote_spanned!(ty.span()=> ::core::clone::Clone::clone(&self.0))
            }
            (_, Param::Other) => quote!(::core::unreachable!()),
        });
    }
    let (definition, construct, state) = match &state_ty {
        None => (
            quote!(
                struct __Listener;
            ),
            quote! {
                ::core::option::Option::Some({
                    fn construct() -> #krate::__private::AnyListener {
                        #krate::__private::Arc::new(__Listener)
                    }
                    construct
                })
            },
            quote!(::core::option::Option::None),
        ),
        Some(inner) => (
            quote!(struct __Listener(#krate::State<#inner>);),
            quote!(::core::option::Option::None),
            quote! {
                ::core::option::Option::Some(#krate::__private::NeedsState {
                    type_id: ::core::any::TypeId::of::<#krate::State<#inner>>,
                    type_name: ::core::stringify!(#inner),
                    make: {
                        fn make(
                            state: &#krate::__private::AnyListener,
                        ) -> ::core::option::Option<#krate::__private::AnyListener> {
                            let state = state.downcast_ref::<#krate::State<#inner>>()?;
                            ::core::option::Option::Some(#krate::__private::Arc::new(__Listener(
                                ::core::clone::Clone::clone(state),
                            )))
                        }
                        make
                    },
                })
            },
        ),
    };
    let event_descriptor = quote_spanned! {event.span()=>
        #krate::__private::event_descriptor::<#event>
    };
    // Spanned on the function's name: a future that is not `Send`, or a result
    // that is not a `ListenerResult`, is reported there.
    let call = quote_spanned! {ident.span()=> #ident(#(#call_args),*) };
    quote! {
        #item
        const _: () = {
            #definition
            impl #krate::EventListener<#event> for __Listener {
                fn on(
                    &self,
                    event: #event,
                    ctx: &#krate::Context,
                ) -> impl ::core::future::Future<Output = #krate::ListenerResult> + ::core::marker::Send {
                    let _ = ctx;
                    #call
                }
            }
            #krate::__private::inventory::submit! {
                #krate::__private::ListenerDescriptor::__new_fn(
                    #name,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    #per_process,
                    #singleton,
                    #version,
                    #event_descriptor,
                    {
                        fn type_id() -> ::core::any::TypeId {
                            #krate::__private::type_id_of_val(&#ident)
                        }
                        type_id
                    },
                    #construct,
                    #state,
                    #krate::__private::bind::<__Listener, #event>,
                )
            }
        };
    }
}

/// The `name` given, as its literal, or the type's name.
fn name_or_ident(name: Option<&Setting<LitStr>>, target: &Target) -> TokenStream {
    match name {
        Some(setting) => {
            let lit = &setting.value;
            quote!(#lit)
        }
        None => {
            let name = target.ident.to_string();
            quote!(#name)
        }
    }
}

fn option_str(value: Option<String>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
