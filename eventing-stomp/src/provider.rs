//! [`StompProvider`]: the [`Provider`] over the publishing session
//! ([`crate::publish`]), one session per consumer ([`crate::consumer`]), the
//! RabbitMQ topology ([`crate::topology`]) and the dead letters
//! ([`crate::dead_letters`]), with the state its consumers share
//! ([`crate::shared`]).

use std::sync::Arc;
use std::time::Duration;

use eventing::provider::{Capabilities, ConsumeOptions, Consumer, Provider, ProviderConfig, Route};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::StompConfig;
use crate::connection::Connection;
use crate::consumer::{Finished, StompConsumer};
use crate::dead_letters;
use crate::dialect::Dialect;
use crate::error::PROVIDER;
use crate::shared::Shared;
use crate::topology::Topology;

/// The STOMP 1.2 provider. Cloning shares the sessions.
///
/// It keeps one session for sending (reopened on the next send after it was
/// lost) and opens one per subscription. On RabbitMQ it declares the event
/// exchanges, competing queues and dead-letter queues over AMQP 0-9-1 (see
/// [`RabbitAdmin`](crate::RabbitAdmin)), because the STOMP plugin cannot.
#[derive(Clone)]
pub struct StompProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StompProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompProvider")
            .field("config", &self.inner.shared.config)
            .field("server_name", &self.inner.server_name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    topology: Topology,
    server_name: String,
    /// The consumers' sessions, closed by `close`.
    sessions: Mutex<Vec<Connection>>,
}

impl StompProvider {
    /// Connects to the broker the URL names and opens the publishing session,
    /// so wrong credentials or an unreachable broker fail here.
    pub async fn connect(config: ProviderConfig) -> eventing::Result<StompProvider> {
        let stomp = StompConfig::from_url(&config.url)?;
        StompProvider::with_config(stomp, config.server_name, config.send_timeout).await
    }

    /// Like [`connect`](Self::connect) with settings already parsed.
    pub async fn with_config(
        config: StompConfig,
        server_name: impl Into<String>,
        send_timeout: Duration,
    ) -> eventing::Result<StompProvider> {
        let shared = Shared::open(config, send_timeout).await?;
        let config = &shared.config;
        tracing::info!(broker = %config.display_endpoint(), dialect = ?config.dialect, "STOMP provider connected");
        Ok(StompProvider {
            inner: Arc::new(Inner {
                topology: Topology::new(config, &shared.transport),
                shared: Arc::new(shared),
                server_name: server_name.into(),
                sessions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &StompConfig {
        &self.inner.shared.config
    }

    /// Messages this provider's consumers could not read whole (over
    /// `max_frame`, headers over the limits or malformed) and dead-lettered
    /// themselves, with the reason, before acknowledging them. The runtime never
    /// saw them, so they are not in `EventManager::stats()`.
    pub fn unreadable_dead_lettered(&self) -> u64 {
        self.inner.shared.unreadable_dead_lettered()
    }

    /// Messages without a readable `ack` header (unreadable ones whose `ack`
    /// line was unreadable too, or a `MESSAGE` sent without one), which can be
    /// neither acknowledged nor dead-lettered, so they were left unacknowledged
    /// on their session (counted each time one arrives). Never seen on
    /// RabbitMQ, which writes `ack` among the first header lines.
    pub fn unreadable_held(&self) -> u64 {
        self.inner.shared.unreadable_held()
    }

    /// An error for a queue messages cannot be put back onto: on ActiveMQ a
    /// per-process listener is a subscription to the event's topic, not a queue.
    fn replayable(&self, queue: &QueueSpec) -> eventing::Result<()> {
        if queue.per_process && self.config().dialect == Dialect::ActiveMq {
            return Err(Error::Unsupported {
                provider: PROVIDER,
                operation: "replaying dead letters of a per-process listener on ActiveMQ \
                            (it subscribes to the event's topic; there is no queue to put them on)",
            });
        }
        Ok(())
    }

    /// Keeps `consumer`'s session, so `close` ends it.
    fn track(&self, consumer: &StompConsumer) {
        let mut sessions = self.inner.sessions.lock();
        sessions.retain(|session| !session.is_closed());
        sessions.push(consumer.session().clone());
    }
}

impl Provider for StompProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        let capabilities = Capabilities::NONE.with_dead_letters();
        match self.config().dialect {
            Dialect::RabbitMq => capabilities.with_delayed(),
            // ActiveMQ: its scheduler (issue 15, part 2); Artemis: not tested here.
            Dialect::ActiveMq => capabilities.with_delayed(),
            Dialect::Artemis => capabilities,
        }
    }

    /// On ActiveMQ, the consumer queue (or topic) and dead-letter queue that
    /// stand for `queue` ([`crate::activemq`]).
    fn broker_names(&self, queue: &QueueSpec) -> Option<String> {
        (self.config().dialect == Dialect::ActiveMq).then(|| crate::activemq::broker_names(queue))
    }

    async fn declare(&self, queues: &[QueueSpec]) -> eventing::Result<()> {
        Ok(self.inner.topology.declare(queues).await?)
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> eventing::Result<()> {
        let publisher = &self.inner.shared.publisher;
        publisher.check_open()?;
        let deadline = Instant::now() + self.inner.shared.send_timeout;
        self.inner
            .topology
            .ensure_exchange(route.address, route.durable)
            .await?;
        publisher.publish(route, &envelope, deadline).await
    }

    async fn subscribe(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> eventing::Result<Box<dyn Consumer>> {
        let span = tracing::debug_span!("subscribe", event = %queue.event, queue = %queue.name);
        async move {
            let shared = &self.inner.shared;
            if let Some(left) = shared.stuck_for(&queue.name) {
                return Err(Error::Unavailable {
                    provider: PROVIDER,
                    reason: format!(
                        "queue `{}` is held up by messages this client can neither read nor \
                         acknowledge (see the error log); not subscribing for another {left:?}",
                        queue.name
                    ),
                });
            }
            self.inner
                .topology
                .declare(std::slice::from_ref(queue))
                .await?;
            let prefetch = options.prefetch.max(1);
            let consumer = StompConsumer::subscribe(Arc::clone(shared), queue, prefetch).await?;
            self.track(&consumer);
            tracing::debug!(event = %queue.event, queue = %queue.name, prefetch, "subscribed");
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        }
        .instrument(span)
        .await
    }

    /// Closes the publishing session and every consumer session (their
    /// unacknowledged messages return to the queues), waiting for each.
    async fn close(&self) -> eventing::Result<()> {
        let sessions = std::mem::take(&mut *self.inner.sessions.lock());
        let consumers = futures_util::future::join_all(sessions.iter().map(Connection::close));
        tokio::join!(self.inner.shared.publisher.close(), consumers);
        Ok(())
    }

    async fn dead_letters(
        &self,
        queue: &QueueSpec,
        limit: usize,
    ) -> eventing::Result<Vec<Envelope>> {
        dead_letters::list(&self.inner.shared, queue, limit).await
    }

    async fn dead_letter_depth(&self, queue: &QueueSpec) -> eventing::Result<usize> {
        self.replayable(queue)?;
        dead_letters::depth(&self.inner.shared, &self.inner.topology, queue).await
    }

    /// A client-individual subscription to the dead-letter queue on a session
    /// of its own; no dead-letter queue is a consumer that ends at once.
    async fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> eventing::Result<Box<dyn Consumer>> {
        let shared = Arc::clone(&self.inner.shared);
        match StompConsumer::take_dead_letters(shared, queue, prefetch).await? {
            Some(consumer) => {
                self.track(&consumer);
                tracing::debug!(queue = %queue.name, prefetch, "taking dead letters");
                Ok(Box::new(consumer))
            }
            None => Ok(Box::new(Finished)),
        }
    }

    async fn send_to_queue(&self, queue: &QueueSpec, envelope: Envelope) -> eventing::Result<()> {
        self.replayable(queue)?;
        self.inner.shared.publisher.to_queue(queue, &envelope).await
    }

    /// RabbitMQ: to the queue `<event>.schedule.<ms>` (made on demand), whose
    /// messages live `delay` rounded up to 100 ms / 1 s / 1 min
    /// ([`schedule_delay`](eventing_rabbitmq::topology::schedule_delay)) and then
    /// go to the event's exchange, with a receipt: never early, late by that
    /// rounding plus the broker's latency.
    async fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: std::time::Duration,
        envelope: Envelope,
    ) -> eventing::Result<()> {
        let dialect = self.config().dialect;
        if dialect == Dialect::ActiveMq {
            // ActiveMQ: its scheduler (issue 15, part 2). A `SEND` to the event's
            // virtual topic with `AMQ_SCHEDULED_DELAY`, receipted: the scheduler
            // stores it (persistently if durable) before the receipt.
            let frame = dialect
                .scheduled_frame(route.address, "", delay, &envelope, route.durable)
                .ok_or(Error::Unsupported {
                    provider: PROVIDER,
                    operation: "scheduled sends on this broker",
                })?;
            return self
                .inner
                .shared
                .publisher
                .to_waiting(frame, None, route.address, &envelope)
                .await;
        }
        if dialect != Dialect::RabbitMq {
            return Err(Error::Unsupported {
                provider: PROVIDER,
                operation: "scheduled sends on this broker",
            });
        }
        let rounded = eventing_rabbitmq::topology::schedule_delay(delay).ok_or_else(|| {
            Error::provider(
                PROVIDER,
                format!(
                    "a scheduled send of {delay:?} is longer than RabbitMQ holds a message \
                     ({:?})",
                    eventing_rabbitmq::topology::MAX_DELAY
                ),
            )
        })?;
        let waiting = eventing_rabbitmq::topology::schedule_queue(route.address, rounded);
        let frame = dialect
            .scheduled_frame(
                route.address,
                &waiting.name,
                delay,
                &envelope,
                route.durable,
            )
            .ok_or(Error::Unsupported {
                provider: PROVIDER,
                operation: "scheduled sends on this broker",
            })?;
        // Where it goes when its time comes must exist by then.
        self.inner
            .topology
            .ensure_exchange(route.address, route.durable)
            .await?;
        self.inner
            .shared
            .publisher
            .to_waiting(frame, Some(&waiting), route.address, &envelope)
            .await
    }
}

/// The factory registered for `stomp://` and `stomps://`.
fn connect(config: ProviderConfig) -> eventing::provider::ConnectFuture {
    Box::pin(async move { Ok(StompProvider::connect(config).await?.into_dyn()) })
}

eventing::register_provider!(["stomp", "stomps"], connect);
