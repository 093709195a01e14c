//! Everything the macros' output names. Not a public API.

pub use inventory;
pub use serde_json;
pub use std::sync::Arc;

pub use crate::event::{EventDescriptor, EventRegistration, SerdeEvent};
pub use crate::listener::{AnyListener, ListenerDescriptor, NeedsState};

/// The `TypeId` of a value's type: a listener function's identity is its function
/// item's type, so `EventManagerBuilder::listener(my_fn)` selects it.
pub fn type_id_of_val<T: 'static>(_: &T) -> std::any::TypeId {
    std::any::TypeId::of::<T>()
}

use crate::event::Event;
use crate::listener::{ErasedListener, EventListener};

pub fn event_descriptor<E: Event>() -> &'static EventDescriptor {
    E::descriptor()
}

pub fn bind<L: EventListener<E>, E: Event>(
    instance: AnyListener,
) -> Option<Arc<dyn ErasedListener>> {
    crate::listener::bind::<L, E>(instance)
}

/// Autoref probe: `(&&SchemaProbe::<T>::new()).payload_schema()` is `T`'s JSON
/// Schema when `T: JsonSchema` (and the `asyncapi` feature is on), else `None`.
pub struct SchemaProbe<T>(std::marker::PhantomData<T>);

impl<T> SchemaProbe<T> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub trait NoSchema {
    fn payload_schema(&self) -> Option<serde_json::Value>;
}

impl<T> NoSchema for SchemaProbe<T> {
    fn payload_schema(&self) -> Option<serde_json::Value> {
        None
    }
}

#[cfg(feature = "asyncapi")]
pub trait WithSchema {
    fn payload_schema(&self) -> Option<serde_json::Value>;
}

#[cfg(feature = "asyncapi")]
impl<T: schemars::JsonSchema> WithSchema for &SchemaProbe<T> {
    fn payload_schema(&self) -> Option<serde_json::Value> {
        Some(schemars::schema_for!(T).to_value())
    }
}

#[cfg(not(feature = "asyncapi"))]
pub use NoSchema as WithSchema;
