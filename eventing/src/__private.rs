//! Everything the macros' output names. Not a public API.

pub use inventory;
pub use std::sync::Arc;

pub use crate::event::{EventDescriptor, EventRegistration};
pub use crate::listener::{AnyListener, ListenerDescriptor};

use crate::event::Event;
use crate::listener::{ErasedListener, EventListener};

/// Serde support an event needs (a supertrait of `Event`, so a type without it gets
/// this message rather than one about the serde traits).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an event: it does not implement serde's `Serialize` and `Deserialize`",
    label = "needs #[derive(Serialize, Deserialize)]",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to the type"
)]
pub trait SerdeEvent:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> SerdeEvent for T {}

pub fn event_descriptor<E: Event>() -> &'static EventDescriptor {
    E::descriptor()
}

pub fn bind<L: EventListener<E>, E: Event>(
    instance: AnyListener,
) -> Option<Arc<dyn ErasedListener>> {
    crate::listener::bind::<L, E>(instance)
}
