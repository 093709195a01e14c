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

use std::time::Duration;

use eventing::{Envelope, Error, QueueSpec, Result};
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

/// A dead-letter queue and how it is declared.
#[derive(Clone, Debug)]
pub(crate) struct DeadLetterQueue {
    pub(crate) name: ShortString,
    pub(crate) per_process: bool,
}

impl DeadLetterQueue {
    pub(crate) fn of(spec: &QueueSpec) -> Result<Self> {
        Ok(Self {
            name: short("dead-letter queue", &spec.dead_letter_queue())?,
            per_process: spec.per_process,
        })
    }
}

/// Declares the exchanges, queues, bindings and dead-letter queues of `queues`.
pub(crate) async fn declare(connection: &Connection, queues: &[QueueSpec]) -> Result<()> {
    let channel = open(connection, "declaring topology").await?;
    let declared = declare_on(&channel, queues).await;
    close(channel).await;
    declared
}

async fn declare_on(channel: &Channel, queues: &[QueueSpec]) -> Result<()> {
    for spec in queues {
        let exchange = short("exchange", &spec.event)?;
        let queue = short("queue", &spec.name)?;
        let dead_letters = DeadLetterQueue::of(spec)?;
        declare_exchange_on(channel, exchange.clone(), spec.durable).await?;
        let options = QueueDeclareOptions {
            durable: !spec.per_process,
            exclusive: spec.per_process,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.clone(), options, FieldTable::default())
            .await
            .map_err(|e| declaration("declaring queue", &spec.name, e))?;
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
    channel
        .queue_declare(dlq.name.clone(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(|_| ())
        .map_err(|e| declaration("declaring dead-letter queue", dlq.name.as_str(), e))
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
                    letters.push(headers::to_envelope(&delivery.properties, delivery.data));
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

/// A declaration error, with a hint when the broker refused because of a conflict.
fn declaration(operation: &'static str, target: &str, source: lapin::Error) -> Error {
    let hint = match soft_error(&source) {
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
