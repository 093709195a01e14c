//! Exchanges, queues and dead-letter queues on the broker, and reading dead letters.
//!
//! What is declared is RabbitMQ's rule, shared with eventing-stomp
//! ([`eventing_rabbitmq::topology`]): a fanout exchange per event, each listener's
//! queue bound to it (durable, or exclusive for per-process listeners), a durable
//! `<queue>.dlq` beside it, and with `queue_type=quorum` in the URL
//! ([`QueueType::Quorum`]) quorum competing queues that dead-letter past their
//! delivery limit through the broker itself. This module applies it with lapin.

use eventing::topology::QueueSpec;
use eventing::{Envelope, Error, Result};
use eventing_rabbitmq::{Arg, QueueType, topology as rules};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::error::{AmqpError, PROVIDER, broker, is_not_found, short, soft_error};
use crate::headers;

/// A dead-letter queue and how it is declared if it is missing.
#[derive(Clone, Debug)]
pub(crate) struct DeadLetterQueue {
    pub(crate) name: ShortString,
    declaration: rules::Queue,
}

impl DeadLetterQueue {
    /// The dead-letter queue of `spec`, declared as `queue_type` says if missing.
    pub(crate) fn new(spec: &QueueSpec, queue_type: QueueType) -> Result<Self> {
        let declaration = rules::dead_letter_queue(spec, queue_type);
        Ok(Self {
            name: short("dead-letter queue", &declaration.name)?,
            declaration,
        })
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

/// A rule's arguments as an AMQP field table.
fn field_table(arguments: &[(&'static str, Arg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            Arg::Str(text) => AMQPValue::LongString(text.as_str().into()),
            Arg::Int(number) => AMQPValue::LongLongInt(*number),
            Arg::Bool(flag) => AMQPValue::Boolean(*flag),
        };
        table.insert((*name).into(), value);
    }
    table
}

/// Declares `queue` as the rule says.
async fn declare_queue_on(
    channel: &Channel,
    queue: &rules::Queue,
    what: &'static str,
) -> Result<()> {
    let name = short("queue", &queue.name)?;
    let options = QueueDeclareOptions {
        durable: queue.durable,
        exclusive: queue.exclusive,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name, options, field_table(&queue.arguments))
        .await
        .map(|_| ())
        .map_err(|e| declaration_of(what, &queue.name, Some(queue.is_quorum()), e))
}

async fn declare_on(channel: &Channel, queues: &[QueueSpec], queue_type: QueueType) -> Result<()> {
    for spec in queues {
        let exchange = rules::exchange(&spec.event, spec.durable);
        let exchange_name = short("exchange", &exchange.name)?;
        let queue = rules::queue(spec, queue_type);
        let queue_name = short("queue", &queue.name)?;
        let dead_letters = DeadLetterQueue::new(spec, queue_type)?;
        declare_exchange_on(channel, exchange_name.clone(), exchange.durable).await?;
        declare_queue_on(channel, &queue, "declaring queue").await?;
        channel
            .queue_bind(
                queue_name,
                exchange_name,
                ShortString::default(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("binding queue", &spec.name, e))?;
        declare_dead_letter_queue_on(channel, &dead_letters).await?;
        for &delay in &spec.retry_delays {
            let waiting = rules::delay_queue(spec, delay);
            declare_queue_on(channel, &waiting, "declaring delay queue").await?;
        }
        tracing::debug!(
            event = %spec.event,
            queue = %spec.name,
            durable = spec.durable,
            per_process = spec.per_process,
            quorum = queue.is_quorum(),
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

/// Declares `queue` as the rule says, on a channel of its own (a delay queue or
/// a scheduled-send queue, made on demand).
pub(crate) async fn declare_rule_queue(
    connection: &Connection,
    queue: &rules::Queue,
) -> Result<()> {
    let channel = open(connection, "declaring queue").await?;
    let declared = declare_queue_on(&channel, queue, "declaring queue").await;
    close(channel).await;
    declared
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
    declare_queue_on(channel, &dlq.declaration, "declaring dead-letter queue").await
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
    let dlq = short("dead-letter queue", &spec.dead_letter_queue())?;
    let mut letters = Vec::new();
    if limit == 0 {
        return Ok(letters);
    }
    let channel = open(connection, "reading dead letters").await?;
    let read = async {
        while letters.len() < limit {
            match channel
                .basic_get(dlq.clone(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(message)) => {
                    let delivery = message.delivery;
                    let mut letter = headers::to_envelope(&delivery.properties, delivery.data);
                    eventing_rabbitmq::explain_dead_letter(&mut letter);
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
    let dlq = short("dead-letter queue", &spec.dead_letter_queue())?;
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
    match message_count(connection, dlq).await {
        Ok(count) => Ok(usize::try_from(count).unwrap_or(usize::MAX)),
        Err(error) if is_not_found(&error) => Ok(0),
        Err(error) => Err(broker("checking dead-letter queue", &spec.name, error)),
    }
}

/// Deletes queue `spec` (a per-process queue whose run-time subscription ended:
/// exclusive to this connection, it would otherwise live as long as the
/// connection). Its dead-letter queue expires on its own. A missing queue is `Ok`.
pub(crate) async fn delete_queue(connection: &Connection, spec: &QueueSpec) -> Result<()> {
    let queue = short("queue", &spec.name)?;
    let channel = open(connection, "deleting queue").await?;
    let deleted = channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await;
    close(channel).await;
    match deleted {
        Ok(_) => Ok(()),
        Err(error) if is_not_found(&error) => Ok(()),
        Err(error) => Err(broker("deleting queue", &spec.name, error)),
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
