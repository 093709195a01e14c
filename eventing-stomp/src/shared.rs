//! What the provider and its consumers share: the settings, the publishing
//! session (consumers dead-letter through it), the counters of unreadable
//! messages, and the queues held up by messages that can be neither read nor
//! acknowledged. Neither the provider nor the consumers own it; both hold it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventing::backoff::Backoff;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::StompConfig;
use crate::connection::{Connection, Options};
use crate::dialect::Dialect;
use crate::error::StompError;
use crate::publish::Publisher;
use crate::transport::Transport;

/// How long subscribing to a stuck queue is refused: 1 s doubling up to 5 min,
/// without jitter (one provider's own wait; nothing retries in step with it).
const STUCK_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).jitter(0.0);

/// The state of one provider that its consumers use too.
pub(crate) struct Shared {
    pub(crate) config: StompConfig,
    pub(crate) transport: Transport,
    /// How long a send (or a `SUBSCRIBE`) may wait for the broker.
    pub(crate) send_timeout: Duration,
    pub(crate) publisher: Publisher,
    /// Unreadable messages dead-lettered by consumers, and held for want of an
    /// `ack` id (see the `consumer` module).
    unreadable_dead_lettered: AtomicU64,
    unreadable_held: AtomicU64,
    /// Queues whose sessions got stuck on messages they could neither read nor
    /// acknowledge: how many times in a row, and until when not to subscribe.
    stuck: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Shared {
    /// Opens the publishing session, so wrong credentials or an unreachable
    /// broker fail here, and learns the broker's dialect from it unless the URL
    /// named one.
    pub(crate) async fn open(
        mut config: StompConfig,
        send_timeout: Duration,
    ) -> Result<Shared, StompError> {
        let transport = Transport::new(&config)?;
        let session = Connection::open(&config, &transport, crate::publish::PUBLISHER).await?;
        if let Err(error) = config.detected(session.server()) {
            session.close().await;
            return Err(error);
        }
        let publisher = Publisher::new(&config, &transport, send_timeout, session);
        Ok(Shared {
            config,
            transport,
            send_timeout,
            publisher,
            unreadable_dead_lettered: AtomicU64::new(0),
            unreadable_held: AtomicU64::new(0),
            stuck: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.config.dialect
    }

    /// A new session to the broker.
    pub(crate) async fn session(&self, options: Options) -> Result<Connection, StompError> {
        Connection::open(&self.config, &self.transport, options).await
    }

    pub(crate) fn count_unreadable_dead_lettered(&self) {
        self.unreadable_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_unreadable_held(&self) {
        self.unreadable_held.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unreadable_dead_lettered(&self) -> u64 {
        self.unreadable_dead_lettered.load(Ordering::Relaxed)
    }

    pub(crate) fn unreadable_held(&self) -> u64 {
        self.unreadable_held.load(Ordering::Relaxed)
    }

    /// Notes that a session of `queue` got stuck on messages it can neither
    /// read nor acknowledge; returns how long subscribing to it is refused.
    pub(crate) fn hold_queue(&self, queue: &str) -> Duration {
        let mut stuck = self.stuck.lock();
        let entry = stuck
            .entry(queue.to_string())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let wait = stuck_wait(entry.0);
        entry.1 = Instant::now() + wait;
        wait
    }

    /// A session of `queue` received a readable message: subscribe freely again.
    pub(crate) fn release_queue(&self, queue: &str) {
        let mut stuck = self.stuck.lock();
        if !stuck.is_empty() {
            stuck.remove(queue);
        }
    }

    /// How long subscribing to `queue` is still refused after it got stuck.
    pub(crate) fn stuck_for(&self, queue: &str) -> Option<Duration> {
        let stuck = self.stuck.lock();
        let (_, until) = stuck.get(queue)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// How long subscribing to a queue is refused after its sessions got stuck
/// `strikes` times in a row: 1 s, doubling, at most 5 min.
fn stuck_wait(strikes: u32) -> Duration {
    STUCK_BACKOFF.delay(strikes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_queues_wait_longer_each_time() {
        let waits: Vec<u64> = [1, 2, 3, 9, 10, 100]
            .into_iter()
            .map(|strikes| stuck_wait(strikes).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 256, 300, 300]);
        assert_eq!(stuck_wait(0), Duration::from_secs(1));
    }
}
