//! ActiveMQ Classic's topology rules, in one place: how the contract's events,
//! queues and dead-letter queues are named on the broker, which headers it
//! reserves or adds, and how a subscription asks for prefetch. [`Dialect::ActiveMq`](crate::Dialect::ActiveMq)
//! applies them; nothing else in the crate knows ActiveMQ's names.
//!
//! | contract | ActiveMQ | why |
//! |---|---|---|
//! | event `E` (an address) | topic `/topic/VirtualTopic.E` | a *virtual topic*: one `SEND`, and the broker copies the message into every queue named `Consumer.*.VirtualTopic.E`, atomically with the send (the `RECEIPT` of a persistent send comes after the copies are stored); works on a stock broker, no configuration per event |
//! | competing queue `E::L` | queue `/queue/Consumer.L.VirtualTopic.E` | the consumer queue of the virtual topic: instances of `L` share it and compete |
//! | per-process queue `E::L-server` | a subscription to the topic `/topic/VirtualTopic.E` | every live process gets a copy and nothing is left on the broker when it is gone (a queue would keep filling after its server died: ActiveMQ only collects *empty* inactive queues) |
//! | dead letters `<queue>.dlq` | queue `/queue/<queue>.dlq` | the contract's name: ActiveMQ accepts `::` |
//! | delay queue `<queue>.delay.<ms>` (delayed retry stage) | no queue: the copy is sent persistently to the consumer queue itself with `AMQ_SCHEDULED_DELAY: <ms>`, and the broker's job scheduler (KahaDB's scheduler store) holds it until then | ActiveMQ's own mechanism; it needs `schedulerSupport="true"` on the `<broker>` (without it the header is ignored and the copy comes back at once) |
//! | scheduled send of `E` | a `SEND` to `/topic/VirtualTopic.E` with `AMQ_SCHEDULED_DELAY`: when due the scheduler sends it on, and the virtual topic copies it into every consumer queue that exists then | |
//!
//! Declaring a competing queue is a `SUBSCRIBE` with `activemq.prefetchSize:0`
//! (nothing is dispatched) answered by a receipt, then `UNSUBSCRIBE`: the queue
//! exists from then on, so the virtual topic copies every later send into it. A
//! consumer queue created after a send misses that send.
//!
//! Names: `.` separates levels of a destination name and `*`, `>` are wildcards
//! when a name is matched (virtual topics match their consumer queues by
//! `Consumer.*.VirtualTopic.E`); `,` splits a destination into a composite one.
//! The listener part of a consumer queue is one level, so there `.`, `*`, `>`,
//! `,` and `%` are written `%2E`, `%2A`, `%3E`, `%2C` and `%25`; in event names
//! and dead-letter queues `.` stays (it is a harmless level separator) and the
//! others are encoded the same way. The encoding is reversible ([`decode`]) and
//! [`broker_names`] shows it.

use std::time::Duration;

use eventing::topology::QueueSpec;

use crate::frame::Frame;

/// The prefix of ActiveMQ's default virtual topics (`VirtualTopic.>`).
pub const VIRTUAL_TOPIC: &str = "VirtualTopic.";
/// The prefix of their consumer queues (`Consumer.*.`).
pub const CONSUMER: &str = "Consumer.";

/// The message property that makes the broker's scheduler hold a message this
/// many milliseconds before it sends it on.
pub const SCHEDULED_DELAY: &str = "AMQ_SCHEDULED_DELAY";

/// The property the scheduler puts on what it sends on. A `SEND` that carries
/// it is *not* scheduled (the broker takes it for a job being delivered), so it
/// is dropped from received envelopes ([`ADDED`]) and a user header of that
/// name travels escaped ([`PROPERTIES`]).
pub const SCHEDULED_JOB_ID: &str = "scheduledJobId";

/// Names ActiveMQ turns into JMS message fields or acts upon, as frame headers
/// of a `SEND`: an envelope header with one of these names travels escaped.
pub const PROPERTIES: &[&str] = &[
    "AMQ_SCHEDULED_CRON",
    "AMQ_SCHEDULED_DELAY",
    "AMQ_SCHEDULED_ID",
    "AMQ_SCHEDULED_PERIOD",
    "AMQ_SCHEDULED_REPEAT",
    "JMSXGroupID",
    "JMSXGroupSeq",
    "JMSXUserID",
    "correlation-id",
    "expires",
    "original-destination",
    "persistent",
    "priority",
    "redelivered",
    "reply-to",
    "scheduledJobId",
    "timestamp",
    "transformation",
    "type",
];

/// Headers ActiveMQ adds to a `MESSAGE` that are not envelope headers (besides
/// STOMP's own `message-id`, `destination`, `subscription`, `ack`, ...).
pub const ADDED: &[&str] = &[
    "browser",
    "expires",
    "original-destination",
    "priority",
    "scheduledJobId",
    "timestamp",
];

/// The subscription header that bounds unacknowledged messages.
pub const PREFETCH: &str = "activemq.prefetchSize";

/// Whether a header name is ActiveMQ's to interpret (`activemq.*`, `JMS*`).
pub fn reserved_prefix(name: &str) -> bool {
    name.starts_with("activemq.") || name.starts_with("JMS")
}

/// The topic an event is sent to: `/topic/VirtualTopic.<event>`.
pub fn event_destination(event: &str) -> String {
    format!("/topic/{VIRTUAL_TOPIC}{}", encode(event, false))
}

/// The consumer queue of a competing (or singleton) queue:
/// `/queue/Consumer.<listener part>.VirtualTopic.<event>`.
pub fn consumer_queue(queue: &QueueSpec) -> String {
    format!(
        "/queue/{CONSUMER}{}.{VIRTUAL_TOPIC}{}",
        encode(listener_part(queue), true),
        encode(&queue.event, false)
    )
}

/// Where a listener's queue is subscribed: its consumer queue, or, per process,
/// the event's topic itself.
pub fn subscribe_destination(queue: &QueueSpec) -> String {
    if queue.per_process {
        event_destination(&queue.event)
    } else {
        consumer_queue(queue)
    }
}

/// The dead-letter queue of `queue`: `/queue/<queue>.dlq`.
pub fn dead_letter_queue(queue: &QueueSpec) -> String {
    format!("/queue/{}", encode(&queue.dead_letter_queue(), false))
}

/// `frame` (a `SEND`) held by the broker's scheduler for `delay` first:
/// [`SCHEDULED_DELAY`] in whole milliseconds, rounded up so it is never early.
fn scheduled(mut frame: Frame, delay: Duration) -> Frame {
    let millis = delay.as_nanos().div_ceil(1_000_000).max(1);
    frame.push_header(SCHEDULED_DELAY, millis.to_string());
    frame
}

/// The delayed retry stage: `replay` (the persistent `SEND` of a copy to
/// `queue`'s consumer queue alone, as a replay sends it) held for `delay` by the
/// scheduler; `None` for a per-process queue, which is a topic subscription with
/// no queue to come back to.
pub fn delay_frame(queue: &QueueSpec, delay: Duration, replay: Frame) -> Option<Frame> {
    (!queue.per_process).then(|| scheduled(replay, delay))
}

/// A scheduled send: `send` (the `SEND` of an event to its virtual topic) held
/// for `delay` by the scheduler, then copied into the consumer queues that exist.
pub fn scheduled_frame(delay: Duration, send: Frame) -> Frame {
    scheduled(send, delay)
}

/// What `topology()` shows for `queue` on ActiveMQ.
pub fn broker_names(queue: &QueueSpec) -> String {
    let dlq = dead_letter_queue(queue);
    if queue.per_process {
        format!(
            "subscription to {} (no queue; gone with its session), dead letters {dlq}",
            event_destination(&queue.event)
        )
    } else if queue.retry_delays.is_empty() {
        format!(
            "{} fed by {}, dead letters {dlq}",
            consumer_queue(queue),
            event_destination(&queue.event)
        )
    } else {
        format!(
            "{} fed by {}, dead letters {dlq}, delayed retries held by the broker's \
             scheduler for that queue ({SCHEDULED_DELAY})",
            consumer_queue(queue),
            event_destination(&queue.event)
        )
    }
}

/// What follows `<event>::` in the queue's name: the listener, or
/// `<listener>-<server>`, or `singleton`.
fn listener_part(queue: &QueueSpec) -> &str {
    queue
        .name
        .strip_prefix(queue.event.as_str())
        .and_then(|rest| rest.strip_prefix("::"))
        .unwrap_or(&queue.name)
}

/// Writes the characters ActiveMQ gives a meaning to as `%XX`: `*`, `>`, `,`,
/// `%`, and with `level` (a single level of a name) also `.`.
pub fn encode(name: &str, level: bool) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '*' => out.push_str("%2A"),
            '>' => out.push_str("%3E"),
            ',' => out.push_str("%2C"),
            '.' if level => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`encode`].
pub fn decode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3);
        let c = match code {
            Some("25") => Some('%'),
            Some("2A") => Some('*'),
            Some("3E") => Some('>'),
            Some("2C") => Some(','),
            Some("2E") => Some('.'),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A unique `client-id` for one connection: ActiveMQ refuses a `CONNECT` with
/// the id of a connection it has not finished closing.
pub fn client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "eventing-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_virtual_topic_conventions() {
        let competing = QueueSpec::new("shop.Order", "Billing", true, false, "web-1");
        assert_eq!(
            event_destination("shop.Order"),
            "/topic/VirtualTopic.shop.Order"
        );
        assert_eq!(
            consumer_queue(&competing),
            "/queue/Consumer.Billing.VirtualTopic.shop.Order"
        );
        assert_eq!(
            subscribe_destination(&competing),
            consumer_queue(&competing)
        );
        assert_eq!(
            dead_letter_queue(&competing),
            "/queue/shop.Order::Billing.dlq"
        );
        let per_process = QueueSpec::new("shop.Order", "Cache", true, true, "web-1.example.com");
        assert_eq!(
            subscribe_destination(&per_process),
            "/topic/VirtualTopic.shop.Order"
        );
        assert_eq!(
            consumer_queue(&per_process),
            "/queue/Consumer.Cache-web-1%2Eexample%2Ecom.VirtualTopic.shop.Order"
        );
        let singleton = QueueSpec::singleton("E", "Invoicer", true);
        assert_eq!(
            consumer_queue(&singleton),
            "/queue/Consumer.singleton.VirtualTopic.E"
        );
        assert!(broker_names(&competing).contains("Consumer.Billing"));
        assert!(broker_names(&per_process).contains("no queue"));
    }

    #[test]
    fn wildcards_and_composites_are_encoded_reversibly() {
        let odd = QueueSpec::new("a,b>c*", "L.x%", true, false, "s");
        let queue = consumer_queue(&odd);
        assert_eq!(queue, "/queue/Consumer.L%2Ex%25.VirtualTopic.a%2Cb%3Ec%2A");
        assert!(!queue.contains([',', '*', '>']));
        assert_eq!(dead_letter_queue(&odd), "/queue/a%2Cb%3Ec%2A::L.x%25.dlq");
        for name in ["a,b>c*", "L.x%", "100%", "%2E", "plain", "%", "%2"] {
            assert_eq!(decode(&encode(name, true)), name);
            assert_eq!(decode(&encode(name, false)), name);
        }
    }

    #[test]
    fn delayed_sends_carry_the_scheduler_property() {
        let queue = QueueSpec::new("E", "L", true, false, "s");
        let replay = Frame::new(crate::frame::Command::Send).header("destination", "/queue/x");
        let frame = delay_frame(&queue, Duration::from_micros(1500), replay.clone())
            .expect("a competing queue");
        assert_eq!(frame.get(SCHEDULED_DELAY), Some("2"), "rounded up");
        let per_process = QueueSpec::new("E", "L", true, true, "s");
        assert!(delay_frame(&per_process, Duration::from_secs(1), replay.clone()).is_none());
        let send = scheduled_frame(Duration::from_secs(3), replay);
        assert_eq!(send.get(SCHEDULED_DELAY), Some("3000"));
        assert!(ADDED.contains(&SCHEDULED_JOB_ID));
        assert!(PROPERTIES.contains(&SCHEDULED_JOB_ID) && PROPERTIES.contains(&SCHEDULED_DELAY));
    }

    #[test]
    fn client_ids_are_unique() {
        let a = client_id();
        let b = client_id();
        assert_ne!(a, b);
        assert!(a.starts_with("eventing-"));
    }
}
