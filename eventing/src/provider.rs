//! The transport interface and the registry of provider factories keyed by URL scheme.
//!
//! A provider moves [`Envelope`]s between managers. The runtime owns everything else:
//! serialization, pipelines, retries, dead-letter decisions, concurrency and shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::topology::QueueSpec;

/// Where a message is sent: the resolved event name (the address) and its durability.
#[derive(Clone, Debug)]
pub struct Route<'a> {
    /// The event's address.
    pub address: &'a str,
    /// Durable events want persistent messages and a broker confirmation.
    pub durable: bool,
}

/// Limits for one subscription.
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// How many unacknowledged deliveries the broker may push to this consumer.
    pub prefetch: u16,
}

/// A transport. Implementations must be cheap to share (`Arc<dyn Provider>`).
pub trait Provider: Send + Sync + 'static {
    /// A short name for logs and errors (`"memory"`, `"amqp"`, `"stomp"`).
    fn name(&self) -> &'static str;

    /// Declares the queues (and the exchanges/addresses they bind to). Idempotent.
    fn declare<'a>(&'a self, queues: &'a [QueueSpec]) -> BoxFuture<'a, Result<()>>;

    /// Publishes one message to every queue bound to `route.address`. For durable
    /// routes it returns only once the broker has taken responsibility for it.
    fn publish<'a>(&'a self, route: Route<'a>, envelope: Envelope) -> BoxFuture<'a, Result<()>>;

    /// Starts consuming from a declared queue.
    fn subscribe<'a>(
        &'a self,
        queue: &'a QueueSpec,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>>;

    /// Up to `limit` messages of the dead-letter queue of `queue`, oldest first, left
    /// in place.
    fn dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>> {
        let _ = (queue, limit);
        Box::pin(std::future::ready(Err(Error::Unsupported {
            provider: self.name(),
            operation: "listing dead letters",
        })))
    }

    /// Moves up to `limit` messages of the dead-letter queue of `queue` back onto
    /// `queue`, removing the `x-dead-letter-*` headers; returns how many moved.
    fn replay_dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<usize>> {
        let _ = (queue, limit);
        Box::pin(std::future::ready(Err(Error::Unsupported {
            provider: self.name(),
            operation: "replaying dead letters",
        })))
    }

    /// Closes connections. Consumers should be cancelled first.
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Settles deliveries of one consumer.
pub trait Acker: Send + Sync + 'static {
    /// The listener handled the message: remove it from the queue.
    fn ack(&self, tag: u64);

    /// Put the message back on the queue (it was not handled).
    fn requeue(&self, tag: u64);

    /// Move the message to the queue's dead-letter queue as `envelope` (the original
    /// plus the reason headers), then remove the original.
    fn dead_letter(&self, tag: u64, envelope: Envelope) -> BoxFuture<'static, Result<()>>;
}

/// One message handed to a consumer.
pub struct Delivery {
    /// The message.
    pub envelope: Envelope,
    /// The provider's tag for settling it.
    pub tag: u64,
    /// True if it was delivered before without an acknowledgement.
    pub redelivered: bool,
    /// Settles the delivery.
    pub acker: Arc<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("tag", &self.tag)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// A stream of deliveries from one queue.
///
/// After [`cancel`](Consumer::cancel) the stream yields the deliveries already
/// buffered and then ends; the runtime requeues those it will not handle.
///
/// If the stream ends without `cancel` (the connection was lost), the runtime calls
/// [`Provider::declare`] and [`Provider::subscribe`] again with backoff until they
/// succeed, so a provider only needs to reconnect when asked.
pub trait Consumer: Stream<Item = Result<Delivery>> + Send + Unpin {
    /// Stops the broker from sending more deliveries.
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// A boxed consumer.
pub type BoxConsumer = Pin<Box<dyn Consumer>>;

/// What a provider factory gets to build a provider.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The URL (may hold credentials: never log it, use [`redact_url`](crate::redact_url)).
    pub url: String,
    /// The manager's server name.
    pub server_name: String,
    /// How long a send may wait for an unavailable broker.
    pub send_timeout: Duration,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("server_name", &self.server_name)
            .field("send_timeout", &self.send_timeout)
            .finish()
    }
}

/// Builds a provider for a URL. Register one with [`register_provider!`](crate::register_provider).
pub struct ProviderFactory {
    /// The URL schemes it serves, without `://`.
    pub schemes: &'static [&'static str],
    /// Connects.
    pub connect: fn(ProviderConfig) -> ConnectFuture,
}

/// What a provider factory's `connect` returns.
pub type ConnectFuture = BoxFuture<'static, Result<Arc<dyn Provider>>>;

inventory::collect!(ProviderFactory);

/// Registers a [`ProviderFactory`] so `EventManagerBuilder::url` finds it by scheme.
///
/// ```
/// use std::sync::Arc;
/// use eventing::{MemoryProvider, Provider, ProviderConfig};
///
/// fn connect(_: ProviderConfig) -> eventing::BoxFuture<'static, eventing::Result<Arc<dyn Provider>>> {
///     Box::pin(async { Ok(Arc::new(MemoryProvider::new()) as Arc<dyn Provider>) })
/// }
/// eventing::register_provider!(["my-memory"], connect);
/// ```
#[macro_export]
macro_rules! register_provider {
    ([$($scheme:literal),+ $(,)?], $connect:path) => {
        $crate::__private::inventory::submit! {
            $crate::ProviderFactory { schemes: &[$($scheme),+], connect: $connect }
        }
    };
}

/// The scheme of a URL (`amqp` for `amqp://...`).
pub(crate) fn scheme_of(url: &str) -> Result<&str> {
    let (scheme, _) = url.split_once("://").ok_or_else(|| Error::InvalidUrl {
        reason: "expected `scheme://...`, such as memory:// or amqp://127.0.0.1:5672".into(),
    })?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(Error::InvalidUrl {
            reason: "the scheme must be letters, digits, `+`, `-` or `.`".into(),
        });
    }
    Ok(scheme)
}

/// Connects the provider registered for the URL's scheme.
pub async fn connect(config: ProviderConfig) -> Result<Arc<dyn Provider>> {
    let scheme = scheme_of(&config.url)?.to_ascii_lowercase();
    let factory = inventory::iter::<ProviderFactory>
        .into_iter()
        .find(|f| f.schemes.iter().any(|s| s.eq_ignore_ascii_case(&scheme)));
    match factory {
        Some(factory) => (factory.connect)(config).await,
        None => {
            let mut known: Vec<&str> = inventory::iter::<ProviderFactory>
                .into_iter()
                .flat_map(|f| f.schemes.iter().copied())
                .collect();
            known.sort_unstable();
            Err(Error::UnknownScheme {
                scheme,
                known: known.join(", "),
            })
        }
    }
}
