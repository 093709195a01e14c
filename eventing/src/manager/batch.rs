//! Sending many events of one type at once: [`EventManager::send_events`].

use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use futures_util::future::{self, BoxFuture, Either};

use super::EventManager;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::provider::Route;

/// How many events go to the provider at once: enough to keep a broker's
/// pipeline full, few enough that a long iterator is not held in memory whole.
const CHUNK: usize = 1024;

impl EventManager {
    /// Sends several events of one type, in order. Each is serialized, runs the
    /// send pipelines and gets its own message id, as with
    /// [`send_event`](Self::send_event); the provider then publishes them together
    /// where it can: the AMQP provider pipelines the publishes and, for a durable
    /// event, waits once for all the broker's confirms. For a durable event this
    /// returns once the broker has confirmed every one.
    ///
    /// Takes a slice, a `Vec` or any iterator of references; long ones are sent in
    /// chunks of a thousand or so, each bounded by the send timeout; the next chunk
    /// is published while the broker confirms the one before. On an error, other
    /// events of the batch may have been published (at least once: sending the
    /// batch again may deliver some twice, with new message ids).
    ///
    /// ```
    /// # #[eventing::event] #[derive(serde::Serialize, serde::Deserialize)] struct Tick { n: u32 }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
    /// let manager = eventing::EventManager::builder().url("memory://batch-doc").build().await?;
    /// let ticks: Vec<Tick> = (0..3).map(|n| Tick { n }).collect();
    /// manager.send_events(&ticks).await?;
    /// manager.send_events(ticks.iter().filter(|t| t.n > 0)).await?;
    /// assert_eq!(manager.stats().sent, 5);
    /// # Ok(()) }
    /// ```
    pub async fn send_events<'a, E, I>(&self, events: I) -> Result<()>
    where
        E: Event + 'a,
        I: IntoIterator<Item = &'a E>,
    {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(Error::ShutDown {
                operation: "send_events()",
            });
        }
        let descriptor = E::descriptor();
        let address = self.inner.address(descriptor)?;
        let codec = descriptor.codec().unwrap_or(self.inner.codec);
        let durable = descriptor.durable();
        let mut events = events.into_iter();
        // The chunk whose confirms are awaited while the next one is encoded and
        // published, so the broker does not wait for the client between chunks.
        let mut confirming: Option<BoxFuture<'_, Result<()>>> = None;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK.min(events.size_hint().0.max(1)));
            for event in events.by_ref().take(CHUNK) {
                let body = codec.encode(event, &address)?;
                chunk.push(self.envelope_of(descriptor, &address, codec, body)?);
            }
            if chunk.is_empty() {
                break;
            }
            let last = chunk.len() < CHUNK;
            let mut next = self.publish_chunk(&address, durable, chunk).boxed();
            // Polled once now: its publishes are queued behind the earlier chunk's.
            let next = match (&mut next).now_or_never() {
                Some(result) => {
                    result?;
                    None
                }
                None => Some(next),
            };
            confirming = match (confirming.take(), next) {
                (None, next) => next,
                (Some(earlier), None) => Some(earlier),
                // At most two chunks in flight: wait for the earlier one, letting
                // the later one go on (polled second, so it never overtakes).
                (Some(earlier), Some(next)) => match future::select(earlier, next).await {
                    Either::Left((result, next)) => {
                        result?;
                        Some(next)
                    }
                    Either::Right((result, earlier)) => {
                        result?;
                        Some(earlier)
                    }
                },
            };
            if last {
                break;
            }
        }
        match confirming {
            Some(pending) => pending.await,
            None => Ok(()),
        }
    }

    /// Publishes finished envelopes together, bounded by the send timeout, and
    /// counts them.
    async fn publish_chunk(
        &self,
        address: &str,
        durable: bool,
        envelopes: Vec<Envelope>,
    ) -> Result<()> {
        let count = envelopes.len();
        let span = tracing::debug_span!("send_batch", event = %address, count);
        let route = Route::new(address, durable);
        let publish = self.inner.provider.publish_batch(route, envelopes);
        self.bounded(publish, span, || {
            format!("a batch of {count} `{address}` events")
        })
        .await?;
        self.inner
            .stats
            .sent
            .fetch_add(count as u64, Ordering::Relaxed);
        for _ in 0..count {
            crate::metrics::sent(address);
        }
        Ok(())
    }
}
