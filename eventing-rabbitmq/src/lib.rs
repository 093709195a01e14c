//! RabbitMQ's rules for [`eventing`], in one place: what the AMQP provider
//! (`eventing-amqp`) and the STOMP provider on RabbitMQ (`eventing-stomp`) declare,
//! and how their headers cross the broker, so the two can share a broker and
//! exchange events.
//!
//! Everything here is data, with no client attached: each provider turns it into
//! its own wire form (lapin's `FieldTable`, the STOMP provider's AMQP declaration
//! client).
//!
//! - [`topology`]: an exchange per event, each listener's queue and its
//!   `<queue>.dlq`, with their arguments ([`Arg`]);
//! - [`QueueType`] and [`QueueTypeParams`]: the URL parameters `queue_type` and
//!   `delivery_limit`, read once for both providers;
//! - [`wire`]: the header names RabbitMQ (and its STOMP plugin) reserves, and how
//!   they travel;
//! - [`explain_dead_letter`]: the reason of a message RabbitMQ dead-lettered itself.
//!
//! ```
//! use eventing::topology::QueueSpec;
//! use eventing_rabbitmq::{Arg, QueueType, topology};
//!
//! let spec = QueueSpec::new("shop.Order", "Billing", true, false, "web-1");
//! let queue = topology::queue(&spec, QueueType::Quorum { delivery_limit: 5 });
//! assert!(queue.durable && !queue.exclusive);
//! assert_eq!(queue.argument("x-queue-type"), Some(&Arg::Str("quorum".into())));
//! assert_eq!(queue.argument("x-delivery-limit"), Some(&Arg::Int(5)));
//! assert_eq!(
//!     queue.argument("x-dead-letter-routing-key"),
//!     Some(&Arg::Str("shop.Order::Billing.dlq".into()))
//! );
//! ```

mod params;
pub mod topology;
pub mod wire;

pub use params::{DEFAULT_DELIVERY_LIMIT, QueueType, QueueTypeParams};
pub use topology::{Arg, Arguments, Exchange, PER_PROCESS_DEAD_LETTER_TTL, Queue};

use eventing::{Envelope, header};

/// RabbitMQ's own header: why it dead-lettered a message the first time.
pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// RabbitMQ's own header: the queue it dead-lettered a message from the first time.
pub const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";

/// Gives a letter the broker dead-lettered (past a quorum queue's delivery limit,
/// for example), which carries RabbitMQ's [`FIRST_DEATH_REASON`] rather than the
/// runtime's reason header, the standard [`header::DEAD_LETTER_REASON`] and
/// [`header::DEAD_LETTER_QUEUE`]. A letter with a reason already is left as it is.
///
/// ```
/// use eventing::{Envelope, header};
///
/// let mut letter = Envelope::default();
/// letter.headers.insert("x-first-death-reason", "delivery_limit");
/// letter.headers.insert("x-first-death-queue", "shop.Order::Billing");
/// eventing_rabbitmq::explain_dead_letter(&mut letter);
/// assert!(letter.headers.get(header::DEAD_LETTER_REASON).unwrap().contains("delivery limit"));
/// assert_eq!(letter.headers.get(header::DEAD_LETTER_QUEUE), Some("shop.Order::Billing"));
/// ```
pub fn explain_dead_letter(letter: &mut Envelope) {
    if letter.headers.get(header::DEAD_LETTER_REASON).is_some() {
        return;
    }
    let Some(reason) = letter.headers.get(FIRST_DEATH_REASON).map(str::to_owned) else {
        return;
    };
    let why = match reason.as_str() {
        "delivery_limit" => {
            "delivered more often than the queue's delivery limit (x-delivery-limit) without \
             an acknowledgement"
        }
        "rejected" => "rejected without requeueing",
        "expired" => "its time to live ran out",
        "maxlen" => "the queue was over its length limit",
        _ => "dead-lettered by the broker",
    };
    letter.headers.insert(
        header::DEAD_LETTER_REASON,
        format!("{why} (RabbitMQ: {reason})"),
    );
    if letter.headers.get(header::DEAD_LETTER_QUEUE).is_none()
        && let Some(queue) = letter.headers.get(FIRST_DEATH_QUEUE).map(str::to_owned)
    {
        letter.headers.insert(header::DEAD_LETTER_QUEUE, queue);
    }
}
