//! Moving dead letters back onto their queue.
//!
//! Each letter is taken from `<queue>.dlq` with `basic.get` (unacknowledged),
//! stripped of the `x-dead-letter-*` headers, published persistently to the queue
//! itself through the default exchange (routing key = queue name, so the other
//! queues bound to the event's exchange do not get it again) and confirmed by the
//! broker, and only then acknowledged in the dead-letter queue. A failure at any
//! point leaves the letter in the dead-letter queue (the channel closes and the
//! broker puts back what was not acknowledged); if it was already published, the
//! queue may get it twice, never zero times.

use eventing::{Error, QueueSpec, Result, header};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use crate::error::{AmqpError, PROVIDER, broker, is_not_found};
use crate::headers;
use crate::publish::Publisher;
use crate::topology::DeadLetterQueue;

/// Moves up to `limit` letters of `spec`'s dead-letter queue back onto `spec`'s
/// queue, oldest first; returns how many moved. Letters dead-lettered again while
/// this runs are not taken a second time: it moves at most as many as the
/// dead-letter queue held when it began.
///
/// No dead-letter queue means nothing to move. A missing queue is an error
/// ([`AmqpError::Unroutable`]) and the letter stays. An error after some letters
/// moved is an [`AmqpError::ReplayInterrupted`] that says how many.
pub(crate) async fn replay(
    connection: &Connection,
    publisher: &Publisher,
    spec: &QueueSpec,
    limit: usize,
) -> Result<usize> {
    let dlq = DeadLetterQueue::of(spec)?;
    if limit == 0 {
        return Ok(0);
    }
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker("opening a channel to replay dead letters of", &spec.name, e))?;
    let mut moved = 0;
    // Set from the first `basic.get`: how many letters there were at the start.
    let mut cap = limit;
    let outcome: Result<()> = async {
        while moved < cap {
            let got = channel
                .basic_get(dlq.name.clone(), BasicGetOptions { no_ack: false })
                .await;
            let message = match got {
                Ok(Some(message)) => message,
                Ok(None) => break,
                // No dead-letter queue: no dead letters.
                Err(error) if is_not_found(&error) => break,
                Err(error) => {
                    return Err(broker("reading dead letters of queue", &spec.name, error));
                }
            };
            if moved == 0 {
                let held = usize::try_from(message.message_count).unwrap_or(usize::MAX);
                cap = cap.min(held.saturating_add(1));
            }
            let delivery = message.delivery;
            let tag = delivery.delivery_tag;
            let mut envelope = headers::to_envelope(&delivery.properties, delivery.data);
            for name in header::DEAD_LETTER_HEADERS {
                envelope.headers.remove(name);
            }
            publisher.to_queue(&spec.name, &envelope).await?;
            // Counted once it is on the queue: if the ack below fails, the letter
            // is both there and still here (a duplicate, not a loss).
            moved += 1;
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
                .map_err(|e| broker("acknowledging a replayed dead letter of", &spec.name, e))?;
            tracing::debug!(
                queue = %spec.name,
                message_id = envelope.message_id(),
                "dead letter replayed"
            );
        }
        Ok(())
    }
    .await;
    if channel.status().connected()
        && let Err(error) = channel.close(200, "OK".into()).await
    {
        tracing::debug!(%error, "closing the replay channel");
    }
    match outcome {
        Ok(()) => {
            tracing::info!(queue = %spec.name, moved, "dead letters replayed");
            Ok(moved)
        }
        Err(error) if moved == 0 => Err(error),
        Err(error) => Err(Error::provider(
            PROVIDER,
            AmqpError::ReplayInterrupted {
                queue: spec.name.clone(),
                moved,
                source: Box::new(error),
            },
        )),
    }
}
