//! What eventing declares on RabbitMQ, as data both providers apply.
//!
//! | what | RabbitMQ |
//! |---|---|
//! | event `<event>` | fanout exchange `<event>`, durable if the event is |
//! | competing listener | queue `<event>::<listener>`, durable, bound to the exchange |
//! | per-process listener | queue `<event>::<listener>-<server>`, exclusive (deleted with its connection) |
//! | dead letters | queue `<queue>.dlq`, durable; for per-process queues with `x-expires` ([`PER_PROCESS_DEAD_LETTER_TTL`]) |
//!
//! Every queue is durable or exclusive: RabbitMQ 4 deprecates transient
//! non-exclusive queues. A queue of a non-durable event is durable too, but its
//! messages are transient and do not survive a broker restart.
//!
//! With [`QueueType::Quorum`] competing queues and their dead-letter queues are
//! quorum queues (replicated on a cluster). A competing queue then gets
//! `x-delivery-limit` and dead-letters through the broker itself:
//! `x-dead-letter-exchange: ""` and `x-dead-letter-routing-key: <queue>.dlq`, so a
//! message the broker delivered more often than the limit (consumers that keep
//! dying or requeueing it) ends in the same `.dlq` as the runtime's own dead
//! letters, marked with RabbitMQ's `x-first-death-reason`
//! ([`explain_dead_letter`](crate::explain_dead_letter) turns that into the usual
//! reason). Broker dead-lettering is at-least-once (`x-dead-letter-strategy:
//! at-least-once`, which needs `x-overflow: reject-publish`). Per-process queues
//! are exclusive, which quorum queues cannot be: they and their dead-letter
//! queues stay classic. A dead-letter queue has no delivery limit: reading dead
//! letters returns them unacknowledged.

use std::time::Duration;

use eventing::topology::QueueSpec;

use crate::QueueType;

/// How long the dead-letter queue of a per-process queue outlives its last use
/// (consumer, declaration or read) before the broker deletes it (`x-expires`).
pub const PER_PROCESS_DEAD_LETTER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The kind of every event's exchange.
pub const EXCHANGE_KIND: &str = "fanout";

/// A queue argument's value, in the AMQP field-table types the rules use. Not
/// `non_exhaustive`: each provider's encoder matches every variant, so one added
/// here fails to compile there rather than at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A long string (`S`).
    Str(String),
    /// A signed 64-bit integer (`l`).
    Int(i64),
    /// A boolean (`t`).
    Bool(bool),
}

/// Queue arguments (`x-...`), in the order they are declared.
pub type Arguments = Vec<(&'static str, Arg)>;

/// An event's exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exchange {
    /// The event's address.
    pub name: String,
    /// Survives a broker restart (the event is durable).
    pub durable: bool,
}

impl Exchange {
    /// Its kind: [`EXCHANGE_KIND`].
    pub fn kind(&self) -> &'static str {
        EXCHANGE_KIND
    }
}

/// A queue declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Queue {
    /// The queue's name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by the declaring connection, deleted with it.
    pub exclusive: bool,
    /// Its arguments.
    pub arguments: Arguments,
}

impl Queue {
    /// The value of argument `name`, if the queue has it.
    pub fn argument(&self, name: &str) -> Option<&Arg> {
        self.arguments
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Whether it is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        self.argument("x-queue-type") == Some(&Arg::Str("quorum".into()))
    }
}

/// The exchange of the event `address`: fanout, durable if the event is.
pub fn exchange(address: &str, durable: bool) -> Exchange {
    Exchange {
        name: address.to_string(),
        durable,
    }
}

/// The queue of `spec`: durable for a competing listener (with the quorum
/// arguments when `queue_type` asks), exclusive for a per-process one.
pub fn queue(spec: &QueueSpec, queue_type: QueueType) -> Queue {
    let mut arguments = Arguments::new();
    if let Some(limit) = queue_type.quorum_for(spec.per_process) {
        let text = |value: &str| Arg::Str(value.to_string());
        arguments.push(("x-queue-type", text("quorum")));
        arguments.push(("x-delivery-limit", Arg::Int(i64::from(limit))));
        arguments.push(("x-dead-letter-exchange", text("")));
        arguments.push(("x-dead-letter-routing-key", text(&spec.dead_letter_queue())));
        arguments.push(("x-dead-letter-strategy", text("at-least-once")));
        arguments.push(("x-overflow", text("reject-publish")));
    }
    Queue {
        name: spec.name.clone(),
        durable: !spec.per_process,
        exclusive: spec.per_process,
        arguments,
    }
}

/// The dead-letter queue of `spec` (`<queue>.dlq`): durable; expiring
/// [`PER_PROCESS_DEAD_LETTER_TTL`] after its last use for a per-process queue; a
/// quorum queue (without a delivery limit) beside a quorum queue.
pub fn dead_letter_queue(spec: &QueueSpec, queue_type: QueueType) -> Queue {
    let mut arguments = Arguments::new();
    if spec.per_process {
        let ttl = i64::try_from(PER_PROCESS_DEAD_LETTER_TTL.as_millis()).unwrap_or(i64::MAX);
        arguments.push(("x-expires", Arg::Int(ttl)));
    }
    if queue_type.quorum_for(spec.per_process).is_some() {
        arguments.push(("x-queue-type", Arg::Str("quorum".into())));
    }
    Queue {
        name: spec.dead_letter_queue(),
        durable: true,
        exclusive: false,
        arguments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_process: bool) -> QueueSpec {
        QueueSpec::new("shop.Order", "Billing", true, per_process, "web-1")
    }

    #[test]
    fn classic_queues_have_no_arguments_but_the_per_process_dlq_expiry() {
        let competing = queue(&spec(false), QueueType::Classic);
        assert_eq!(competing.name, "shop.Order::Billing");
        assert!(competing.durable && !competing.exclusive);
        assert!(competing.arguments.is_empty());
        let per_process = queue(&spec(true), QueueType::Classic);
        assert_eq!(per_process.name, "shop.Order::Billing-web-1");
        assert!(!per_process.durable && per_process.exclusive);
        let dlq = dead_letter_queue(&spec(false), QueueType::Classic);
        assert_eq!(dlq.name, "shop.Order::Billing.dlq");
        assert!(dlq.durable && !dlq.exclusive && dlq.arguments.is_empty());
        let expiring = dead_letter_queue(&spec(true), QueueType::Classic);
        assert_eq!(
            expiring.arguments,
            [("x-expires", Arg::Int(7 * 24 * 3600 * 1000))]
        );
    }

    #[test]
    fn quorum_queues_dead_letter_through_the_broker() {
        let quorum = QueueType::Quorum { delivery_limit: 7 };
        let competing = queue(&spec(false), quorum);
        assert!(competing.is_quorum());
        assert_eq!(
            competing.arguments,
            [
                ("x-queue-type", Arg::Str("quorum".into())),
                ("x-delivery-limit", Arg::Int(7)),
                ("x-dead-letter-exchange", Arg::Str(String::new())),
                (
                    "x-dead-letter-routing-key",
                    Arg::Str("shop.Order::Billing.dlq".into())
                ),
                ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
                ("x-overflow", Arg::Str("reject-publish".into())),
            ]
        );
        let dlq = dead_letter_queue(&spec(false), quorum);
        assert!(dlq.is_quorum());
        assert_eq!(dlq.argument("x-delivery-limit"), None);
        assert!(
            !queue(&spec(true), quorum).is_quorum(),
            "exclusive: classic"
        );
        assert!(!dead_letter_queue(&spec(true), quorum).is_quorum());
    }

    #[test]
    fn an_events_exchange_is_a_fanout() {
        let durable = exchange("shop.Order", true);
        assert_eq!(
            (durable.name.as_str(), durable.kind()),
            ("shop.Order", "fanout")
        );
        assert!(durable.durable);
        assert!(!exchange("shop.Ping", false).durable);
    }
}
