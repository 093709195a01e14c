//! Replaying dead letters: the rule every provider shares, written once.
//!
//! The letters present in `<queue>.dlq` when the replay starts (at most `limit`)
//! are taken oldest first, stripped of the `x-dead-letter-*` headers, put onto the
//! queue alone ([`Provider::send_to_queue`](crate::provider::Provider::send_to_queue),
//! so the event's other listeners do not get them twice) and only then acknowledged
//! on the dead-letter queue. A letter that fails again while the replay runs joins
//! the end of the dead-letter queue and is not taken a second time. A failure part
//! way leaves the rest in place; at worst the letter in flight is on both queues (a
//! duplicate, never a loss).

use std::time::Duration;

use futures_util::StreamExt;

use crate::envelope::header;
use crate::error::{Error, Result};
use crate::provider::DynProvider;
use crate::topology::QueueSpec;

/// How long the replay waits for the next letter before it stops early (the depth
/// it read may have shrunk meanwhile: another replay, or an operator).
const IDLE: Duration = Duration::from_secs(2);

/// The most letters in flight between the dead-letter queue and the replay.
const WINDOW: usize = 256;

/// Moves up to `limit` dead letters of `queue` back onto it; returns how many moved.
pub(crate) async fn replay(
    provider: &dyn DynProvider,
    queue: &QueueSpec,
    limit: usize,
) -> Result<usize> {
    if !provider.capabilities().dead_letters {
        return Err(Error::Unsupported {
            provider: provider.name(),
            operation: "replaying dead letters",
        });
    }
    if limit == 0 {
        return Ok(0);
    }
    let cap = limit.min(provider.dead_letter_depth(queue).await?);
    if cap == 0 {
        return Ok(0);
    }
    let window = u16::try_from(cap.min(WINDOW)).unwrap_or(u16::MAX);
    let mut letters = provider.take_dead_letters(queue, window).await?;
    let mut moved = 0;
    let outcome: Result<()> = async {
        while moved < cap {
            let delivery = match tokio::time::timeout(IDLE, letters.next()).await {
                Ok(Some(delivery)) => delivery?,
                Ok(None) | Err(_) => break,
            };
            let mut envelope = delivery.envelope;
            for name in header::DEAD_LETTER_HEADERS {
                envelope.headers.remove(name);
            }
            let message_id = envelope.message_id().to_owned();
            provider.send_to_queue(queue, envelope).await?;
            // Counted once it is on the queue: if the ack is lost, the letter is
            // both there and still here (a duplicate, not a loss).
            moved += 1;
            delivery.acker.ack(delivery.tag);
            tracing::debug!(queue = %queue.name, %message_id, "dead letter replayed");
        }
        Ok(())
    }
    .await;
    // What was taken but not moved goes back when the consumer is dropped.
    if let Err(error) = letters.cancel().await {
        tracing::debug!(queue = %queue.name, %error, "cancelling the dead-letter reader");
    }
    drop(letters);
    match outcome {
        Ok(()) => {
            tracing::info!(queue = %queue.name, moved, "dead letters replayed");
            Ok(moved)
        }
        Err(error) if moved == 0 => Err(error),
        Err(error) => Err(Error::ReplayInterrupted {
            queue: queue.name.clone(),
            moved,
            source: Box::new(error),
        }),
    }
}
