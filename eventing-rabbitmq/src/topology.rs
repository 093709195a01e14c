//! What eventing declares on RabbitMQ, as data both providers apply.
//!
//! | what | RabbitMQ |
//! |---|---|
//! | event `<event>` | fanout exchange `<event>`, durable if the event is |
//! | competing listener | queue `<event>::<listener>`, durable, bound to the exchange |
//! | per-process listener | queue `<event>::<listener>-<server>`, exclusive (deleted with its connection) |
//! | dead letters | queue `<queue>.dlq`, durable; for per-process queues with `x-expires` ([`PER_PROCESS_DEAD_LETTER_TTL`]) |
//! | delayed retry after `d` | queue `<queue>.delay.<ms>` ([`delay_queue`]): durable, `x-message-ttl` = `d`, dead-lettering through the default exchange back to `<queue>` only |
//! | scheduled send after `d` | queue `<event>.schedule.<ms>` ([`schedule_queue`]): durable, `x-message-ttl` = `d` rounded up ([`schedule_delay`]), dead-lettering to the event's exchange, `x-expires` |
//!
//! Delayed messages wait in queues whose every message has the same time to live
//! (the queue's `x-message-ttl`), so the oldest always expires first and none
//! waits behind a longer one: RabbitMQ only expires messages at the head of a
//! queue, which is why per-message TTL in one shared queue would not do. No
//! plugin is needed. Queues made on demand (scheduled sends, and the delay queues
//! of per-process listeners, whose queue goes away with its server) carry
//! `x-expires` of their delay plus [`ON_DEMAND_EXPIRY_MARGIN`] and are declared
//! again before use when their last declaration is older than [`ON_DEMAND_REFRESH`]:
//! a queue is "unused" for `x-expires` only without declarations (messages do not
//! count), so one declared at most [`ON_DEMAND_REFRESH`] before a message arrived
//! outlives that message's wait.
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

/// The longest delay a queue's `x-message-ttl` holds: 2^32 - 1 ms (about 49.7 days).
pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// Queues made on demand are declared again before use when their last
/// declaration by this process is older than this.
pub const ON_DEMAND_REFRESH: Duration = Duration::from_secs(60);

/// How much longer than its delay (plus [`ON_DEMAND_REFRESH`]) an on-demand queue
/// lives without a declaration (`x-expires`).
pub const ON_DEMAND_EXPIRY_MARGIN: Duration = Duration::from_secs(600);

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

fn millis(delay: Duration) -> i64 {
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}

/// `x-expires` of a queue made on demand whose messages wait `delay`.
fn on_demand_expiry(delay: Duration) -> Arg {
    Arg::Int(millis(delay + ON_DEMAND_REFRESH + ON_DEMAND_EXPIRY_MARGIN))
}

/// Whether the queue [`delay_queue`] gives for `spec` is made on demand (declared
/// again before use, see the module docs): those of per-process listeners.
pub fn delay_queue_on_demand(spec: &QueueSpec) -> bool {
    spec.per_process
}

/// Where messages of `spec` wait `delay` in the delayed retry stage:
/// `<queue>.delay.<ms>` ([`QueueSpec::delay_queue`]), durable, every message
/// living `delay` (`x-message-ttl`) and then dead-lettered through the default
/// exchange to `<queue>` alone, so the event's other listeners do not get it
/// again. Classic whatever the queue type (a quorum queue's `x-overflow:
/// reject-publish` does not apply to it). For a per-process queue it expires when
/// unused ([`delay_queue_on_demand`]); its waiting messages are dropped if the
/// queue they return to is gone, as that queue's own messages were.
pub fn delay_queue(spec: &QueueSpec, delay: Duration) -> Queue {
    let text = |value: &str| Arg::Str(value.to_string());
    let mut arguments = vec![
        ("x-message-ttl", Arg::Int(millis(delay))),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&spec.name)),
    ];
    if delay_queue_on_demand(spec) {
        arguments.push(("x-expires", on_demand_expiry(delay)));
    }
    Queue {
        name: spec.delay_queue(delay),
        durable: true,
        exclusive: false,
        arguments,
    }
}

/// The delay a scheduled send of `delay` waits on RabbitMQ: rounded up to 100 ms
/// below a minute, to a second below an hour, to a minute beyond, so that a
/// handful of queues serve any mix of delays. That rounding, plus the broker's own
/// latency, is how late a scheduled send may arrive; never early. `None` above
/// [`MAX_DELAY`] or for zero.
///
/// ```
/// use std::time::Duration;
/// use eventing_rabbitmq::topology::schedule_delay;
/// assert_eq!(schedule_delay(Duration::from_millis(1234)), Some(Duration::from_millis(1300)));
/// assert_eq!(schedule_delay(Duration::from_millis(90_500)), Some(Duration::from_secs(91)));
/// assert_eq!(schedule_delay(Duration::from_secs(3_601)), Some(Duration::from_secs(3_660)));
/// assert_eq!(schedule_delay(Duration::from_secs(60 * 24 * 3600)), None);
/// ```
pub fn schedule_delay(delay: Duration) -> Option<Duration> {
    if delay.is_zero() {
        return None;
    }
    let ms = delay.as_nanos().div_ceil(1_000_000);
    let step: u128 = if ms < 60_000 {
        100
    } else if ms < 3_600_000 {
        1_000
    } else {
        60_000
    };
    let rounded = Duration::from_millis(u64::try_from(ms.div_ceil(step) * step).ok()?);
    (rounded <= MAX_DELAY).then_some(rounded)
}

/// Where a scheduled send of the event `address` waits `delay` (as
/// [`schedule_delay`] rounded it): `<event>.schedule.<ms>`, durable, every message
/// living `delay` and then dead-lettered to the event's fanout exchange, so every
/// queue bound to it then gets it. Made on demand: it expires when unused (see the
/// module docs).
pub fn schedule_queue(address: &str, delay: Duration) -> Queue {
    Queue {
        name: format!("{address}.schedule.{}", delay.as_millis()),
        durable: true,
        exclusive: false,
        arguments: vec![
            ("x-message-ttl", Arg::Int(millis(delay))),
            ("x-dead-letter-exchange", Arg::Str(address.to_string())),
            ("x-expires", on_demand_expiry(delay)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_dead_letter_back_to_their_queue_only() {
        let spec = spec(false);
        let queue = delay_queue(&spec, Duration::from_secs(5));
        assert_eq!(queue.name, "shop.Order::Billing.delay.5000");
        assert!(queue.durable && !queue.exclusive && !queue.is_quorum());
        assert_eq!(
            queue.arguments,
            [
                ("x-message-ttl", Arg::Int(5000)),
                ("x-dead-letter-exchange", Arg::Str(String::new())),
                (
                    "x-dead-letter-routing-key",
                    Arg::Str("shop.Order::Billing".into())
                ),
            ]
        );
        let per_process = delay_queue(&super::tests::spec(true), Duration::from_secs(5));
        assert_eq!(per_process.name, "shop.Order::Billing-web-1.delay.5000");
        assert_eq!(
            per_process.argument("x-expires"),
            Some(&Arg::Int(5000 + 60_000 + 600_000))
        );
    }

    #[test]
    fn schedule_queues_dead_letter_to_the_event() {
        let queue = schedule_queue("shop.Order", Duration::from_millis(1300));
        assert_eq!(queue.name, "shop.Order.schedule.1300");
        assert_eq!(
            queue.argument("x-dead-letter-exchange"),
            Some(&Arg::Str("shop.Order".into()))
        );
        assert_eq!(queue.argument("x-message-ttl"), Some(&Arg::Int(1300)));
        assert_eq!(
            schedule_delay(Duration::from_millis(1)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(schedule_delay(Duration::ZERO), None);
        assert_eq!(schedule_delay(MAX_DELAY + Duration::from_secs(1)), None);
    }

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
