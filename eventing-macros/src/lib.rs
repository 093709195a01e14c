//! Procedural macros for [`eventing`](https://docs.rs/eventing).
//!
//! This crate only generates code; everything it emits names items under
//! `::eventing` (or the path given with `crate = "..."`), so use the macros through
//! the `eventing` crate, which re-exports them.
//!
//! Each macro runs in stages, one module each: `ast` reads the item, `attr` the
//! attribute's arguments, `valid` checks both, `expand` generates the code. Every
//! stage reports to one error collector (`ctxt`) so that all errors come out at
//! once; after any error, `fallback` emits the item unchanged with the errors (and,
//! for `#[event]`, a stand-in `impl Event`) so that no follow-on error appears
//! where the type is used.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use syn::parse_macro_input;

/// Marks a serde struct or enum as an event: implements `eventing::Event` for it
/// and registers its descriptor in the compile-time registry.
///
/// The type must derive serde's `Serialize` and `Deserialize`, be `Send + Sync +
/// 'static`, and have no generic parameters. All options are optional:
///
/// | option | meaning | default |
/// |---|---|---|
/// | `name = "..."` | the event's name, which is its address on the broker; may hold `{placeholders}` such as `{env}`, filled per manager by `EventManagerBuilder::var`; not empty, no white space | the type's name |
/// | `durable = bool` | durable queues, persistent messages and broker confirms for this event | `false` |
/// | `version = "1.2"` | the payload's schema version, semver (`1.2` means `1.2.0`), sent in the `event-version` header and matched against listeners' `version` ranges | none: no header |
/// | `codec = "json"` | the body codec for this event: `"json"`, `"msgpack"` (feature `msgpack`) or `"cbor"` (feature `cbor`) | the manager's codec (JSON unless set) |
/// | `crate = "path"` | the path to the `eventing` crate, for code that re-exports it under another name | `"::eventing"` |
///
/// ```ignore
/// use eventing::event;
/// use serde::{Deserialize, Serialize};
///
/// #[event]
/// #[derive(Serialize, Deserialize)]
/// struct Joined {
///     name: String,
/// }
///
/// #[event(name = "orders.{env}.Placed", durable = true, version = "1.2", codec = "json")]
/// #[derive(Serialize, Deserialize)]
/// enum OrderPlaced {
///     Small(u32),
///     Large { amount: u64 },
/// }
/// ```
///
/// Every mistake in the options is a compile error at its tokens, all reported at
/// once; the type still implements `Event` then, so no further error appears where
/// it is used.
// The example above is `ignore`: a proc-macro crate cannot run doctests that use
// its own macros. eventing-macros/tests/ui/pass/all_options.rs compiles the same items.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ast::Item);
    expand::event(args.into(), &item).into()
}

/// Registers a listener type for an event: `#[event_listener(MyEvent, ...)]` on a
/// struct that implements `eventing::EventListener<MyEvent>`.
///
/// The first argument, the event type, is required; it must be an `#[event]`. The
/// options after it are optional:
///
/// | option | meaning | default |
/// |---|---|---|
/// | `name = "..."` | the listener's name, part of its queue's name `<event>::<listener>`; not empty, no white space | the type's name |
/// | `per_process = bool` | broadcast: every server gets every event, on a queue of its own (`<event>::<listener>-<server>`) removed with the server | `false`: instances of the listener on all servers compete for each event |
/// | `singleton = bool` | exactly one of all singleton listeners of the event, whatever their names, handles each event (queue `<event>::singleton`); not together with `per_process = true` | `false` |
/// | `version = "<2.0"` | the semver range of event versions accepted; a message outside it, or without a valid `event-version` header, is dead-lettered with the reason | none: every version |
/// | `crate = "path"` | the path to the `eventing` crate, for code that re-exports it under another name | `"::eventing"` |
///
/// A unit struct is constructed by the runtime; a struct with fields is bound as an
/// instance with `EventManagerBuilder::listener`. Stack the attribute to listen to
/// several events with one type.
///
/// The attribute also goes on an `async fn` taking the event, then optionally
/// `&Context` (or `Context`) and one `State<T>` in any order, returning
/// `ListenerResult`; its name defaults to the function's, the options are the
/// same, the function stays callable as written, and `State<T>` is the value
/// given to `EventManagerBuilder::state`:
///
/// ```ignore
/// #[event_listener(Greeted, name = "Audit", per_process = true)]
/// async fn audit(event: Greeted, ctx: &Context, State(log): State<AuditLog>) -> ListenerResult {
///     log.write(&event.name, ctx.message_id()).await?;
///     Ok(())
/// }
/// ```
///
/// ```ignore
/// use eventing::{event, event_listener, Context, EventListener, ListenerResult};
/// use serde::{Deserialize, Serialize};
///
/// #[event(version = "1.2")]
/// #[derive(Serialize, Deserialize)]
/// struct Greeted {
///     name: String,
/// }
///
/// #[event_listener(Greeted, name = "Printer", version = "<2.0")]
/// struct Printer;
///
/// impl EventListener<Greeted> for Printer {
///     async fn on(&self, event: Greeted, _ctx: &Context) -> ListenerResult {
///         println!("hello, {}", event.name);
///         Ok(())
///     }
/// }
///
/// #[event_listener(Greeted, name = "Counter", per_process = true)]
/// struct Counter {
///     seen: std::sync::atomic::AtomicUsize,
/// }
///
/// impl EventListener<Greeted> for Counter {
///     async fn on(&self, _event: Greeted, _ctx: &Context) -> ListenerResult {
///         self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         Ok(())
///     }
/// }
/// ```
///
/// After a mistake in the arguments the listener is not registered, and only the
/// mistakes are reported.
// The example above is `ignore`: a proc-macro crate cannot run doctests that use
// its own macros. eventing-macros/tests/ui/pass/all_options.rs compiles the same items.
#[proc_macro_attribute]
pub fn event_listener(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ast::Item);
    expand::event_listener(args.into(), &item).into()
}
