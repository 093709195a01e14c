//! Scheduled sends: an event the broker holds until its time
//! ([`EventManager::send_event_after`], [`EventManager::send_event_at`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::EventManager;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::provider::Route;

impl EventManager {
    /// Sends `event` as [`send_event`](Self::send_event) does (same pipelines,
    /// same listeners), but the broker holds it for `delay` first: no listener
    /// gets it before `delay` has passed, and it arrives within the provider's
    /// tolerance after that (see the provider's documentation). For a durable event
    /// this returns once the broker has stored it durably, and it survives a broker
    /// restart while it waits; the sending process may exit at once. A zero delay
    /// is a plain send. The provider needs the `delayed` capability, otherwise
    /// this is [`Error::Unsupported`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # #[eventing::event] #[derive(serde::Serialize, serde::Deserialize)] struct ReminderDue { n: u32 }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
    /// let manager = eventing::EventManager::builder().url("memory://schedule-doc").build().await?;
    /// manager.send_event_after(&ReminderDue { n: 1 }, Duration::from_secs(30)).await?;
    /// # manager.shutdown().await }
    /// ```
    pub async fn send_event_after<E: Event>(&self, event: &E, delay: Duration) -> Result<()> {
        let prepared = self.prepare_event(event)?;
        self.publish_after(
            &prepared.address,
            prepared.durable,
            prepared.envelope,
            delay,
        )
        .await
    }

    /// [`send_event_after`](Self::send_event_after) the time until `at` (by this
    /// machine's clock); a time already past is a plain send.
    ///
    /// ```
    /// # use std::time::{Duration, SystemTime};
    /// # #[eventing::event] #[derive(serde::Serialize, serde::Deserialize)] struct AlarmAt { n: u32 }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
    /// let manager = eventing::EventManager::builder().url("memory://schedule-at-doc").build().await?;
    /// let at = SystemTime::now() + Duration::from_secs(60);
    /// manager.send_event_at(&AlarmAt { n: 2 }, at).await?;
    /// # manager.shutdown().await }
    /// ```
    pub async fn send_event_at<E: Event>(&self, event: &E, at: SystemTime) -> Result<()> {
        let delay = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.send_event_after(event, delay).await
    }

    /// Publishes a finished envelope to be delivered after `delay`, bounded by the
    /// send timeout, and counts it.
    async fn publish_after(
        &self,
        address: &str,
        durable: bool,
        envelope: Envelope,
        delay: Duration,
    ) -> Result<()> {
        if delay.is_zero() {
            return self.publish_envelope(address, durable, envelope).await;
        }
        let provider = &self.inner.provider;
        if !provider.capabilities().delayed {
            return Err(Error::Unsupported {
                provider: provider.name(),
                operation: "scheduled sends (delayed delivery)",
            });
        }
        let span = tracing::debug_span!(
            "send",
            event = %address,
            message_id = %envelope.message_id(),
            ?delay,
        );
        let publish = provider.publish_delayed(Route::new(address, durable), delay, envelope);
        self.bounded(publish, span, || format!("scheduled send of `{address}`"))
            .await?;
        self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
        crate::metrics::sent(address);
        Ok(())
    }
}
