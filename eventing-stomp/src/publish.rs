//! Sending: one STOMP session shared by every send, opened again with backoff
//! when it was lost; durable sends are spread over `publishers` sessions
//! (ActiveMQ: 8 by default), opened on first use. Durable messages, dead letters and messages for one queue
//! are persistent and awaited by their `RECEIPT`; transient ones are written and
//! not awaited.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use eventing::backoff::Backoff;
use eventing::provider::Route;
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error};
use parking_lot::Mutex;
use tokio::time::Instant;

use std::collections::HashMap;

use eventing_rabbitmq::topology as rules;

use crate::admin::RabbitAdmin;
use crate::codec::FrameError;
use crate::config::StompConfig;
use crate::connection::{Connection, Options};
use crate::dialect::Dialect;
use crate::error::{PROVIDER, StompError};
use crate::frame::Frame;
use crate::transport::Transport;

/// The publishing session: up to 1024 frames queued before a send waits.
pub(crate) const PUBLISHER: Options = Options {
    role: "publisher",
    capacity: 1024,
};

/// The pause between attempts to reopen the publishing session: 100 ms doubling
/// up to 2 s, with jitter.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Sends for one provider (and its consumers' dead letters).
pub(crate) struct Publisher {
    config: StompConfig,
    transport: Transport,
    send_timeout: Duration,
    /// Slot 0 carries every kind of send; the others durable sends only.
    slots: Vec<Slot>,
    /// The slot of the next durable send.
    next: AtomicUsize,
    closed: AtomicBool,
    /// RabbitMQ queues made on demand (delayed delivery) and when this provider
    /// last declared each ([`rules::ON_DEMAND_REFRESH`]).
    on_demand: Mutex<HashMap<String, Instant>>,
}

/// One publishing session, reopened when it was lost.
struct Slot {
    session: Mutex<Option<Connection>>,
    reconnect: tokio::sync::Mutex<()>,
}

impl Slot {
    fn new(session: Option<Connection>) -> Slot {
        Slot {
            session: Mutex::new(session),
            reconnect: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Connection> {
        self.session
            .lock()
            .clone()
            .filter(|session| !session.is_closed())
    }
}

impl Publisher {
    /// The publisher on `session`, a session opened with [`PUBLISHER`].
    pub(crate) fn new(
        config: &StompConfig,
        transport: &Transport,
        send_timeout: Duration,
        session: Connection,
    ) -> Publisher {
        let mut slots = vec![Slot::new(Some(session))];
        slots.extend((1..config.publisher_count()).map(|_| Slot::new(None)));
        Publisher {
            config: config.clone(),
            transport: transport.clone(),
            send_timeout,
            slots,
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            on_demand: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `frame`, a message that waits on the broker (a delayed copy for
    /// `target`, or a scheduled send), persistently as built, and waits for its
    /// receipt. `declare`: the RabbitMQ queue it waits in, declared first (over
    /// AMQP) unless this provider did within [`rules::ON_DEMAND_REFRESH`] — a
    /// queue made on demand that expires when unused, and RabbitMQ drops a message
    /// sent to a queue that does not exist.
    pub(crate) async fn to_waiting(
        &self,
        frame: Frame,
        declare: Option<&rules::Queue>,
        target: &str,
        envelope: &Envelope,
    ) -> eventing::Result<()> {
        self.check_open()?;
        if let Some(queue) = declare {
            let fresh = self
                .on_demand
                .lock()
                .get(&queue.name)
                .is_some_and(|at| at.elapsed() < rules::ON_DEMAND_REFRESH);
            if !fresh {
                let mut admin = RabbitAdmin::open(&self.config, &self.transport).await?;
                let declared = admin.declare(queue).await;
                admin.close().await;
                declared?;
                self.on_demand
                    .lock()
                    .insert(queue.name.clone(), Instant::now());
            }
        }
        // Spread over the publishing sessions like durable sends (ActiveMQ
        // stores one persistent message per session at a time): the delayed
        // stage of a busy queue sends as many as the queue handles.
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.receipted_at(
            slot,
            frame,
            target,
            envelope,
            "waiting for the RECEIPT of a delayed message",
        )
        .await
    }

    fn dialect(&self) -> Dialect {
        self.config.dialect
    }

    /// An error once the provider was closed: it sends no more.
    pub(crate) fn check_open(&self) -> eventing::Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Unavailable {
                provider: PROVIDER,
                reason: "the provider was closed".into(),
            });
        }
        Ok(())
    }

    /// Sends `envelope` for the event `route.address`: a durable one
    /// persistently, returning on the broker's receipt, before `deadline`.
    pub(crate) async fn publish(
        &self,
        route: Route<'_>,
        envelope: &Envelope,
        deadline: Instant,
    ) -> eventing::Result<()> {
        let frame = self
            .dialect()
            .send_frame(route.address, envelope, route.durable);
        if let Some(reason) = self.dialect().unsendable(&frame) {
            return Err(StompError::Unsendable { reason }.into());
        }
        // A transient send is not awaited: it stays on slot 0, so that sends of
        // one task keep their order.
        let slot = if route.durable {
            self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
        } else {
            0
        };
        let session = self.session_at(slot, deadline).await?;
        if route.durable {
            let wait = deadline.saturating_duration_since(Instant::now());
            session
                .request(frame, wait, "waiting for the broker's RECEIPT")
                .await
                .map_err(|error| refused(error, route.address, envelope))
        } else {
            session
                .send(&frame)
                .await
                .map_err(|error| refused(error, route.address, envelope))
        }
    }

    /// Sends a dead letter of `queue` persistently and waits for its receipt.
    pub(crate) async fn dead_letter(
        &self,
        queue: &QueueSpec,
        envelope: &Envelope,
    ) -> eventing::Result<()> {
        let frame = self.dialect().dead_letter_frame(queue, envelope);
        let target = queue.dead_letter_queue();
        self.receipted(
            frame,
            &target,
            envelope,
            "waiting for the RECEIPT of a dead letter",
        )
        .await
    }

    /// Sends `envelope` persistently to `queue` alone and waits for its receipt.
    pub(crate) async fn to_queue(
        &self,
        queue: &QueueSpec,
        envelope: &Envelope,
    ) -> eventing::Result<()> {
        let frame = self.dialect().replay_frame(queue, envelope);
        self.receipted(
            frame,
            &queue.name,
            envelope,
            "waiting for the RECEIPT of a message for one queue",
        )
        .await
    }

    /// Sends `frame` (carrying `envelope`, for `target`) and waits for its
    /// receipt, within the send timeout.
    async fn receipted(
        &self,
        frame: Frame,
        target: &str,
        envelope: &Envelope,
        operation: &'static str,
    ) -> eventing::Result<()> {
        self.receipted_at(0, frame, target, envelope, operation)
            .await
    }

    /// [`receipted`](Self::receipted) on publishing session `slot`.
    async fn receipted_at(
        &self,
        slot: usize,
        frame: Frame,
        target: &str,
        envelope: &Envelope,
        operation: &'static str,
    ) -> eventing::Result<()> {
        let deadline = Instant::now() + self.send_timeout;
        if let Some(reason) = self.dialect().unsendable(&frame) {
            return Err(StompError::Unsendable { reason }.into());
        }
        let session = self.session_at(slot, deadline).await?;
        let wait = deadline.saturating_duration_since(Instant::now());
        session
            .request(frame, wait, operation)
            .await
            .map_err(|error| refused(error, target, envelope))
    }

    /// Publishing session `index`, (re)opened with backoff (until `deadline`).
    async fn session_at(&self, index: usize, deadline: Instant) -> Result<Connection, StompError> {
        let slot = &self.slots[index];
        if let Some(session) = slot.current() {
            return Ok(session);
        }
        let _one_at_a_time = slot.reconnect.lock().await;
        if let Some(session) = slot.current() {
            return Ok(session);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.closed.load(Ordering::Relaxed) {
                return Err(StompError::Closed {
                    reason: "the provider was closed".into(),
                });
            }
            let pause = RECONNECT.delay(attempt);
            match Connection::open(&self.config, &self.transport, PUBLISHER).await {
                Ok(session) => {
                    let reopened = slot.session.lock().replace(session.clone()).is_some();
                    if reopened {
                        tracing::info!(broker = %session.label(), index, "STOMP publishing session reopened");
                    } else {
                        tracing::debug!(broker = %session.label(), index, "STOMP publishing session opened");
                    }
                    return Ok(session);
                }
                Err(error) if error.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(%error, ?pause, "STOMP broker unavailable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Closes the publishing sessions for good.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let sessions: Vec<Connection> = self
            .slots
            .iter()
            .filter_map(|slot| slot.session.lock().take())
            .collect();
        futures_util::future::join_all(sessions.iter().map(Connection::close)).await;
    }
}
/// The runtime's error for a failed send: a broker `ERROR` is a refusal.
fn refused(error: StompError, address: &str, envelope: &Envelope) -> Error {
    match error {
        StompError::Broker(broker) => Error::Refused {
            provider: PROVIDER,
            address: address.to_string(),
            message_id: envelope.message_id().to_string(),
            reason: broker.to_string(),
        },
        StompError::Encode(frame) => match &*frame {
            FrameError::FrameTooLarge { limit, size } => Error::TooLarge {
                address: address.to_string(),
                size: *size,
                limit: *limit,
            },
            _ => StompError::Encode(frame).into(),
        },
        other => other.into(),
    }
}
