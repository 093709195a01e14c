//! Listeners: the user's handlers, their descriptors, and the type-erased form the
//! runtime calls.

use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::call::{Call, CallError, Outcome};
use crate::codec;
use crate::envelope::{Envelope, Headers, header};
use crate::error::BoxError;
use crate::event::{Event, EventDescriptor};

/// What a listener's `on` returns: any error counts as a failure to be retried.
pub type ListenerResult = Result<(), BoxError>;

/// Handles one event type. Register the type with `#[event_listener(MyEvent)]`.
///
/// ```
/// use eventing::{event, event_listener, Context, EventListener, ListenerResult};
/// use serde::{Deserialize, Serialize};
///
/// #[event]
/// #[derive(Serialize, Deserialize)]
/// struct Greeted { name: String }
///
/// #[event_listener(Greeted)]
/// struct Printer;
///
/// impl EventListener<Greeted> for Printer {
///     async fn on(&self, event: Greeted, ctx: &Context) -> ListenerResult {
///         println!("{} ({})", event.name, ctx.message_id());
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `EventListener<{E}>`",
    label = "no `impl EventListener<{E}>` for this listener",
    note = "add `impl eventing::EventListener<{E}> for {Self} {{ async fn on(&self, event: {E}, ctx: &eventing::Context) -> eventing::ListenerResult {{ .. }} }}`"
)]
pub trait EventListener<E: Event>: Send + Sync + 'static {
    /// Called once per delivered event. Return `Ok` to acknowledge it; an error (or a
    /// panic) is retried with backoff and then dead-lettered.
    fn on(&self, event: E, ctx: &Context) -> impl Future<Output = ListenerResult> + Send;
}

/// A closure usable as a listener of `E` in
/// [`EventManager::subscribe`](crate::EventManager::subscribe): `|event, ctx| async
/// move { .. }`, taking the event and its [`Context`] by value and returning a
/// `Send` future of a [`ListenerResult`]. Implemented for every such closure or
/// function; the compiler infers the closure's argument types from it.
///
/// ```
/// # use eventing::{Context, ListenerFn, ListenerResult};
/// # #[eventing::event] #[derive(serde::Serialize, serde::Deserialize)] struct Heartbeat;
/// fn takes<F: ListenerFn<Heartbeat>>(_: F) {}
/// takes(|_tick, ctx| async move {
///     println!("tick {}", ctx.message_id());
///     Ok(())
/// });
/// ```
pub trait ListenerFn<E>:
    Fn(E, Context) -> <Self as ListenerFn<E>>::Future + Send + Sync + 'static
{
    /// What a call returns.
    type Future: Future<Output = ListenerResult> + Send + 'static;
}

impl<E, F, Fut> ListenerFn<E> for F
where
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ListenerResult> + Send + 'static,
{
    type Future = Fut;
}

/// A [`ListenerFn`] as an [`EventListener`].
pub(crate) struct FnListener<F>(pub(crate) F);

impl<E: Event, F: ListenerFn<E>> EventListener<E> for FnListener<F> {
    fn on(&self, event: E, ctx: &Context) -> impl Future<Output = ListenerResult> + Send {
        (self.0)(event, ctx.clone())
    }
}

/// Shared state for listener functions, as axum's `State` extractor: a parameter
/// `State(db): State<Db>` of an `#[event_listener]` function gets a clone of the
/// value given to [`EventManagerBuilder::state`](crate::EventManagerBuilder::state)
/// for each call. Put what is expensive to clone (a pool) behind an `Arc`, or use
/// a type that is a handle already.
///
/// (A crate of its own: its listener needs a `Ledger`, which other examples'
/// managers do not have.)
///
/// ```standalone_crate
/// use eventing::{event, event_listener, ListenerResult, State};
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
///
/// #[event]
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Paid { cents: u64 }
///
/// #[derive(Clone, Default)]
/// struct Ledger(Arc<AtomicU64>);
///
/// #[event_listener(Paid)]
/// async fn book(paid: Paid, State(ledger): State<Ledger>) -> ListenerResult {
///     ledger.0.fetch_add(paid.cents, Ordering::Relaxed);
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
/// let ledger = Ledger::default();
/// let manager = eventing::EventManager::builder()
///     .url("memory://state-doc")
///     .state(ledger.clone())
///     .build()
///     .await?;
/// manager.start().await?;
/// manager.send_event(&Paid { cents: 250 }).await?;
/// # for _ in 0..200 { if ledger.0.load(Ordering::Relaxed) == 250 { break; } tokio::time::sleep(std::time::Duration::from_millis(5)).await; }
/// manager.shutdown().await?;
/// assert_eq!(ledger.0.load(Ordering::Relaxed), 250);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct State<T>(pub T);

impl<T> std::ops::Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Where a listener comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerOrigin {
    /// `#[event_listener]` on a type with `impl EventListener<E>`.
    Type,
    /// `#[event_listener]` on an `async fn`.
    Function,
    /// [`EventManager::subscribe`](crate::EventManager::subscribe) at run time.
    Subscription,
}

/// What a listener function needs from the manager: its `State<T>`.
#[doc(hidden)]
pub struct NeedsState {
    /// `TypeId::of::<State<T>>`.
    pub type_id: fn() -> TypeId,
    /// `T`'s name, for errors.
    pub type_name: &'static str,
    /// Builds the listener from the manager's `State<T>` (stored as `AnyListener`).
    pub make: fn(&AnyListener) -> Option<AnyListener>,
}

/// What a listener knows of the message it handles.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) headers: Headers,
    pub(crate) listener: &'static ListenerDescriptor,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) redelivered: bool,
}

impl Context {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// All headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The `message-id` header.
    pub fn message_id(&self) -> &str {
        self.headers.get(header::MESSAGE_ID).unwrap_or("")
    }

    /// The listener being called.
    pub fn listener(&self) -> &'static ListenerDescriptor {
        self.listener
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// 1 on the first call, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True when the broker delivered this message before (to this or another
    /// consumer) without an acknowledgement: handle duplicates.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }
}

/// A listener instance as the registry stores it.
#[doc(hidden)]
pub type AnyListener = Arc<dyn Any + Send + Sync>;

/// What the registry knows of a listener (one per listened event).
pub struct ListenerDescriptor {
    name: &'static str,
    type_name: &'static str,
    per_process: bool,
    singleton: bool,
    version: Option<&'static str>,
    event: fn() -> &'static EventDescriptor,
    pub(crate) type_id: fn() -> TypeId,
    pub(crate) construct: Option<fn() -> AnyListener>,
    pub(crate) bind: fn(AnyListener) -> Option<Arc<dyn ErasedListener>>,
    origin: ListenerOrigin,
    state: Option<NeedsState>,
}

impl ListenerDescriptor {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn __new(
        name: &'static str,
        type_name: &'static str,
        per_process: bool,
        singleton: bool,
        version: Option<&'static str>,
        event: fn() -> &'static EventDescriptor,
        type_id: fn() -> TypeId,
        construct: Option<fn() -> AnyListener>,
        bind: fn(AnyListener) -> Option<Arc<dyn ErasedListener>>,
    ) -> Self {
        Self {
            name,
            type_name,
            per_process,
            singleton,
            version,
            event,
            type_id,
            construct,
            bind,
            origin: ListenerOrigin::Type,
            state: None,
        }
    }

    /// A listener function's descriptor: `construct` for one without state, `state`
    /// for one taking `State<T>`.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn __new_fn(
        name: &'static str,
        type_name: &'static str,
        per_process: bool,
        singleton: bool,
        version: Option<&'static str>,
        event: fn() -> &'static EventDescriptor,
        type_id: fn() -> TypeId,
        construct: Option<fn() -> AnyListener>,
        state: Option<NeedsState>,
        bind: fn(AnyListener) -> Option<Arc<dyn ErasedListener>>,
    ) -> Self {
        Self {
            name,
            type_name,
            per_process,
            singleton,
            version,
            event,
            type_id,
            construct,
            bind,
            origin: ListenerOrigin::Function,
            state,
        }
    }

    /// A run-time subscription's descriptor (the runtime binds its handler itself).
    pub(crate) fn subscription(
        name: &'static str,
        type_name: &'static str,
        per_process: bool,
        event: fn() -> &'static EventDescriptor,
        type_id: fn() -> TypeId,
    ) -> Self {
        Self {
            name,
            type_name,
            per_process,
            singleton: false,
            version: None,
            event,
            type_id,
            construct: None,
            bind: |_| None,
            origin: ListenerOrigin::Subscription,
            state: None,
        }
    }

    /// The instance to bind: a listener function's own (built from its state if it
    /// takes one), else the instance bound on the manager, else one the runtime
    /// constructs. `instances` are the manager's bound values, states among them.
    pub(crate) fn instantiate(
        &self,
        bound: Option<AnyListener>,
        instances: &[(TypeId, AnyListener)],
    ) -> crate::Result<AnyListener> {
        if let Some(needs) = &self.state {
            let id = (needs.type_id)();
            return instances
                .iter()
                .find(|(t, _)| *t == id)
                .and_then(|(_, state)| (needs.make)(state))
                .ok_or(crate::Error::StateNotProvided {
                    listener: self.name,
                    type_name: self.type_name,
                    state: needs.type_name,
                });
        }
        if self.origin == ListenerOrigin::Function {
            if let Some(construct) = self.construct {
                return Ok(construct());
            }
        }
        bound
            .or_else(|| self.construct.map(|construct| construct()))
            .ok_or(crate::Error::ListenerNotBound {
                listener: self.name,
                type_name: self.type_name,
            })
    }

    /// Where the listener comes from: a type, a function, or a run-time subscription.
    pub fn origin(&self) -> ListenerOrigin {
        self.origin
    }

    /// The listener's name (default: the type's name).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Rust type's path.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// True when every server gets every event (one queue per server).
    pub fn per_process(&self) -> bool {
        self.per_process
    }

    /// True for the singleton kind: one queue per event shared by every singleton
    /// listener of it, so exactly one of them handles each event.
    pub fn singleton(&self) -> bool {
        self.singleton
    }

    /// The event versions accepted (`#[event_listener(E, version = "<2.0")]`), a
    /// semver range; messages outside it are dead-lettered.
    pub fn version(&self) -> Option<&'static str> {
        self.version
    }

    /// The event this listener handles.
    pub fn event(&self) -> &'static EventDescriptor {
        (self.event)()
    }

    /// True when the runtime can construct the listener itself (a unit struct, or a
    /// listener function; one taking `State<T>` needs the manager's `T` too).
    pub fn constructible(&self) -> bool {
        self.construct.is_some() || self.state.is_some()
    }

    pub(crate) fn is_type(&self, id: TypeId) -> bool {
        (self.type_id)() == id
    }
}

impl std::fmt::Debug for ListenerDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerDescriptor")
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("event", &self.event().name())
            .field("per_process", &self.per_process)
            .field("origin", &self.origin)
            .finish()
    }
}

inventory::collect!(ListenerDescriptor);

/// A listener bound to its event type, callable with raw envelopes.
#[doc(hidden)]
pub trait ErasedListener: Send + Sync {
    /// Decodes the body and calls `on`, catching a panic as a failure.
    fn call(&self, envelope: &Envelope, ctx: Context) -> Call;
}

struct Bound<L, E> {
    listener: Arc<L>,
    _event: PhantomData<fn() -> E>,
}

impl<L: EventListener<E>, E: Event> ErasedListener for Bound<L, E> {
    fn call(&self, envelope: &Envelope, ctx: Context) -> Call {
        let event = match codec::decode::<E>(envelope) {
            Ok(event) => event,
            Err(error) => {
                let inner = Err(CallError::Decode(error.to_string()));
                return Box::pin(std::future::ready(Outcome { inner }));
            }
        };
        let listener = Arc::clone(&self.listener);
        Box::pin(async move {
            let call = AssertUnwindSafe(listener.on(event, &ctx)).catch_unwind();
            let inner = match call.await {
                Ok(result) => result.map_err(CallError::Failed),
                Err(panic) => Err(CallError::Failed(panic_message(&*panic).into())),
            };
            Outcome { inner }
        })
    }
}

/// Describes a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string());
    format!("listener panicked: {detail}")
}

/// Binds a type-erased instance of `L` as a listener of `E`.
pub(crate) fn bind<L: EventListener<E>, E: Event>(
    instance: AnyListener,
) -> Option<Arc<dyn ErasedListener>> {
    let listener = instance.downcast::<L>().ok()?;
    Some(Arc::new(Bound {
        listener,
        _event: PhantomData::<fn() -> E>,
    }))
}

/// Binds a listener value of `L` as a listener of `E` (run-time subscriptions).
pub(crate) fn erase<L: EventListener<E>, E: Event>(listener: L) -> Arc<dyn ErasedListener> {
    Arc::new(Bound {
        listener: Arc::new(listener),
        _event: PhantomData::<fn() -> E>,
    })
}
