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
        }
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

    /// True when the runtime can construct the listener itself (a unit struct).
    pub fn constructible(&self) -> bool {
        self.construct.is_some()
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
