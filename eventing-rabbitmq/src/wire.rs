//! How envelope headers cross RabbitMQ, which reserves some names: the
//! convention the AMQP and STOMP providers share, so an event sent through one
//! arrives through the other with the same headers, and no header can change how
//! RabbitMQ's STOMP plugin treats a message.
//!
//! A header whose name is reserved ([`reserved`]) travels as
//! [`ESCAPE_PREFIX`]`<name>` and is renamed back (the prefix taken off once) on
//! receipt; names already starting with the prefix get it once more.

/// An envelope header whose name RabbitMQ reserves travels as
/// `x-eventing-<name>` and is renamed back on receipt.
pub const ESCAPE_PREFIX: &str = "x-eventing-";

/// Header names STOMP 1.2 gives a meaning in some frame.
pub const STOMP_HEADERS: &[&str] = &[
    "accept-version",
    "ack",
    "content-length",
    "content-type",
    "destination",
    "heart-beat",
    "host",
    "id",
    "login",
    "message",
    "message-id",
    "passcode",
    "receipt",
    "receipt-id",
    "redelivered",
    "server",
    "session",
    "subscription",
    "transaction",
    "version",
];

/// Names RabbitMQ's STOMP plugin maps to AMQP properties (and so drops from the
/// headers table, or validates: a non-numeric `timestamp` is a processing error,
/// a foreign `user-id` is refused, `expiration` expires the message).
pub const STOMP_PLUGIN_PROPERTIES: &[&str] = &[
    "amqp-message-id",
    "app-id",
    "content-encoding",
    "correlation-id",
    "expiration",
    "persistent",
    "priority",
    "reply-to",
    "timestamp",
    "type",
    "user-id",
];

/// Frame headers of a STOMP `SEND` that RabbitMQ's STOMP plugin copies into the
/// AMQP headers table; they are not envelope headers.
pub const STOMP_FRAME_ONLY: &[&str] = &["content-length", "receipt"];

/// Whether a header called `name` travels escaped on RabbitMQ (STOMP's own
/// names, the STOMP plugin's property names, and names already escaped).
///
/// ```
/// use eventing_rabbitmq::wire::reserved;
/// assert!(reserved("reply-to"));
/// assert!(reserved("receipt"));
/// assert!(reserved("x-eventing-x"));
/// assert!(!reserved("session-id"));
/// ```
pub fn reserved(name: &str) -> bool {
    name.starts_with(ESCAPE_PREFIX)
        || STOMP_HEADERS.contains(&name)
        || STOMP_PLUGIN_PROPERTIES.contains(&name)
}
