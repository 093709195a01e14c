//! Events and their descriptors.

#[doc(hidden)]
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

/// A payload type that travels as an event. Implemented by `#[event]`; do not
/// implement it by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an #[event]",
    note = "mark the type with #[eventing::event] (it must derive serde's Serialize and Deserialize)"
)]
pub trait Event: SerdeEvent {
    /// The event's registered descriptor.
    fn descriptor() -> &'static EventDescriptor;
}

/// What the registry knows of an event type.
#[derive(Debug)]
pub struct EventDescriptor {
    name: &'static str,
    type_name: &'static str,
    durable: bool,
    version: Option<&'static str>,
    pub(crate) codec: Option<&'static str>,
    schema: fn() -> Option<serde_json::Value>,
}

impl EventDescriptor {
    #[doc(hidden)]
    pub const fn __new(
        name: &'static str,
        type_name: &'static str,
        durable: bool,
        version: Option<&'static str>,
        codec: Option<&'static str>,
        schema: fn() -> Option<serde_json::Value>,
    ) -> Self {
        Self {
            name,
            type_name,
            durable,
            version,
            codec,
            schema,
        }
    }

    /// The payload's JSON Schema, when the type derives `schemars::JsonSchema` and
    /// the `asyncapi` feature is on.
    pub fn payload_schema(&self) -> Option<serde_json::Value> {
        (self.schema)()
    }

    /// The schema version (`#[event(version = "1.2")]`, normalized to `1.2.0`),
    /// sent in the `event-version` header.
    pub fn version(&self) -> Option<&'static str> {
        self.version
    }

    /// The event's name as declared; it may hold `{placeholders}` that the manager
    /// fills (see [`EventManagerBuilder::var`](crate::EventManagerBuilder::var)).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Rust type's path.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Whether the broker is asked for durable queues and persistent, confirmed messages.
    pub fn durable(&self) -> bool {
        self.durable
    }
}

/// A registry entry submitted by `#[event]`.
#[doc(hidden)]
pub struct EventRegistration {
    pub(crate) descriptor: fn() -> &'static EventDescriptor,
}

impl EventRegistration {
    #[doc(hidden)]
    pub const fn __new(descriptor: fn() -> &'static EventDescriptor) -> Self {
        Self { descriptor }
    }
}

inventory::collect!(EventRegistration);
