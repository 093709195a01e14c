//! Sending many events of one type at once: [`EventManager::send_events`].

use std::sync::atomic::Ordering;

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
    /// chunks of a thousand or so, each bounded by the send timeout. On an error,
    /// the events before it may have been published (at least once: sending the
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
        let mut events = events.into_iter();
        loop {
            let mut chunk = Vec::with_capacity(CHUNK.min(events.size_hint().0.max(1)));
            for event in events.by_ref().take(CHUNK) {
                let body = codec.encode(event, &address)?;
                chunk.push(self.envelope_of(descriptor, &address, codec, body)?);
            }
            if chunk.is_empty() {
                return Ok(());
            }
            let last = chunk.len() < CHUNK;
            self.publish_chunk(&address, descriptor.durable(), chunk)
                .await?;
            if last {
                return Ok(());
            }
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
