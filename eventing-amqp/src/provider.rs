//! [`AmqpProvider`]: its connections, publishing channels and consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use eventing::provider::{Capabilities, ConsumeOptions, Consumer, Provider, ProviderConfig, Route};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Result};
use eventing_rabbitmq::QueueType;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::consume::{self, AmqpConsumer, Settler};
use crate::error::{PROVIDER, broker, is_not_found, short};
use crate::link::Link;
use crate::publish::Publisher;
use crate::topology::{self, DeadLetterQueue};
use crate::url;

/// How long `close` waits for consumers' last acknowledgements and for the broker.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The AMQP 0-9-1 provider (RabbitMQ).
///
/// Managers normally get it through their URL (`amqp://` or `amqps://`); build it
/// yourself with [`AmqpProvider::connect`] to share it between several managers
/// ([`EventManagerBuilder::shared_provider`](eventing::EventManagerBuilder::shared_provider)).
///
/// It opens two connections: one for publishing (a channel in confirm mode for
/// durable messages and dead letters, one for transient messages) and one for
/// consuming (a channel per consumer, and short-lived ones for declarations and for
/// reading dead letters). RabbitMQ throttles a connection that publishes faster than
/// its queues take messages by no longer reading from it; on a shared connection
/// that would also hold back the consumers' acknowledgements and stall them.
#[derive(Clone)]
pub struct AmqpProvider {
    inner: Arc<Inner>,
}

struct Inner {
    /// Consumers, their acknowledgements, declarations, reading dead letters.
    consuming: Link,
    /// Holds the publishing connection.
    publisher: Arc<Publisher>,
    /// Each consumer's acknowledgement task, so `close` can let them finish.
    consumers: Mutex<Vec<(Weak<Settler>, JoinHandle<()>)>>,
    url: String,
    server: String,
    /// The type of competing queues (the URL's `queue_type`, `delivery_limit`).
    queue_type: QueueType,
    closed: AtomicBool,
}

impl std::fmt::Debug for AmqpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpProvider")
            .field("url", &self.inner.url)
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

impl AmqpProvider {
    /// Connects to the broker at `config.url`, waiting at most `config.send_timeout`.
    ///
    /// The URL is `amqp://user:password@host:port/vhost` with the vhost
    /// percent-encoded (`%2f` for `/`), or `amqps://` with the `rustls` feature.
    /// lapin's query parameters (`heartbeat`, `frame_max`, `channel_max`,
    /// `connection_timeout`) apply, and the provider's own: `queue_type=quorum`
    /// (with `delivery_limit=N`, default 20) for quorum competing queues,
    /// `tls_ca=<pem file>` (or `cacertfile=`) on `amqps://` to trust a private CA,
    /// and `failover=host:port,host:port` for other nodes of a cluster, tried in
    /// turn (with the URL's credentials, vhost and TLS) when a connection is
    /// (re)opened, starting with the host that worked last.
    /// Unknown, repeated or malformed parameters are [`Error::InvalidUrl`](eventing::Error::InvalidUrl).
    /// Errors never contain the credentials.
    pub async fn connect(config: ProviderConfig) -> Result<Self> {
        let url = url::parse(&config.url)?;
        let link = |role: &str| {
            let name = format!("eventing {} ({role})", config.server_name);
            Link::open(
                url.hosts(),
                url.tls.clone(),
                url.redacted.clone(),
                name,
                config.send_timeout,
            )
        };
        let (consuming, publishing) = tokio::try_join!(link("consume"), link("publish"))?;
        let publisher = Publisher::new(publishing, config.send_timeout).await?;
        tracing::info!(url = %url.redacted, server = %config.server_name, "connected");
        Ok(Self {
            inner: Arc::new(Inner {
                consuming,
                publisher: Arc::new(publisher),
                consumers: Mutex::new(Vec::new()),
                url: url.redacted,
                server: config.server_name,
                queue_type: url.queue_type,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The broker's URL without credentials.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Consumes `queue` on a channel of its own with `basic.qos` = `prefetch`.
    /// Dead letters go to `dead_letters` (`None`: consuming a dead-letter queue).
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        dead_letters: Option<DeadLetterQueue>,
        spec: Option<&QueueSpec>,
    ) -> std::result::Result<AmqpConsumer, Consume> {
        let name = short("queue", queue).map_err(Consume::Other)?;
        let connection = self.inner.consuming.get().await.map_err(Consume::Other)?;
        let channel = connection.create_channel().await.map_err(|e| {
            Consume::Other(broker("opening a channel to consume from queue", queue, e))
        })?;
        let prefetch = prefetch.max(1);
        let consumed = async {
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await
                .map_err(|e| ("setting the prefetch count for queue", e))?;
            let tag = ShortString::from(format!("eventing-{}", uuid::Uuid::new_v4().simple()));
            channel
                .basic_consume(
                    name,
                    tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| ("consuming from queue", e))
        };
        let stream = match consumed.await {
            Ok(stream) => stream,
            Err((_, error)) if is_not_found(&error) => return Err(Consume::NotFound),
            Err((operation, error)) => return Err(Consume::Other(broker(operation, queue, error))),
        };
        let settler = Arc::new(Settler::new(channel, queue, prefetch));
        let task = tokio::spawn(consume::send_acks(Arc::clone(&settler)));
        {
            let mut consumers = self.inner.consumers.lock();
            consumers.retain(|(_, task)| !task.is_finished());
            consumers.push((Arc::downgrade(&settler), task));
        }
        Ok(AmqpConsumer::new(
            stream,
            settler,
            Arc::clone(&self.inner.publisher),
            dead_letters,
            spec,
        ))
    }
}

/// Why consuming a queue failed.
enum Consume {
    /// The queue does not exist (404).
    NotFound,
    Other(eventing::Error),
}

impl Provider for AmqpProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        // `publish` keeps the send timeout on its own (`Publisher::deliver`).
        Capabilities::NONE
            .with_dead_letters()
            .with_delayed()
            .with_bounded_publish()
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        let connection = self.inner.consuming.get().await?;
        topology::declare(&connection, queues, self.inner.queue_type).await?;
        for spec in queues {
            self.inner.publisher.exchange_declared(&spec.event);
        }
        Ok(())
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> Result<()> {
        self.inner.publisher.publish(route, &envelope).await
    }

    /// Pipelined: every publish is written before any answer is awaited, and for a
    /// durable event the confirms are awaited together.
    async fn publish_batch(&self, route: Route<'_>, envelopes: Vec<Envelope>) -> Result<()> {
        self.inner.publisher.publish_batch(route, &envelopes).await
    }

    async fn subscribe(
        &self,
        spec: &QueueSpec,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Consumer>> {
        let dead_letters = DeadLetterQueue::new(spec, self.inner.queue_type)?;
        Provider::declare(self, std::slice::from_ref(spec)).await?;
        let prefetch = options.prefetch.max(1);
        let consumer = match self
            .consume(&spec.name, prefetch, Some(dead_letters), Some(spec))
            .await
        {
            Ok(consumer) => consumer,
            Err(Consume::Other(error)) => return Err(error),
            // Deleted between the declaration and the consume: the runtime tries again.
            Err(Consume::NotFound) => {
                return Err(eventing::Error::QueueNotFound {
                    queue: spec.name.clone(),
                });
            }
        };
        tracing::info!(queue = %spec.name, event = %spec.event, prefetch, "consuming");
        Ok(Box::new(consumer))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let consumers = std::mem::take(&mut *self.inner.consumers.lock());
        for (settler, _) in &consumers {
            if let Some(settler) = settler.upgrade() {
                settler.close();
            }
        }
        for (_, task) in consumers {
            match tokio::time::timeout(CLOSE_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "acknowledgement task failed"),
                Err(_) => tracing::warn!("acknowledgement task did not finish in time"),
            }
        }
        tokio::join!(self.inner.consuming.close(), self.inner.publisher.close());
        tracing::info!(url = %self.inner.url, "disconnected");
        Ok(())
    }

    async fn dead_letters(&self, queue: &QueueSpec, limit: usize) -> Result<Vec<Envelope>> {
        let connection = self.inner.consuming.get().await?;
        topology::peek_dead_letters(&connection, queue, limit).await
    }

    async fn dead_letter_depth(&self, queue: &QueueSpec) -> Result<usize> {
        let connection = self.inner.consuming.get().await?;
        topology::dead_letter_depth(&connection, queue).await
    }

    /// Per-process queues are exclusive to the consuming connection and live as
    /// long as it does, so a run-time subscription's is deleted here.
    async fn delete_queue(&self, queue: &QueueSpec) -> Result<()> {
        if !queue.per_process {
            return Ok(());
        }
        let connection = self.inner.consuming.get().await?;
        topology::delete_queue(&connection, queue).await
    }

    /// `basic.consume` on `<queue>.dlq` with `basic.qos` = `prefetch`; no
    /// dead-letter queue is a consumer that ends at once.
    async fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>> {
        match self
            .consume(&queue.dead_letter_queue(), prefetch, None, None)
            .await
        {
            Ok(consumer) => Ok(Box::new(consumer)),
            Err(Consume::NotFound) => Ok(Box::new(consume::Finished)),
            Err(Consume::Other(error)) => Err(error),
        }
    }

    /// Published persistently and `mandatory` to the default exchange (routing
    /// key = the queue), confirmed; a missing queue (the broker returns the
    /// message) is [`Error::QueueNotFound`](eventing::Error::QueueNotFound).
    async fn send_to_queue(&self, queue: &QueueSpec, envelope: Envelope) -> Result<()> {
        self.inner.publisher.to_queue(&queue.name, &envelope).await
    }

    /// Confirmed, to the queue `<event>.schedule.<ms>` (made on demand), whose
    /// messages live `delay` rounded up to 100 ms / 1 s / 1 min
    /// ([`schedule_delay`](eventing_rabbitmq::topology::schedule_delay)) and then
    /// dead-letter to the event's exchange: never early, late by that rounding plus
    /// the broker's latency. Persistent for a durable route. Longer than about 49.7
    /// days (RabbitMQ's largest time to live) is an error.
    async fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: Duration,
        envelope: Envelope,
    ) -> Result<()> {
        let rounded = eventing_rabbitmq::topology::schedule_delay(delay).ok_or_else(|| {
            eventing::Error::provider(
                PROVIDER,
                format!(
                    "a scheduled send of {delay:?} is longer than RabbitMQ holds a message                      ({:?})",
                    eventing_rabbitmq::topology::MAX_DELAY
                ),
            )
        })?;
        let queue = eventing_rabbitmq::topology::schedule_queue(route.address, rounded);
        // Where it goes when its time comes must exist by then.
        self.inner
            .publisher
            .exchange(route.address, route.durable)
            .await?;
        self.inner
            .publisher
            .to_waiting_queue(&queue, &envelope, route.durable, true)
            .await
    }
}
