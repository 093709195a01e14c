//! Exchanges, queues and dead-letter queues on the broker, and reading dead letters.
//!
//! | what | AMQP |
//! |---|---|
//! | event `<event>` | fanout exchange `<event>`, durable if the event is |
//! | competing listener | queue `<event>::<listener>`, durable, bound to the exchange |
//! | per-process listener | queue `<event>::<listener>-<server>`, exclusive (deleted with the connection) |
//! | dead letters | queue `<queue>.dlq`, durable; for per-process queues with `x-expires` |
//!
//! Every queue is durable or exclusive: RabbitMQ 4 deprecates transient
//! non-exclusive queues. A queue of a non-durable event is durable too, but its
//! messages are transient and do not survive a broker restart.
//!
//! With `queue_type=quorum` in the URL ([`QueueType::Quorum`]) competing queues and
//! their dead-letter queues are quorum queues (replicated on a cluster). A competing
//! queue then gets `x-delivery-limit` and dead-letters through the broker itself:
//! `x-dead-letter-exchange: ""` and `x-dead-letter-routing-key: <queue>.dlq`, so a
//! message the broker delivered more often than the limit (consumers that keep
//! dying or requeueing it) ends in the same `.dlq` as the provider's own dead
//! letters, marked with RabbitMQ's `x-first-death-reason` (listing dead letters
//! turns that into the usual `x-dead-letter-reason`). Broker dead-lettering is
//! at-least-once (`x-dead-letter-strategy: at-least-once`, which needs
//! `x-overflow: reject-publish`). Per-process queues are exclusive, which quorum
//! queues cannot be: they and their dead-letter queues stay classic.

use std::time::Duration;

use eventing::{Envelope, Error, QueueSpec, Result, header};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::error::{AmqpError, PROVIDER, broker, is_not_found, short, soft_error};
use crate::headers;

/// How long the dead-letter queue of a per-process queue outlives its last use
/// (consumer, declaration or read) before the broker deletes it.
pub const PER_PROCESS_DEAD_LETTER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `x-delivery-limit` of quorum queues when the URL sets no `delivery_limit`:
/// the broker dead-letters a message it delivered this many times without an
/// acknowledgement (RabbitMQ 4's own default).
pub(crate) const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// What kind of queue competing listeners get (the URL's `queue_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// Classic queues (the default).
    #[default]
    Classic,
    /// Quorum queues: replicated, with a delivery limit whose overflow the broker
    /// dead-letters to `<queue>.dlq`.
    Quorum {
        /// `x-delivery-limit`: deliveries without an acknowledgement before the
        /// broker dead-letters the message.
        delivery_limit: u32,
    },
}

impl QueueType {
    /// Whether queues declared for `spec` are quorum queues.
    fn quorum_for(self, spec_per_process: bool) -> Option<u32> {
        match self {
            QueueType::Quorum { delivery_limit } if !spec_per_process => Some(delivery_limit),
            _ => None,
        }
    }
}

/// A dead-letter queue and how it is declared.
#[derive(Clone, Debug)]
pub(crate) struct DeadLetterQueue {
    pub(crate) name: ShortString,
    pub(crate) per_process: bool,
    pub(crate) queue_type: QueueType,
}

impl DeadLetterQueue {
    /// The dead-letter queue of `spec`, declared as a classic queue if missing.
    pub(crate) fn of(spec: &QueueSpec) -> Result<Self> {
        Ok(Self {
            name: short("dead-letter queue", &spec.dead_letter_queue())?,
            per_process: spec.per_process,
            queue_type: QueueType::Classic,
        })
    }

    /// The same queue, declared as `queue_type` says if missing.
    pub(crate) fn with_type(self, queue_type: QueueType) -> Self {
        Self { queue_type, ..self }
    }
}

/// Declares the exchanges, queues, bindings and dead-letter queues of `queues`;
/// competing queues are of type `queue_type`.
pub(crate) async fn declare(
    connection: &Connection,
    queues: &[QueueSpec],
    queue_type: QueueType,
) -> Result<()> {
    let channel = open(connection, "declaring topology").await?;
    let declared = declare_on(&channel, queues, queue_type).await;
    close(channel).await;
    declared
}

/// The arguments of `spec`'s queue.
fn queue_arguments(spec: &QueueSpec, queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(limit) = queue_type.quorum_for(spec.per_process) {
        let text = |value: &str| AMQPValue::LongString(value.into());
        arguments.insert("x-queue-type".into(), text("quorum"));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(limit)),
        );
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            text(&spec.dead_letter_queue()),
        );
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
    }
    arguments
}

async fn declare_on(channel: &Channel, queues: &[QueueSpec], queue_type: QueueType) -> Result<()> {
    for spec in queues {
        let exchange = short("exchange", &spec.event)?;
        let queue = short("queue", &spec.name)?;
        let dead_letters = DeadLetterQueue::of(spec)?.with_type(queue_type);
        declare_exchange_on(channel, exchange.clone(), spec.durable).await?;
        let options = QueueDeclareOptions {
            durable: !spec.per_process,
            exclusive: spec.per_process,
            ..QueueDeclareOptions::default()
        };
        let quorum = queue_type.quorum_for(spec.per_process).is_some();
        channel
            .queue_declare(queue.clone(), options, queue_arguments(spec, queue_type))
            .await
            .map_err(|e| declaration_of("declaring queue", &spec.name, Some(quorum), e))?;
        channel
            .queue_bind(
                queue,
                exchange,
                ShortString::default(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("binding queue", &spec.name, e))?;
        declare_dead_letter_queue_on(channel, &dead_letters).await?;
        tracing::debug!(
            event = %spec.event,
            queue = %spec.name,
            durable = spec.durable,
            per_process = spec.per_process,
            quorum,
            "declared"
        );
    }
    Ok(())
}

/// Declares the fanout exchange of an event.
pub(crate) async fn declare_exchange(
    connection: &Connection,
    address: &str,
    durable: bool,
) -> Result<()> {
    let exchange = short("exchange", address)?;
    let channel = open(connection, "declaring exchange").await?;
    let declared = declare_exchange_on(&channel, exchange, durable).await;
    close(channel).await;
    declared
}

async fn declare_exchange_on(
    channel: &Channel,
    exchange: ShortString,
    durable: bool,
) -> Result<()> {
    let options = ExchangeDeclareOptions {
        durable,
        ..ExchangeDeclareOptions::default()
    };
    let name = exchange.to_string();
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Fanout,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| declaration("declaring exchange", &name, e))
}

/// Declares a dead-letter queue.
pub(crate) async fn declare_dead_letter_queue(
    connection: &Connection,
    dlq: &DeadLetterQueue,
) -> Result<()> {
    let channel = open(connection, "declaring dead-letter queue").await?;
    let declared = declare_dead_letter_queue_on(&channel, dlq).await;
    close(channel).await;
    declared
}

async fn declare_dead_letter_queue_on(channel: &Channel, dlq: &DeadLetterQueue) -> Result<()> {
    let mut arguments = FieldTable::default();
    if dlq.per_process {
        let ttl = u64::try_from(PER_PROCESS_DEAD_LETTER_TTL.as_millis()).unwrap_or(u64::MAX);
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(i64::try_from(ttl).unwrap_or(i64::MAX)),
        );
    }
    // No delivery limit here: reading dead letters returns them unacknowledged.
    let quorum = dlq.queue_type.quorum_for(dlq.per_process).is_some();
    if quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(dlq.name.clone(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(|_| ())
        .map_err(|e| {
            declaration_of(
                "declaring dead-letter queue",
                dlq.name.as_str(),
                Some(quorum),
                e,
            )
        })
}

/// Up to `limit` messages of `spec`'s dead-letter queue, oldest first, left in place.
///
/// Reads them with `basic.get` on a channel of its own without acknowledging them,
/// then closes the channel: the broker puts unacknowledged messages back at their
/// original positions, so the queue's order is unchanged. While the read is under
/// way the messages are invisible to others.
pub(crate) async fn peek_dead_letters(
    connection: &Connection,
    spec: &QueueSpec,
    limit: usize,
) -> Result<Vec<Envelope>> {
    let dlq = DeadLetterQueue::of(spec)?;
    let mut letters = Vec::new();
    if limit == 0 {
        return Ok(letters);
    }
    let channel = open(connection, "reading dead letters").await?;
    let read = async {
        while letters.len() < limit {
            match channel
                .basic_get(dlq.name.clone(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(message)) => {
                    let delivery = message.delivery;
                    let mut letter = headers::to_envelope(&delivery.properties, delivery.data);
                    explain_broker_dead_letter(&mut letter);
                    letters.push(letter);
                    if message.message_count == 0 {
                        break;
                    }
                }
                Ok(None) => break,
                // No dead-letter queue: no dead letters.
                Err(error) if is_not_found(&error) => break,
                Err(error) => {
                    return Err(broker("reading dead letters of queue", &spec.name, error));
                }
            }
        }
        Ok(())
    };
    let outcome = read.await;
    close(channel).await;
    outcome.map(|()| letters)
}

/// How many letters `spec`'s dead-letter queue holds (ready, not being read), 0
/// if it does not exist. A missing queue `spec` is [`Error::QueueNotFound`]: its
/// letters could not be put back onto it (RabbitMQ would return them as
/// unroutable). Passive declarations, each on a channel of its own, since a
/// refusal closes the channel.
pub(crate) async fn dead_letter_depth(connection: &Connection, spec: &QueueSpec) -> Result<usize> {
    let queue = short("queue", &spec.name)?;
    let dlq = DeadLetterQueue::of(spec)?;
    match message_count(connection, queue).await {
        Ok(_) => {}
        Err(error) if is_not_found(&error) => {
            return Err(Error::QueueNotFound {
                queue: spec.name.clone(),
            });
        }
        // Exclusive to another connection (a per-process queue of a running server).
        Err(error) if soft_error(&error) == Some(AMQPSoftError::RESOURCELOCKED) => {}
        Err(error) => return Err(broker("checking queue", &spec.name, error)),
    }
    match message_count(connection, dlq.name).await {
        Ok(count) => Ok(usize::try_from(count).unwrap_or(usize::MAX)),
        Err(error) if is_not_found(&error) => Ok(0),
        Err(error) => Err(broker("checking dead-letter queue", &spec.name, error)),
    }
}

/// The ready messages of `queue` (a passive `queue.declare`).
async fn message_count(connection: &Connection, queue: ShortString) -> lapin::Result<u32> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue, options, FieldTable::default())
        .await;
    close(channel).await;
    declared.map(|queue| queue.message_count())
}

/// RabbitMQ's own header: why it dead-lettered a message the first time.
const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// RabbitMQ's own header: the queue it dead-lettered a message from the first time.
const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";

/// Gives a letter the broker dead-lettered (it carries RabbitMQ's
/// `x-first-death-reason` rather than our reason header) the standard
/// [`header::DEAD_LETTER_REASON`] and [`header::DEAD_LETTER_QUEUE`].
fn explain_broker_dead_letter(letter: &mut Envelope) {
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

async fn open(connection: &Connection, purpose: &'static str) -> Result<Channel> {
    connection
        .create_channel()
        .await
        .map_err(|e| broker("opening a channel for", purpose, e))
}

/// Closes a short-lived channel; one the broker already closed is fine.
async fn close(channel: Channel) {
    if channel.status().connected()
        && let Err(error) = channel.close(200, "OK".into()).await
    {
        tracing::debug!(%error, "closing a channel");
    }
}

/// A declaration error of an exchange, with a hint when the broker refused because
/// of a conflict.
fn declaration(operation: &'static str, target: &str, source: lapin::Error) -> Error {
    declaration_of(operation, target, None, source)
}

/// Whether the broker refused a declaration without arguments because the queue
/// has some (RabbitMQ names the first that differs: "received none but current
/// is ..."), as a quorum queue does.
fn has_unexpected_arguments(source: &lapin::Error) -> bool {
    source.to_string().contains("received none but current is")
}

/// [`declaration`] for a queue (`quorum`: `Some(true)` if it was declared as a
/// quorum queue, `Some(false)` if as a classic one) or an exchange (`None`).
fn declaration_of(
    operation: &'static str,
    target: &str,
    quorum: Option<bool>,
    source: lapin::Error,
) -> Error {
    let hint = match soft_error(&source) {
        Some(AMQPSoftError::PRECONDITIONFAILED) if quorum == Some(true) => {
            "it exists with other settings: a classic queue cannot become a quorum queue \
             (drain and delete it, rename the event, or keep queue_type=classic), and a quorum \
             queue keeps its delivery_limit (use the same one in every manager's URL)"
        }
        Some(AMQPSoftError::PRECONDITIONFAILED)
            if quorum == Some(false) && has_unexpected_arguments(&source) =>
        {
            "it exists with arguments this URL does not ask for, as a quorum queue has: if it \
             is one, add queue_type=quorum (and the same delivery_limit) to the URL of every \
             manager that uses it; otherwise delete it or rename the event"
        }
        Some(AMQPSoftError::PRECONDITIONFAILED) => {
            "it exists with other settings (durable, exclusive, type or arguments); delete it or rename the event"
        }
        Some(AMQPSoftError::RESOURCELOCKED) => {
            "another connection holds this exclusive (per-process) queue; is another server running with the same server name?"
        }
        Some(AMQPSoftError::ACCESSREFUSED) => "the user may not configure it in this vhost",
        _ => return broker(operation, target, source),
    };
    Error::provider(
        PROVIDER,
        AmqpError::Declaration {
            operation,
            target: target.to_string(),
            hint,
            source,
        },
    )
}
