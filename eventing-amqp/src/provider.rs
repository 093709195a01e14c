//! [`AmqpProvider`]: its connections, publishing channels and consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use eventing::{
    BoxFuture, ConsumeOptions, Consumer, Envelope, Provider, ProviderConfig, QueueSpec, Result,
    Route,
};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::consume::{self, AmqpConsumer, Settler};
use crate::error::{PROVIDER, broker, short};
use crate::link::Link;
use crate::publish::Publisher;
use crate::replay;
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
    queue_type: topology::QueueType,
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

    async fn start_consuming(
        &self,
        spec: &QueueSpec,
        options: ConsumeOptions,
    ) -> Result<AmqpConsumer> {
        let queue = short("queue", &spec.name)?;
        let dead_letters = DeadLetterQueue::of(spec)?.with_type(self.inner.queue_type);
        let connection = self.inner.consuming.get().await?;
        topology::declare(
            &connection,
            std::slice::from_ref(spec),
            self.inner.queue_type,
        )
        .await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker("opening a channel to consume from queue", &spec.name, e))?;
        let prefetch = options.prefetch.max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| broker("setting the prefetch count for queue", &spec.name, e))?;
        let tag = ShortString::from(format!("eventing-{}", uuid::Uuid::new_v4().simple()));
        let stream = channel
            .basic_consume(
                queue,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("consuming from queue", &spec.name, e))?;
        let settler = Arc::new(Settler::new(channel, &spec.name, prefetch));
        let task = tokio::spawn(consume::send_acks(Arc::clone(&settler)));
        {
            let mut consumers = self.inner.consumers.lock();
            consumers.retain(|(_, task)| !task.is_finished());
            consumers.push((Arc::downgrade(&settler), task));
        }
        tracing::info!(queue = %spec.name, event = %spec.event, prefetch, "consuming");
        Ok(AmqpConsumer::new(
            stream,
            settler,
            Arc::clone(&self.inner.publisher),
            dead_letters,
        ))
    }
}

impl Provider for AmqpProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn declare<'a>(&'a self, queues: &'a [QueueSpec]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let connection = self.inner.consuming.get().await?;
            topology::declare(&connection, queues, self.inner.queue_type).await?;
            for spec in queues {
                self.inner.publisher.exchange_declared(&spec.event);
            }
            Ok(())
        })
    }

    fn publish<'a>(&'a self, route: Route<'a>, envelope: Envelope) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.inner.publisher.publish(route, &envelope).await })
    }

    fn subscribe<'a>(
        &'a self,
        queue: &'a QueueSpec,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        Box::pin(async move {
            let consumer = self.start_consuming(queue, options).await?;
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>> {
        Box::pin(async move {
            let connection = self.inner.consuming.get().await?;
            topology::peek_dead_letters(&connection, queue, limit).await
        })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let connection = self.inner.consuming.get().await?;
            replay::replay(&connection, &self.inner.publisher, queue, limit).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
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
        })
    }
}
