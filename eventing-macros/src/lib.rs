//! Procedural macros for [`eventing`](https://docs.rs/eventing).
//!
//! This crate only generates code; everything it emits names items under
//! `::eventing::__private`, so use the macros through the `eventing` crate, which
//! re-exports them.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Marks a serde type as an event: implements `eventing::Event` and registers its
/// descriptor in the compile-time registry.
///
/// Options: `name = "..."` (the address; default the type name, may contain `{env}`),
/// `durable = bool` (default `false`), `crate = "path"` (the runtime crate's path).
#[proc_macro_attribute]
pub fn event(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::event(args.into(), input.into()).into()
}

/// Registers a listener type for an event: `#[event_listener(MyEvent)]`.
///
/// Options after the event type: `name = "..."` (default the type name),
/// `per_process = bool` (default `false`), `crate = "path"`. Stack the attribute to
/// listen to several events with one type.
#[proc_macro_attribute]
pub fn event_listener(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::event_listener(args.into(), input.into()).into()
}
