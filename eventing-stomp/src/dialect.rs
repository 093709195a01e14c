//! How events, queues and envelope headers map onto one broker's STOMP.
//!
//! STOMP leaves destinations and most headers to the broker, so the mapping is
//! chosen per broker with [`Dialect`]:
//!
//! | | RabbitMQ (`broker=rabbitmq`) | ActiveMQ Classic (`broker=activemq`) | Artemis (`broker=artemis`) |
//! |---|---|---|---|
//! | send an event | `/exchange/<event>` (a fanout exchange, declared beforehand) | `/topic/VirtualTopic.<event>` | `<event>` with `destination-type:MULTICAST` |
//! | a listener's queue | `/exchange/<event>` + `x-queue-name:<queue>` | `/queue/Consumer.<listener>.VirtualTopic.<event>`; per process, the topic itself | `<event>::<queue>` (fully-qualified queue name) |
//! | dead letters | `/amq/queue/<queue>.dlq` (declared beforehand) | `/queue/<queue>.dlq` | `<queue>.dlq` with `destination-type:ANYCAST` |
//!
//! Without `broker` in the URL the dialect is the one the `server` header of
//! `CONNECTED` names (RabbitMQ when it names none we know); ActiveMQ's rules are
//! in [`crate::activemq`].
//!
//! Envelope headers travel as frame headers. A header whose name the broker
//! reserves (STOMP's own, and names a broker turns into message properties or
//! acts upon, such as RabbitMQ's `expiration` or `user-id`) is sent as
//! [`ESCAPE_PREFIX`]`<name>` and renamed back on receipt, so no pipeline header
//! can change how the broker treats a message. On RabbitMQ the standard headers
//! meet the AMQP provider's lean mapping, so a default event leaves the plugin no
//! headers table to build, store and turn back into frame headers: `message-id`
//! travels as `amqp-message-id` (the AMQP `message_id` property), `event` as
//! `type`, `content-type` as the `content_type` property, and a `timestamp` of the
//! current second (what [`Envelope::new`] stamps) as the `timestamp` property in
//! seconds. An older or finer timestamp (a replay's, an outbox relay's, a user's)
//! travels exactly as sent under the escaped name. On receipt the properties are
//! read back (`type` as `event`, `timestamp` as `YYYY-MM-DDTHH:MM:SSZ`) when the
//! frame has no header of that name, so messages of the earlier format (an `event`
//! header, the escaped timestamp) and of AMQP clients are read alike.

use std::time::{Duration, UNIX_EPOCH};

use eventing::topology::QueueSpec;
use eventing::{Envelope, Headers, header};

use crate::activemq;
use crate::frame::{Command, Frame};

use eventing_rabbitmq::QueueType;
/// The prefix that carries an envelope header whose name the broker reserves.
pub use eventing_rabbitmq::wire::ESCAPE_PREFIX;
use eventing_rabbitmq::wire::{STOMP_HEADERS, STOMP_PLUGIN_PROPERTIES as RABBITMQ_PROPERTIES};

/// Names Artemis turns into message properties or acts upon.
const ARTEMIS_PROPERTIES: &[&str] = &[
    "correlation-id",
    "destination-type",
    "expires",
    "persistent",
    "priority",
    "reply-to",
    "subscription-type",
    "timestamp",
    "type",
];

/// Frame headers a broker adds to `MESSAGE` frames that are not envelope headers.
const MESSAGE_ONLY: &[&str] = &[
    "ack",
    "content-length",
    "destination",
    "persistent",
    "receipt",
    "redelivered",
    "subscription",
];

/// RabbitMQ's limit for AMQP short strings (`message_id`, `content_type`).
const SHORT_STRING: usize = 255;

/// A broker's STOMP conventions: destinations, subscription headers and
/// header mapping.
///
/// ```
/// use eventing::topology::QueueSpec;
/// use eventing_stomp::Dialect;
///
/// let queue = QueueSpec::new("Order", "Billing", true, false, "web-1");
/// assert_eq!(Dialect::RabbitMq.send_destination("Order"), "/exchange/Order");
/// assert_eq!(Dialect::RabbitMq.dead_letter_destination(&queue), "/amq/queue/Order::Billing.dlq");
/// assert_eq!(Dialect::Artemis.subscribe_destination(&queue), "Order::Order::Billing");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// RabbitMQ's STOMP plugin: one fanout exchange per event, queues named by
    /// `x-queue-name`.
    #[default]
    RabbitMq,
    /// ActiveMQ Artemis: multicast addresses per event, anycast queues named by
    /// fully-qualified queue names `<address>::<queue>`.
    Artemis,
    /// ActiveMQ Classic: a virtual topic per event, a consumer queue per
    /// competing listener, a topic subscription per process ([`crate::activemq`]).
    ActiveMq,
}

impl Dialect {
    /// The dialect of the broker a `CONNECTED` frame's `server` header names
    /// (`RabbitMQ/3.10.8`, `ActiveMQ/5.17.2`, `ActiveMQ-Artemis/2.31.2 ...`).
    ///
    /// ```
    /// use eventing_stomp::Dialect;
    ///
    /// assert_eq!(Dialect::from_server("ActiveMQ/5.17.2"), Some(Dialect::ActiveMq));
    /// assert_eq!(Dialect::from_server("ActiveMQ-Artemis/2.31.2 ActiveMQ Artemis Messaging Engine"), Some(Dialect::Artemis));
    /// assert_eq!(Dialect::from_server("RabbitMQ/3.10.8"), Some(Dialect::RabbitMq));
    /// assert_eq!(Dialect::from_server("Apollo/1.7"), None);
    /// ```
    pub fn from_server(server: &str) -> Option<Dialect> {
        let product = server.split('/').next().unwrap_or("").trim();
        match product {
            "RabbitMQ" => Some(Dialect::RabbitMq),
            "ActiveMQ" => Some(Dialect::ActiveMq),
            p if p.starts_with("ActiveMQ-Artemis") || p.starts_with("Artemis") => {
                Some(Dialect::Artemis)
            }
            _ => None,
        }
    }

    /// The name of the `broker` URL parameter's value for this dialect.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::RabbitMq => "rabbitmq",
            Dialect::Artemis => "artemis",
            Dialect::ActiveMq => "activemq",
        }
    }

    /// Whether a requeue is a `NACK`. ActiveMQ moves a `NACK`ed message to its
    /// own dead-letter queue (`ActiveMQ.DLQ`) instead, so there a requeue hands
    /// the message to the subscription again locally (see the `consumer` module).
    pub(crate) fn nack_requeues(self) -> bool {
        self != Dialect::ActiveMq
    }

    /// Whether event exchanges must be declared out of band before use (the
    /// RabbitMQ STOMP plugin does not create `/exchange/` destinations).
    pub fn needs_exchanges(self) -> bool {
        matches!(self, Dialect::RabbitMq)
    }

    /// Where events named `event` are sent.
    pub fn send_destination(self, event: &str) -> String {
        match self {
            Dialect::RabbitMq => format!("/exchange/{}", rabbit_segment(event)),
            Dialect::Artemis => event.to_string(),
            Dialect::ActiveMq => activemq::event_destination(event),
        }
    }

    /// The destination a listener's queue is subscribed with.
    pub fn subscribe_destination(self, queue: &QueueSpec) -> String {
        match self {
            Dialect::RabbitMq => self.send_destination(&queue.event),
            Dialect::Artemis => format!("{}::{}", queue.event, queue.name),
            Dialect::ActiveMq => activemq::subscribe_destination(queue),
        }
    }

    /// Where dead letters of `queue` are sent (its `<queue>.dlq`).
    pub fn dead_letter_destination(self, queue: &QueueSpec) -> String {
        let dlq = queue.dead_letter_queue();
        match self {
            Dialect::RabbitMq => format!("/amq/queue/{}", rabbit_segment(&dlq)),
            Dialect::Artemis => dlq,
            Dialect::ActiveMq => activemq::dead_letter_queue(queue),
        }
    }

    /// Where a message for one queue only is sent: the queue itself (RabbitMQ's
    /// default exchange, Artemis's fully qualified queue name), not the event's
    /// address that every queue of the event is bound to.
    pub fn queue_destination(self, queue: &QueueSpec) -> String {
        match self {
            Dialect::RabbitMq => format!("/amq/queue/{}", rabbit_segment(&queue.name)),
            Dialect::Artemis => self.subscribe_destination(queue),
            // A per-process listener has no queue on ActiveMQ: its consumer queue's
            // name is never subscribed, so a message sent there stays unread
            // (the provider refuses that case before it gets here).
            Dialect::ActiveMq => activemq::consumer_queue(queue),
        }
    }

    /// A persistent `SEND` of `envelope` to `queue` alone (a replayed dead letter).
    pub fn replay_frame(self, queue: &QueueSpec, envelope: &Envelope) -> Frame {
        let destination = self.queue_destination(queue);
        self.send_to(destination, "ANYCAST", envelope, true)
    }

    /// A `SEND` of `envelope` for the event `event`: destination, routing
    /// headers and the envelope's headers (no receipt).
    pub fn send_frame(self, event: &str, envelope: &Envelope, durable: bool) -> Frame {
        let destination = self.send_destination(event);
        self.send_to(destination, "MULTICAST", envelope, durable)
    }

    /// A `SEND` of `envelope` that reaches `queue` alone after `delay` (the
    /// delayed retry stage), persistent if the queue is durable; `None` if this
    /// dialect has no way. RabbitMQ: to the delay queue `<queue>.delay.<ms>`
    /// (declared with the queue), whose time to live sends it on to the queue.
    pub fn delay_frame(
        self,
        queue: &QueueSpec,
        delay: std::time::Duration,
        envelope: &Envelope,
    ) -> Option<Frame> {
        match self {
            Dialect::RabbitMq => {
                let waiting = queue.delay_queue(delay);
                let destination = format!("/amq/queue/{}", rabbit_segment(&waiting));
                Some(self.send_to(destination, "ANYCAST", envelope, queue.durable))
            }
            // ActiveMQ: its scheduler (issue 15, part 2).
            Dialect::ActiveMq => {
                activemq::delay_frame(queue, delay, self.replay_frame(queue, envelope))
            }
            Dialect::Artemis => None,
        }
    }

    /// A `SEND` of `envelope` for the event `event` that the broker holds for
    /// `delay` first (a scheduled send); `None` if this dialect has no way.
    /// RabbitMQ: to the queue `waiting` (`<event>.schedule.<ms>`, made on
    /// demand), whose time to live sends it on to the event's exchange.
    pub fn scheduled_frame(
        self,
        event: &str,
        waiting: &str,
        delay: std::time::Duration,
        envelope: &Envelope,
        durable: bool,
    ) -> Option<Frame> {
        match self {
            Dialect::RabbitMq => {
                let destination = format!("/amq/queue/{}", rabbit_segment(waiting));
                Some(self.send_to(destination, "ANYCAST", envelope, durable))
            }
            // ActiveMQ: its scheduler (issue 15, part 2).
            Dialect::ActiveMq => Some(activemq::scheduled_frame(
                delay,
                self.send_frame(event, envelope, durable),
            )),
            Dialect::Artemis => None,
        }
    }

    /// A `SEND` of a dead letter of `queue`.
    pub fn dead_letter_frame(self, queue: &QueueSpec, envelope: &Envelope) -> Frame {
        let destination = self.dead_letter_destination(queue);
        self.send_to(destination, "ANYCAST", envelope, true)
    }

    fn send_to(
        self,
        destination: String,
        routing: &str,
        envelope: &Envelope,
        durable: bool,
    ) -> Frame {
        let mut frame = Frame {
            command: Command::Send,
            headers: Vec::with_capacity(envelope.headers.len() + 4),
            body: envelope.body.clone(),
        };
        frame.push_header("destination", destination);
        if self == Dialect::Artemis {
            frame.push_header("destination-type", routing);
        }
        if durable {
            frame.push_header("persistent", "true");
        }
        self.encode_headers(&envelope.headers, &mut frame.headers);
        frame
    }

    /// Why the broker would reject `frame` (and close the session), if it
    /// would: RabbitMQ stores header names as AMQP short strings.
    pub(crate) fn unsendable(self, frame: &Frame) -> Option<String> {
        if self != Dialect::RabbitMq {
            return None;
        }
        frame
            .headers
            .iter()
            .find(|(name, _)| name.len() > SHORT_STRING)
            .map(|(name, _)| {
                let start: String = name.chars().take(40).collect();
                format!("header name `{start}...` is over {SHORT_STRING} bytes")
            })
    }

    /// [`subscribe_frame`](Self::subscribe_frame) for a broker whose competing
    /// queues are of `queue_type`. A RabbitMQ quorum queue is subscribed to as
    /// `/amq/queue/<queue>`, which does not declare it: it was declared
    /// beforehand (over AMQP), and a declaration from the STOMP plugin would be
    /// refused as inequivalent, since the plugin cannot pass all of a quorum
    /// queue's arguments (`x-overflow`, `x-dead-letter-strategy`).
    ///
    /// ```
    /// use eventing::topology::QueueSpec;
    /// use eventing_rabbitmq::QueueType;
    /// use eventing_stomp::Dialect;
    ///
    /// let queue = QueueSpec::new("Order", "Billing", true, false, "web-1");
    /// let quorum = QueueType::Quorum { delivery_limit: 5 };
    /// let frame = Dialect::RabbitMq.subscribe_frame_with(&queue, "0", 10, quorum);
    /// assert_eq!(frame.get("destination"), Some("/amq/queue/Order::Billing"));
    /// assert_eq!(frame.get("x-queue-name"), None);
    /// ```
    pub fn subscribe_frame_with(
        self,
        queue: &QueueSpec,
        id: &str,
        prefetch: u16,
        queue_type: QueueType,
    ) -> Frame {
        if self != Dialect::RabbitMq || queue_type.quorum_for(queue.per_process).is_none() {
            return self.subscribe_frame(queue, id, prefetch);
        }
        Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", self.queue_destination(queue))
            .header("ack", "client-individual")
            .header("prefetch-count", prefetch.max(1).to_string())
    }

    /// A `SUBSCRIBE` to `queue` with subscription `id`, individual client
    /// acknowledgements and at most `prefetch` unacknowledged messages.
    ///
    /// On RabbitMQ, competing queues are durable (every queue is durable or
    /// exclusive) and per-process queues exclusive to the connection, so they
    /// disappear with their server.
    pub fn subscribe_frame(self, queue: &QueueSpec, id: &str, prefetch: u16) -> Frame {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", self.subscribe_destination(queue))
            .header("ack", "client-individual");
        match self {
            Dialect::RabbitMq => {
                let per_process = queue.per_process;
                frame.push_header("x-queue-name", queue.name.clone());
                frame.push_header("durable", bool_text(!per_process));
                frame.push_header("auto-delete", bool_text(per_process));
                frame.push_header("exclusive", bool_text(per_process));
                frame.push_header("prefetch-count", prefetch.max(1).to_string());
            }
            Dialect::Artemis => {
                frame.push_header("subscription-type", "MULTICAST");
            }
            Dialect::ActiveMq => {
                frame.push_header(activemq::PREFETCH, prefetch.max(1).to_string());
            }
        }
        frame
    }

    /// ActiveMQ: a `SUBSCRIBE` that creates `queue`'s consumer queue without
    /// taking any of its messages (prefetch 0), to be answered by a receipt and
    /// followed by an `UNSUBSCRIBE`. `None` where a queue needs no declaring.
    pub(crate) fn declare_frame(self, queue: &QueueSpec, id: &str) -> Option<Frame> {
        (self == Dialect::ActiveMq && !queue.per_process).then(|| {
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", activemq::consumer_queue(queue))
                .header("ack", "client-individual")
                .header(activemq::PREFETCH, "0")
        })
    }

    /// A `SUBSCRIBE` that reads (and, on disconnect, leaves) up to `limit`
    /// dead letters of `queue`.
    pub fn dead_letter_browse_frame(self, queue: &QueueSpec, id: &str, limit: u16) -> Frame {
        self.dead_letter_subscription(queue, id, limit, true)
    }

    /// A `SUBSCRIBE` that takes up to `limit` dead letters of `queue` at a time,
    /// each removed once it is acknowledged (for replaying them).
    pub fn dead_letter_take_frame(self, queue: &QueueSpec, id: &str, limit: u16) -> Frame {
        self.dead_letter_subscription(queue, id, limit, false)
    }

    fn dead_letter_subscription(
        self,
        queue: &QueueSpec,
        id: &str,
        limit: u16,
        browse: bool,
    ) -> Frame {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", self.dead_letter_destination(queue))
            .header("ack", "client-individual");
        match self {
            Dialect::RabbitMq => frame.push_header("prefetch-count", limit.max(1).to_string()),
            // A browse sees at most the queue's `maxBrowsePageSize` (ActiveMQ's
            // default: 400) messages; a consuming subscription no more than its
            // `maxPageSize` (200) unacknowledged ones. The broker's policy has to
            // raise the first for longer listings (docs/stomp.md#activemq).
            Dialect::ActiveMq => {
                frame.push_header(activemq::PREFETCH, limit.max(1).to_string());
                if browse {
                    frame.push_header("browser", "true");
                }
            }
            Dialect::Artemis => {
                frame.push_header("subscription-type", "ANYCAST");
                if browse {
                    frame.push_header("browser", "true");
                }
            }
        }
        frame
    }

    /// Whether an envelope header called `name` travels as
    /// [`ESCAPE_PREFIX`]`<name>`: STOMP 1.2's own header names, the names the
    /// broker maps to message properties or acts upon, and names that already
    /// start with the prefix.
    ///
    /// ```
    /// use eventing_stomp::Dialect;
    ///
    /// assert!(Dialect::RabbitMq.reserves("reply-to"));
    /// assert!(Dialect::RabbitMq.reserves("receipt"));
    /// assert!(Dialect::RabbitMq.reserves("x-eventing-x"));
    /// assert!(!Dialect::RabbitMq.reserves("session-id"));
    /// ```
    pub fn reserves(self, name: &str) -> bool {
        let properties = match self {
            Dialect::RabbitMq => RABBITMQ_PROPERTIES,
            Dialect::Artemis => ARTEMIS_PROPERTIES,
            Dialect::ActiveMq => activemq::PROPERTIES,
        };
        name.starts_with(ESCAPE_PREFIX)
            || STOMP_HEADERS.contains(&name)
            || properties.contains(&name)
            || (self == Dialect::ActiveMq && activemq::reserved_prefix(name))
    }

    /// Appends the frame headers that carry `headers`.
    pub fn encode_headers(self, headers: &Headers, out: &mut Vec<(String, String)>) {
        for (name, value) in headers.iter() {
            if self == Dialect::RabbitMq {
                match name {
                    header::MESSAGE_ID if value.len() <= SHORT_STRING => {
                        out.push(("amqp-message-id".into(), value.into()));
                        continue;
                    }
                    header::CONTENT_TYPE if value.len() <= SHORT_STRING => {
                        out.push((name.into(), value.into()));
                        continue;
                    }
                    // The event name and a timestamp of this second go into the
                    // AMQP `type` and `timestamp` properties (as the AMQP
                    // provider sends them): a default event leaves the broker no
                    // headers table to build, store and turn back into headers.
                    header::EVENT if value.len() <= SHORT_STRING => {
                        out.push(("type".into(), value.into()));
                        continue;
                    }
                    header::TIMESTAMP => {
                        if let Some(seconds) = header::current_second(value) {
                            out.push((header::TIMESTAMP.into(), seconds.to_string()));
                            continue;
                        }
                    }
                    _ => {}
                }
            } else if name == header::CONTENT_TYPE {
                out.push((name.into(), value.into()));
                continue;
            } else if self == Dialect::ActiveMq {
                match name {
                    // The event name is the JMS type; a timestamp of this second
                    // is left to the broker, which stamps every message
                    // (`timestamp`, JMSTimestamp): each custom header is a JMS
                    // property the broker stores and sends on (in the bench, the
                    // two cost it about 15% of its throughput).
                    header::EVENT => {
                        out.push(("type".into(), value.into()));
                        continue;
                    }
                    header::TIMESTAMP if header::current_second(value).is_some() => continue,
                    _ => {}
                }
            }
            if self.reserves(name) {
                out.push((format!("{ESCAPE_PREFIX}{name}"), value.into()));
            } else {
                out.push((name.into(), value.into()));
            }
        }
    }

    /// What the broker's own `timestamp` header on a `MESSAGE` says: RabbitMQ's is
    /// the AMQP `timestamp` property in seconds, ActiveMQ's the JMSTimestamp in
    /// milliseconds (when it took the message). `None` for anything else,
    /// including an escaped envelope timestamp of the RFC 3339 form.
    fn broker_stamp(self, value: &str) -> Option<std::time::SystemTime> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: u64 = value.parse().ok()?;
        match self {
            Dialect::RabbitMq => Some(UNIX_EPOCH + Duration::from_secs(number)),
            Dialect::ActiveMq => Some(UNIX_EPOCH + Duration::from_millis(number)),
            Dialect::Artemis => None,
        }
    }

    /// The envelope a `MESSAGE` frame carries: the headers as they were sent
    /// (standard ones first), without what the broker added.
    pub fn envelope_of(self, frame: Frame) -> Envelope {
        let mut fields: Vec<(String, String)> = Vec::with_capacity(frame.headers.len());
        let mut broker_message_id = false;
        let mut fallback_message_id = None;
        let mut fallback_timestamp = None;
        let mut fallback_event = None;
        for (mut name, value) in frame.headers {
            if MESSAGE_ONLY.contains(&name.as_str()) {
                continue;
            }
            let stamp = (name == header::TIMESTAMP)
                .then(|| self.broker_stamp(&value))
                .flatten();
            match (self, name.as_str()) {
                (_, "message-id") => {
                    // The broker's own id comes first; RabbitMQ puts a `message-id`
                    // of the AMQP headers table after it.
                    if broker_message_id && self == Dialect::RabbitMq {
                        fallback_message_id.get_or_insert(value);
                    }
                    broker_message_id = true;
                }
                (Dialect::RabbitMq, "amqp-message-id") => {
                    add(&mut fields, header::MESSAGE_ID.into(), value)
                }
                (_, header::TIMESTAMP) if stamp.is_some() => {
                    fallback_timestamp = fallback_timestamp.or(stamp);
                }
                (Dialect::RabbitMq | Dialect::ActiveMq, "type") => {
                    // The AMQP `type` property or the JMS type: the event name (a
                    // `type` header of a STOMP sender is escaped, so this is the
                    // property).
                    fallback_event.get_or_insert(value);
                }
                (Dialect::Artemis, "expires" | "priority" | "timestamp") => {}
                (Dialect::ActiveMq, added) if activemq::ADDED.contains(&added) => {}
                _ => {
                    if name.starts_with(ESCAPE_PREFIX) {
                        name.drain(..ESCAPE_PREFIX.len());
                    }
                    add(&mut fields, name, value);
                }
            }
        }
        if let Some(id) = fallback_message_id {
            add(&mut fields, header::MESSAGE_ID.into(), id);
        }
        if let Some(event) = fallback_event {
            add(&mut fields, header::EVENT.into(), event);
        }
        if let Some(time) = fallback_timestamp {
            add(
                &mut fields,
                header::TIMESTAMP.into(),
                header::rfc3339_seconds(time),
            );
        }
        let mut headers = Headers::with_capacity(fields.len());
        for standard in [
            header::MESSAGE_ID,
            header::EVENT,
            header::TIMESTAMP,
            header::CONTENT_TYPE,
        ] {
            if let Some((_, value)) = take(&mut fields, standard) {
                headers.insert(standard, value);
            }
        }
        for (name, value) in fields {
            headers.insert(name, value);
        }
        Envelope {
            headers,
            body: frame.body,
        }
    }
}

/// Adds a header unless one of that name is there: the first occurrence wins.
fn add(fields: &mut Vec<(String, String)>, name: String, value: String) {
    if !fields.iter().any(|(n, _)| *n == name) {
        fields.push((name, value));
    }
}

fn take(fields: &mut Vec<(String, String)>, name: &str) -> Option<(String, String)> {
    let index = fields.iter().position(|(n, _)| n == name)?;
    Some(fields.remove(index))
}

fn bool_text(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// A name inside a RabbitMQ destination: `/` is written `%2F`.
fn rabbit_segment(name: &str) -> String {
    name.replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(per_process: bool) -> QueueSpec {
        QueueSpec::new("shop.Order", "Billing", true, per_process, "web-1")
    }

    fn envelope() -> Envelope {
        let mut envelope = Envelope::new(
            "shop.Order",
            eventing::codec::JSON,
            Bytes::from_static(b"{}"),
        );
        envelope.headers.insert(header::SESSION_ID, "s-42");
        envelope
            .headers
            .insert("x-stamp", "line1\nline2:colon\\back\rcr");
        envelope.headers.insert("correlation-id", "corr-1");
        envelope.headers.insert("expiration", "60000");
        envelope.headers.insert("receipt", "not mine");
        envelope
            .headers
            .insert("x-eventing-odd", "prefixed already");
        envelope.headers.insert("empty", "");
        envelope
    }

    fn sorted(headers: &Headers) -> Vec<(String, String)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.sort();
        all
    }

    /// What RabbitMQ makes of a SEND: its headers minus the ones it turns into
    /// properties, then its own headers first and the properties last.
    fn as_rabbitmq_delivers(send: &Frame) -> Frame {
        let mut message = Frame::new(Command::Message)
            .header("subscription", "0")
            .header("destination", send.get("destination").unwrap_or(""))
            .header("message-id", "T_0@@session-1@@7")
            .header("redelivered", "false")
            .header("ack", "T_0@@session-1@@7");
        for (name, value) in send.headers.iter().rev() {
            if !RABBITMQ_PROPERTIES.contains(&name.as_str())
                && !["destination", "content-type"].contains(&name.as_str())
            {
                message.push_header(name.clone(), value.clone());
            }
        }
        for name in [
            "amqp-message-id",
            "type",
            "timestamp",
            "persistent",
            "content-type",
        ] {
            if let Some(value) = send.get(name) {
                message.push_header(name, value);
            }
        }
        message.body = send.body.clone();
        message
    }

    #[test]
    fn rabbitmq_destinations_and_subscription() {
        let d = Dialect::RabbitMq;
        assert!(d.needs_exchanges());
        assert_eq!(d.send_destination("shop.Order"), "/exchange/shop.Order");
        assert_eq!(d.send_destination("a/b"), "/exchange/a%2Fb");
        let competing = spec(false);
        assert_eq!(d.subscribe_destination(&competing), "/exchange/shop.Order");
        assert_eq!(
            d.dead_letter_destination(&competing),
            "/amq/queue/shop.Order::Billing.dlq"
        );
        let frame = d.subscribe_frame(&competing, "7", 50);
        assert_eq!(frame.command, Command::Subscribe);
        for (name, value) in [
            ("id", "7"),
            ("destination", "/exchange/shop.Order"),
            ("ack", "client-individual"),
            ("x-queue-name", "shop.Order::Billing"),
            ("durable", "true"),
            ("auto-delete", "false"),
            ("exclusive", "false"),
            ("prefetch-count", "50"),
        ] {
            assert_eq!(frame.get(name), Some(value), "{name}");
        }
        let per_process = d.subscribe_frame(&spec(true), "8", 0);
        assert_eq!(
            per_process.get("x-queue-name"),
            Some("shop.Order::Billing-web-1")
        );
        assert_eq!(per_process.get("durable"), Some("false"));
        assert_eq!(per_process.get("auto-delete"), Some("true"));
        assert_eq!(per_process.get("exclusive"), Some("true"));
        assert_eq!(per_process.get("prefetch-count"), Some("1"));
        let browse = d.dead_letter_browse_frame(&competing, "dl", 10);
        assert_eq!(
            browse.get("destination"),
            Some("/amq/queue/shop.Order::Billing.dlq")
        );
        assert_eq!(browse.get("prefetch-count"), Some("10"));
        let take = d.dead_letter_take_frame(&competing, "dl", 5);
        assert_eq!(take.get("destination"), browse.get("destination"));
        assert_eq!(take.get("prefetch-count"), Some("5"));
        let replay = d.replay_frame(&competing, &envelope());
        assert_eq!(
            replay.get("destination"),
            Some("/amq/queue/shop.Order::Billing")
        );
        assert_eq!(replay.get("persistent"), Some("true"));
    }

    #[test]
    fn artemis_destinations_use_fully_qualified_queue_names() {
        let d = Dialect::Artemis;
        assert!(!d.needs_exchanges());
        let queue = spec(false);
        assert_eq!(d.send_destination("shop.Order"), "shop.Order");
        assert_eq!(
            d.subscribe_destination(&queue),
            "shop.Order::shop.Order::Billing"
        );
        assert_eq!(d.dead_letter_destination(&queue), "shop.Order::Billing.dlq");
        let browse = d.dead_letter_browse_frame(&queue, "dl", 10);
        assert_eq!(browse.get("browser"), Some("true"));
        let take = d.dead_letter_take_frame(&queue, "dl", 10);
        assert_eq!(take.get("browser"), None, "taking consumes");
        assert_eq!(take.get("subscription-type"), Some("ANYCAST"));
        let replay = d.replay_frame(&queue, &envelope());
        assert_eq!(
            replay.get("destination"),
            Some("shop.Order::shop.Order::Billing")
        );
        assert_eq!(replay.get("destination-type"), Some("ANYCAST"));
        let frame = d.subscribe_frame(&queue, "1", 10);
        assert_eq!(frame.get("subscription-type"), Some("MULTICAST"));
        assert_eq!(frame.get("x-queue-name"), None);
        let send = d.send_frame("shop.Order", &envelope(), true);
        assert_eq!(send.get("destination"), Some("shop.Order"));
        assert_eq!(send.get("destination-type"), Some("MULTICAST"));
        assert_eq!(send.get("persistent"), Some("true"));
        let letter = d.dead_letter_frame(&queue, &envelope());
        assert_eq!(letter.get("destination-type"), Some("ANYCAST"));
        let browse = d.dead_letter_browse_frame(&queue, "dl", 10);
        assert_eq!(browse.get("browser"), Some("true"));
    }

    #[test]
    fn rabbitmq_send_frame_escapes_reserved_names() {
        let envelope = envelope();
        let frame = Dialect::RabbitMq.send_frame("shop.Order", &envelope, true);
        assert_eq!(frame.get("destination"), Some("/exchange/shop.Order"));
        assert_eq!(frame.get("persistent"), Some("true"));
        assert_eq!(frame.get("amqp-message-id"), Some(envelope.message_id()));
        assert_eq!(
            frame.get("message-id"),
            None,
            "RabbitMQ refuses message-id on SEND"
        );
        assert_eq!(frame.get("content-type"), Some(eventing::codec::JSON));
        // This second's timestamp travels as the AMQP property, in seconds
        // (unless the second turned since the envelope was made).
        let sent = envelope.headers.get(header::TIMESTAMP).expect("timestamp");
        match frame.get("timestamp") {
            Some(seconds) => {
                let seconds: u64 = seconds.parse().expect("whole seconds");
                let at = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
                assert_eq!(header::rfc3339_seconds(at), sent);
                assert_eq!(frame.get("x-eventing-timestamp"), None);
            }
            None => assert_eq!(frame.get("x-eventing-timestamp"), Some(sent)),
        }
        // The event name as the AMQP `type` property.
        assert_eq!(frame.get("type"), Some("shop.Order"));
        assert_eq!(frame.get("event"), None);
        assert_eq!(frame.get("x-eventing-correlation-id"), Some("corr-1"));
        assert_eq!(frame.get("x-eventing-expiration"), Some("60000"));
        assert_eq!(frame.get("expiration"), None);
        assert_eq!(frame.get("x-eventing-receipt"), Some("not mine"));
        assert_eq!(frame.get("receipt"), None);
        assert_eq!(
            frame.get("x-eventing-x-eventing-odd"),
            Some("prefixed already")
        );
        assert_eq!(frame.get("x-stamp"), Some("line1\nline2:colon\\back\rcr"));
        assert_eq!(frame.body, envelope.body);
        let transient = Dialect::RabbitMq.send_frame("shop.Order", &envelope, false);
        assert_eq!(transient.get("persistent"), None);
    }

    #[test]
    fn rabbitmq_keeps_other_timestamps_and_user_types_in_headers() {
        for stamp in ["2023-11-14T22:13:20Z", "2023-11-14T22:13:20.250000Z"] {
            let mut envelope = envelope();
            envelope.headers.insert(header::TIMESTAMP, stamp);
            envelope.headers.insert("type", "the user's");
            let send = Dialect::RabbitMq.send_frame("shop.Order", &envelope, false);
            assert_eq!(send.get("timestamp"), None, "{stamp}");
            assert_eq!(send.get("x-eventing-timestamp"), Some(stamp));
            assert_eq!(send.get("type"), Some("shop.Order"));
            assert_eq!(send.get("x-eventing-type"), Some("the user's"));
            let back = Dialect::RabbitMq.envelope_of(as_rabbitmq_delivers(&send));
            assert_eq!(sorted(&back.headers), sorted(&envelope.headers));
        }
    }

    /// What ActiveMQ 5 makes of a SEND: its own `message-id`, `destination`,
    /// `expires`, `priority` and `timestamp` (JMSTimestamp, ms: `stamped`) beside
    /// the SEND's headers.
    fn as_activemq_delivers(send: &Frame, stamped: std::time::SystemTime) -> Frame {
        let millis = stamped
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        let mut message = Frame::new(Command::Message)
            .header("subscription", "0")
            .header("message-id", "ID:host-1-2-3:1:1:1:7")
            .header("destination", send.get("destination").unwrap_or(""))
            .header("expires", "0")
            .header("priority", "4")
            .header("timestamp", millis.to_string())
            .header("ack", "ID:host-1-2-3:1:1:1:7");
        for (name, value) in &send.headers {
            if name != "destination" {
                message.push_header(name.clone(), value.clone());
            }
        }
        message.body = send.body.clone();
        message
    }

    #[test]
    fn activemq_sends_the_event_as_the_jms_type_and_leaves_the_second_to_the_broker() {
        let envelope = envelope();
        let sent = envelope.headers.get(header::TIMESTAMP).expect("timestamp");
        let frame = Dialect::ActiveMq.send_frame("shop.Order", &envelope, true);
        assert_eq!(frame.get("type"), Some("shop.Order"));
        assert_eq!(frame.get("event"), None);
        assert_eq!(
            frame.get("x-eventing-message-id"),
            Some(envelope.message_id())
        );
        assert_eq!(
            frame.get("timestamp"),
            None,
            "the broker stamps the message"
        );
        // Unless the second turned since the envelope was made.
        if frame.get("x-eventing-timestamp").is_some() {
            assert_eq!(frame.get("x-eventing-timestamp"), Some(sent));
        }
        // The broker's stamp, a moment later in the same second, gives it back.
        let stamped = humantime::parse_rfc3339(sent).expect("RFC 3339")
            + std::time::Duration::from_millis(250);
        let back = Dialect::ActiveMq.envelope_of(as_activemq_delivers(&frame, stamped));
        assert_eq!(sorted(&back.headers), sorted(&envelope.headers));
        assert_eq!(
            back.headers.iter().next().map(|(n, _)| n),
            Some(header::MESSAGE_ID)
        );
    }

    #[test]
    fn activemq_keeps_other_timestamps_user_types_and_the_older_format() {
        for stamp in ["2023-11-14T22:13:20Z", "2023-11-14T22:13:20.250000Z"] {
            let mut envelope = envelope();
            envelope.headers.insert(header::TIMESTAMP, stamp);
            envelope.headers.insert("type", "the user's");
            let send = Dialect::ActiveMq.send_frame("shop.Order", &envelope, false);
            assert_eq!(send.get("x-eventing-timestamp"), Some(stamp));
            assert_eq!(send.get("type"), Some("shop.Order"));
            assert_eq!(send.get("x-eventing-type"), Some("the user's"));
            let back = Dialect::ActiveMq
                .envelope_of(as_activemq_delivers(&send, std::time::SystemTime::now()));
            assert_eq!(sorted(&back.headers), sorted(&envelope.headers), "{stamp}");
        }
        // What eventing sent before: `event` and the escaped timestamp as headers.
        let older = Frame::new(Command::Send)
            .header("destination", "/topic/VirtualTopic.shop.Order")
            .header("x-eventing-message-id", "m-1")
            .header("event", "shop.Order")
            .header("x-eventing-timestamp", "2023-11-14T22:13:20Z")
            .header("content-type", "application/json");
        let back = Dialect::ActiveMq
            .envelope_of(as_activemq_delivers(&older, std::time::SystemTime::now()));
        assert_eq!(back.headers.get(header::EVENT), Some("shop.Order"));
        assert_eq!(
            back.headers.get(header::TIMESTAMP),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(back.headers.get(header::MESSAGE_ID), Some("m-1"));
        // A foreign client's message: the broker's stamp, to the second.
        let foreign = Frame::new(Command::Send)
            .header("destination", "/queue/x")
            .header("content-type", "application/json");
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_999);
        let back = Dialect::ActiveMq.envelope_of(as_activemq_delivers(&foreign, at));
        assert_eq!(
            back.headers.get(header::TIMESTAMP),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(back.headers.get(header::EVENT), None);
    }

    #[test]
    fn rabbitmq_headers_round_trip() {
        let envelope = envelope();
        let mut send = Dialect::RabbitMq.send_frame("shop.Order", &envelope, true);
        send.push_header("receipt", "r-1");
        let back = Dialect::RabbitMq.envelope_of(as_rabbitmq_delivers(&send));
        assert_eq!(sorted(&back.headers), sorted(&envelope.headers));
        let first: Vec<&str> = back.headers.iter().take(4).map(|(n, _)| n).collect();
        assert_eq!(
            first,
            [
                header::MESSAGE_ID,
                header::EVENT,
                header::TIMESTAMP,
                header::CONTENT_TYPE
            ]
        );
        assert_eq!(back.body, envelope.body);
    }

    #[test]
    fn overlong_header_names_are_caught_before_sending() {
        let mut envelope = envelope();
        let frame = Dialect::RabbitMq.send_frame("E", &envelope, false);
        assert_eq!(Dialect::RabbitMq.unsendable(&frame), None);
        envelope.headers.insert("n".repeat(256), "v");
        let frame = Dialect::RabbitMq.send_frame("E", &envelope, false);
        let reason = Dialect::RabbitMq.unsendable(&frame).expect("refused");
        assert!(reason.contains("over 255 bytes"), "{reason}");
        assert_eq!(Dialect::Artemis.unsendable(&frame), None);
    }

    #[test]
    fn long_standard_values_still_round_trip() {
        let mut envelope = Envelope::default();
        envelope.headers.insert(header::MESSAGE_ID, "m".repeat(300));
        envelope
            .headers
            .insert(header::CONTENT_TYPE, "t".repeat(300));
        envelope.headers.insert(header::TIMESTAMP, "yesterday");
        let send = Dialect::RabbitMq.send_frame("E", &envelope, false);
        assert_eq!(send.get("amqp-message-id"), None);
        assert_eq!(send.get("timestamp"), None);
        let back = Dialect::RabbitMq.envelope_of(as_rabbitmq_delivers(&send));
        assert_eq!(sorted(&back.headers), sorted(&envelope.headers));
    }

    #[test]
    fn messages_from_the_amqp_provider() {
        // The AMQP provider sends message_id, content_type and timestamp as
        // properties and the rest, `timestamp` included, in the headers table.
        let message = Frame::new(Command::Message)
            .header("subscription", "0")
            .header("destination", "/exchange/E")
            .header("message-id", "T_0@@session-1@@1")
            .header("redelivered", "true")
            .header("ack", "T_0@@session-1@@1")
            .header("timestamp", "2024-05-01T10:00:00.123456Z")
            .header("event", "E")
            .header("correlation-id", "c-1")
            .header("persistent", "true")
            .header("amqp-message-id", "id-1")
            .header("timestamp", "1714557600")
            .header("content-type", "application/json");
        let envelope = Dialect::RabbitMq.envelope_of(message);
        let expected: Headers = [
            ("message-id", "id-1"),
            ("event", "E"),
            ("timestamp", "2024-05-01T10:00:00.123456Z"),
            ("content-type", "application/json"),
            ("correlation-id", "c-1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(envelope.headers, expected);
    }

    #[test]
    fn lean_messages_from_the_amqp_provider() {
        // The AMQP provider's lean format: the event in `type`, the timestamp in
        // whole seconds, no headers table; as RabbitMQ 3.10 delivers it.
        let message = Frame::new(Command::Message)
            .header("subscription", "0")
            .header("destination", "/exchange/shop.Order")
            .header("message-id", "T_0@@session-1@@1")
            .header("redelivered", "false")
            .header("session-id", "s-1")
            .header("type", "shop.Order")
            .header("timestamp", "1714557600")
            .header("amqp-message-id", "m-1")
            .header("correlation-id", "corr-7")
            .header("content-type", "application/json")
            .header("content-length", "7");
        let envelope = Dialect::RabbitMq.envelope_of(message);
        let headers: Vec<(&str, &str)> = envelope.headers.iter().collect();
        assert_eq!(
            headers,
            [
                ("message-id", "m-1"),
                ("event", "shop.Order"),
                ("timestamp", "2024-05-01T10:00:00Z"),
                ("content-type", "application/json"),
                ("session-id", "s-1"),
                ("correlation-id", "corr-7"),
            ]
        );
        // An `event` header (the previous format, a STOMP sender) wins.
        let both = Frame::new(Command::Message)
            .header("event", "E")
            .header("type", "other");
        assert_eq!(Dialect::RabbitMq.envelope_of(both).event(), "E");
    }

    #[test]
    fn foreign_messages_keep_what_they_have() {
        let bare = Frame::new(Command::Message)
            .header("subscription", "0")
            .header("message-id", "T_0@@s@@1")
            .header("ack", "T_0@@s@@1")
            .header("timestamp", "0")
            .with_body("not json");
        let envelope = Dialect::RabbitMq.envelope_of(bare);
        assert_eq!(envelope.headers.get(header::MESSAGE_ID), None);
        assert_eq!(
            envelope.headers.get(header::TIMESTAMP),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(envelope.headers.len(), 1);
        assert_eq!(&envelope.body[..], b"not json");

        // A long message id from the AMQP provider's headers table comes second.
        let long = Frame::new(Command::Message)
            .header("message-id", "T_0@@s@@2")
            .header("message-id", "from-the-table");
        let envelope = Dialect::RabbitMq.envelope_of(long);
        assert_eq!(envelope.message_id(), "from-the-table");
    }

    #[test]
    fn artemis_headers_round_trip() {
        let envelope = envelope();
        let send = Dialect::Artemis.send_frame("shop.Order", &envelope, true);
        assert_eq!(send.get("message-id"), None);
        assert_eq!(
            send.get("x-eventing-message-id"),
            Some(envelope.message_id())
        );
        assert_eq!(
            send.get("x-eventing-timestamp"),
            envelope.headers.get(header::TIMESTAMP)
        );
        assert_eq!(send.get("timestamp"), None);
        assert_eq!(send.get("x-eventing-correlation-id"), Some("corr-1"));
        assert_eq!(send.get("amqp-message-id"), None);
        // Artemis adds its own message-id, timestamp, expires, priority...
        let mut message = Frame::new(Command::Message)
            .header("subscription", "1")
            .header("message-id", "12345")
            .header("destination", "shop.Order")
            .header("expires", "0")
            .header("priority", "4")
            .header("timestamp", "1714557600000")
            .header("persistent", "true")
            .header("ack", "12345");
        for (name, value) in &send.headers {
            if !["destination", "destination-type", "persistent"].contains(&name.as_str()) {
                message.push_header(name.clone(), value.clone());
            }
        }
        let back = Dialect::Artemis.envelope_of(message);
        assert_eq!(sorted(&back.headers), sorted(&envelope.headers));
    }
}
