//! The transport contract, its object-safe form, and the registry of provider
//! factories keyed by URL scheme.
//!
//! A provider moves [`Envelope`]s between managers. The runtime owns everything else:
//! serialization, pipelines, retries and their backoff, dead-letter decisions and
//! headers, replaying dead letters, concurrency and shutdown.
//!
//! # Writing a provider
//!
//! Implement [`Provider`] with `async fn`s; the blanket [`DynProvider`] impl boxes
//! them so the manager can hold any provider as `Arc<dyn DynProvider>`
//! ([`Provider::into_dyn`]). A consumer is a [`Stream`] of [`Delivery`]s, each with
//! an [`Acker`] that settles it. Optional capabilities (listing and replaying dead
//! letters; delayed delivery) are announced by [`Provider::capabilities`]; the
//! runtime answers [`Error::Unsupported`] for the rest without calling the provider.
//!
//! The data a provider receives or builds ([`Route`], [`ConsumeOptions`],
//! [`Delivery`], [`ProviderConfig`], [`QueueSpec`]) is `#[non_exhaustive]`: build it
//! with its constructors, so a field added later does not break an outside crate.
//!
//! The conformance kit (`eventing-test`) is the definition of "done": a provider
//! passes its behaviour, features and fault suites on its real broker.
//!
//! ```
//! use eventing::provider::{ConsumeOptions, Consumer, Provider, Route};
//! use eventing::topology::QueueSpec;
//! use eventing::{Envelope, Result};
//!
//! /// A provider that drops every message (a sketch: see the reference provider
//! /// in `eventing-test`'s examples for a complete one).
//! struct Void;
//!
//! impl Provider for Void {
//!     fn name(&self) -> &'static str {
//!         "void"
//!     }
//!     async fn declare(&self, _queues: &[QueueSpec]) -> Result<()> {
//!         Ok(())
//!     }
//!     async fn publish(&self, _route: Route<'_>, _envelope: Envelope) -> Result<()> {
//!         Ok(())
//!     }
//!     async fn subscribe(
//!         &self,
//!         _queue: &QueueSpec,
//!         _options: ConsumeOptions,
//!     ) -> Result<Box<dyn Consumer>> {
//!         Err(eventing::Error::Unsupported { provider: "void", operation: "subscribing" })
//!     }
//! }
//!
//! let provider = Void.into_dyn();
//! assert_eq!(provider.name(), "void");
//! assert!(!provider.capabilities().dead_letters);
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::topology::QueueSpec;

/// Where a message is sent: the resolved event name (the address) and its durability.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Route<'a> {
    /// The event's address.
    pub address: &'a str,
    /// Durable events want persistent messages and a broker confirmation.
    pub durable: bool,
}

impl<'a> Route<'a> {
    /// A route to `address`; `durable` asks for a persistent, confirmed message.
    pub fn new(address: &'a str, durable: bool) -> Self {
        Self { address, durable }
    }
}

/// Limits for one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// How many unacknowledged deliveries the broker may push to this consumer.
    pub prefetch: u16,
}

impl ConsumeOptions {
    /// Options with this prefetch (unacknowledged deliveries in flight).
    pub fn new(prefetch: u16) -> Self {
        Self { prefetch }
    }
}

/// What a provider can do beyond the required operations. The runtime checks it
/// before calling an optional operation and answers [`Error::Unsupported`] itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Dead letters can be listed ([`Provider::dead_letters`]) and replayed (the
    /// runtime's replay, through [`Provider::dead_letter_depth`],
    /// [`Provider::take_dead_letters`] and [`Provider::send_to_queue`]).
    pub dead_letters: bool,
    /// Messages can wait on the broker before delivery: the delayed retry stage
    /// ([`Acker::delay`], for listeners whose [`RetryPolicy`](crate::RetryPolicy)
    /// has `delays`) and scheduled sends ([`Provider::publish_delayed`], behind
    /// `EventManager::send_event_after` / `send_event_at`). Waiting messages are
    /// held by the broker, never by the consuming process.
    pub delayed: bool,
    /// [`Provider::publish`] returns by itself, on every path, within the send
    /// timeout of the [`ProviderConfig`] it was connected with: confirmed, failed,
    /// or [`Error::Unavailable`] / [`Error::Timeout`] with its own reason. A
    /// manager that connected the provider from its URL (so with its own send
    /// timeout) then arms no timer of its own around each send. Claim it only when
    /// every wait inside `publish` is bounded by that deadline.
    pub bounded_publish: bool,
}

impl Capabilities {
    /// Only the required operations.
    pub const NONE: Self = Self {
        dead_letters: false,
        delayed: false,
        bounded_publish: false,
    };

    /// Adds listing and replaying dead letters.
    pub const fn with_dead_letters(mut self) -> Self {
        self.dead_letters = true;
        self
    }

    /// Adds delayed delivery: the delayed retry stage and scheduled sends.
    pub const fn with_delayed(mut self) -> Self {
        self.delayed = true;
        self
    }

    /// Says `publish` bounds itself by the send timeout ([`bounded_publish`](Self::bounded_publish)).
    pub const fn with_bounded_publish(mut self) -> Self {
        self.bounded_publish = true;
        self
    }
}

/// A transport, written with `async fn`s. Hold one as `Arc<dyn DynProvider>`
/// ([`into_dyn`](Provider::into_dyn)); the blanket [`DynProvider`] impl does the boxing.
///
/// Required: [`declare`](Provider::declare), [`publish`](Provider::publish) and
/// [`subscribe`](Provider::subscribe). The dead-letter operations are optional and
/// called only when [`capabilities`](Provider::capabilities) says so.
pub trait Provider: Send + Sync + 'static {
    /// A short name for logs and errors (`"memory"`, `"amqp"`, `"stomp"`).
    fn name(&self) -> &'static str;

    /// The optional operations this provider supports (none by default).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    /// Where `queue` lives on the broker, when the broker's names differ from the
    /// contract's (a broker that forbids `.` in names maps them): a short
    /// description such as `consumer orders=2Ecreated::billing on stream
    /// ev-orders=2Ecreated`, shown by [`Topology`](crate::topology::Topology).
    /// `None` (the default) when the broker uses the contract's names.
    fn broker_names(&self, queue: &QueueSpec) -> Option<String> {
        let _ = queue;
        None
    }

    /// Declares the queues, their dead-letter queues (`<queue>.dlq`) and the event
    /// addresses they are bound to. Idempotent.
    fn declare(&self, queues: &[QueueSpec]) -> impl Future<Output = Result<()>> + Send;

    /// Publishes one message to every queue bound to `route.address`. For durable
    /// routes it returns only once the broker has taken responsibility for it.
    fn publish(
        &self,
        route: Route<'_>,
        envelope: Envelope,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Publishes several messages to `route`, in order, as
    /// [`publish`](Provider::publish) does for each; for a durable route it returns
    /// once the broker has taken every one. On an error some of them may have been
    /// published. The default publishes them one by one; a broker that can pipeline
    /// publishes (and, for durable routes, wait once for all their confirmations)
    /// overrides it.
    fn publish_batch(
        &self,
        route: Route<'_>,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for envelope in envelopes {
                self.publish(route, envelope).await?;
            }
            Ok(())
        }
    }

    /// Starts consuming from a declared queue.
    fn subscribe(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> impl Future<Output = Result<Box<dyn Consumer>>> + Send;

    /// Closes connections. Consumers are cancelled first.
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Capability `dead_letters`: up to `limit` messages of the dead-letter queue of
    /// `queue`, oldest first, left in place. No dead-letter queue: none.
    fn dead_letters(
        &self,
        queue: &QueueSpec,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Envelope>>> + Send {
        let _ = (queue, limit);
        std::future::ready(Err(unsupported(self.name(), "listing dead letters")))
    }

    /// Capability `dead_letters`: how many messages the dead-letter queue of `queue`
    /// holds now (0 if it does not exist). An error if `queue` itself does not
    /// exist, since letters could not be moved onto it.
    fn dead_letter_depth(&self, queue: &QueueSpec) -> impl Future<Output = Result<usize>> + Send {
        let _ = queue;
        std::future::ready(Err(unsupported(self.name(), "replaying dead letters")))
    }

    /// Capability `dead_letters`: consumes the dead-letter queue of `queue`, oldest
    /// first, at most `prefetch` unacknowledged. An ack removes a letter; what is not
    /// acknowledged when the consumer is dropped stays, in its order. A letter the
    /// provider cannot read whole is not yielded (it stays where it is).
    fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> impl Future<Output = Result<Box<dyn Consumer>>> + Send {
        let _ = (queue, prefetch);
        std::future::ready(Err(unsupported(self.name(), "replaying dead letters")))
    }

    /// Capability `dead_letters`: puts `envelope` onto `queue` alone (not the event's
    /// other queues), persistently, returning once the broker has it.
    fn send_to_queue(
        &self,
        queue: &QueueSpec,
        envelope: Envelope,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (queue, envelope);
        std::future::ready(Err(unsupported(self.name(), "replaying dead letters")))
    }

    /// Capability `delayed`: publishes `envelope` to every queue bound to
    /// `route.address`, as [`publish`](Provider::publish) does, but the broker holds
    /// it for `delay` first (a scheduled send). Returns once the broker has taken
    /// it, durably for a durable route (it then survives a broker restart while it
    /// waits). It must not be delivered before `delay` has passed since the call;
    /// the provider documents how late it may be (its tolerance). A delay longer
    /// than the broker can hold is an error, never silently shortened. The runtime
    /// calls it only with a delay above zero.
    fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: Duration,
        envelope: Envelope,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (route, delay, envelope);
        std::future::ready(Err(unsupported(self.name(), "delayed delivery")))
    }

    /// Removes the per-process queue `queue` (and what the provider keeps for it)
    /// after the runtime cancelled and dropped its only consumer: a run-time
    /// subscription ended (`Subscription::unsubscribe`) while its server goes on.
    /// Messages still in it are dropped, as when its server goes away. The default
    /// does nothing, which is right for a provider whose per-process queues go away
    /// with their consumer (the in-process broker, STOMP, NATS and Redis here); a
    /// provider whose per-process queues live as long as its connection (AMQP's
    /// exclusive queues) deletes it here. Idempotent: a missing queue is `Ok`.
    fn delete_queue(&self, queue: &QueueSpec) -> impl Future<Output = Result<()>> + Send {
        let _ = queue;
        std::future::ready(Ok(()))
    }

    /// This provider as the object-safe form the manager holds.
    fn into_dyn(self) -> Arc<dyn DynProvider>
    where
        Self: Sized,
    {
        Arc::new(self)
    }
}

fn unsupported(provider: &'static str, operation: &'static str) -> Error {
    Error::Unsupported {
        provider,
        operation,
    }
}

/// The object-safe form of [`Provider`], with boxed futures: what the manager holds
/// (`Arc<dyn DynProvider>`). Every [`Provider`] is one through a blanket impl; a
/// provider may implement it directly to control allocation on its hot path, as the
/// in-process broker does (its publish completes without allocating). The methods
/// mean what they mean on [`Provider`].
#[allow(missing_docs)]
pub trait DynProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    fn broker_names(&self, queue: &QueueSpec) -> Option<String>;
    fn declare<'a>(&'a self, queues: &'a [QueueSpec]) -> BoxFuture<'a, Result<()>>;
    fn publish<'a>(&'a self, route: Route<'a>, envelope: Envelope) -> BoxFuture<'a, Result<()>>;
    /// The default publishes one by one through [`DynProvider::publish`].
    fn publish_batch<'a>(
        &'a self,
        route: Route<'a>,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for envelope in envelopes {
                self.publish(route, envelope).await?;
            }
            Ok(())
        })
    }
    fn subscribe<'a>(
        &'a self,
        queue: &'a QueueSpec,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>>;
    fn close(&self) -> BoxFuture<'_, Result<()>>;
    fn dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>>;
    fn dead_letter_depth<'a>(&'a self, queue: &'a QueueSpec) -> BoxFuture<'a, Result<usize>>;
    fn take_dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>>;
    fn send_to_queue<'a>(
        &'a self,
        queue: &'a QueueSpec,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>>;
    fn publish_delayed<'a>(
        &'a self,
        route: Route<'a>,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>>;
    fn delete_queue<'a>(&'a self, queue: &'a QueueSpec) -> BoxFuture<'a, Result<()>> {
        let _ = queue;
        Box::pin(std::future::ready(Ok(())))
    }
}

impl<P: Provider> DynProvider for P {
    fn name(&self) -> &'static str {
        Provider::name(self)
    }

    fn capabilities(&self) -> Capabilities {
        Provider::capabilities(self)
    }

    fn broker_names(&self, queue: &QueueSpec) -> Option<String> {
        Provider::broker_names(self, queue)
    }

    fn declare<'a>(&'a self, queues: &'a [QueueSpec]) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::declare(self, queues))
    }

    fn publish<'a>(&'a self, route: Route<'a>, envelope: Envelope) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::publish(self, route, envelope))
    }

    fn publish_batch<'a>(
        &'a self,
        route: Route<'a>,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::publish_batch(self, route, envelopes))
    }

    fn subscribe<'a>(
        &'a self,
        queue: &'a QueueSpec,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        Box::pin(Provider::subscribe(self, queue, options))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Provider::close(self))
    }

    fn dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>> {
        Box::pin(Provider::dead_letters(self, queue, limit))
    }

    fn dead_letter_depth<'a>(&'a self, queue: &'a QueueSpec) -> BoxFuture<'a, Result<usize>> {
        Box::pin(Provider::dead_letter_depth(self, queue))
    }

    fn take_dead_letters<'a>(
        &'a self,
        queue: &'a QueueSpec,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        Box::pin(Provider::take_dead_letters(self, queue, prefetch))
    }

    fn send_to_queue<'a>(
        &'a self,
        queue: &'a QueueSpec,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::send_to_queue(self, queue, envelope))
    }

    fn publish_delayed<'a>(
        &'a self,
        route: Route<'a>,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::publish_delayed(self, route, delay, envelope))
    }

    fn delete_queue<'a>(&'a self, queue: &'a QueueSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(Provider::delete_queue(self, queue))
    }
}

/// Settles deliveries of one consumer.
pub trait Acker: Send + Sync + 'static {
    /// The listener handled the message: remove it from the queue.
    fn ack(&self, tag: u64);

    /// Put the message back on the queue (it was not handled).
    fn requeue(&self, tag: u64);

    /// Move the message to the queue's dead-letter queue as `envelope` (the original
    /// plus the reason headers), then remove the original. The letter must be stored
    /// durably before the original is acknowledged.
    fn dead_letter(&self, tag: u64, envelope: Envelope) -> BoxFuture<'static, Result<()>>;

    /// Capability `delayed` (the delayed retry stage): stores `envelope` (the
    /// message as received plus the runtime's [`RETRY_ATTEMPTS`] and
    /// [`RETRY_STAGE`] headers) on the broker so that it is delivered again to this
    /// consumer's queue only (not the event's other queues) once `delay` has
    /// passed, then acknowledges the original. The copy must be stored (durably, if
    /// the queue is durable) before the original is acknowledged; it survives the
    /// consuming process, and a broker restart if the queue is durable. `delay` is
    /// always one of the queue's [`QueueSpec::retry_delays`], so a provider may
    /// prepare a place per delay at [`Provider::declare`]. An error leaves the
    /// original unsettled (the runtime then dead-letters it, or requeues it if that
    /// fails too). A provider whose broker redelivers the original itself (a delayed
    /// negative acknowledgement) must give the redelivered envelope those two
    /// headers as they are in `envelope`.
    ///
    /// [`RETRY_ATTEMPTS`]: crate::header::RETRY_ATTEMPTS
    /// [`RETRY_STAGE`]: crate::header::RETRY_STAGE
    fn delay(
        &self,
        tag: u64,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<()>> {
        let _ = (tag, delay, envelope);
        Box::pin(std::future::ready(Err(unsupported(
            "this provider",
            "delayed redelivery",
        ))))
    }
}

/// One message handed to a consumer.
#[non_exhaustive]
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

impl Delivery {
    /// A first delivery of `envelope`, settled through `acker` by `tag`.
    pub fn new(envelope: Envelope, tag: u64, acker: Arc<dyn Acker>) -> Self {
        Self {
            envelope,
            tag,
            redelivered: false,
            acker,
        }
    }

    /// Marks it as delivered before without an acknowledgement.
    #[must_use]
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }
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

/// What a provider factory gets to build a provider.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// The URL (may hold credentials: never log it, use [`redact_url`](crate::redact_url)).
    pub url: String,
    /// The manager's server name.
    pub server_name: String,
    /// How long a send may wait for an unavailable broker.
    pub send_timeout: Duration,
}

impl ProviderConfig {
    /// A configuration for `url`, for the server `server_name`, whose sends wait at
    /// most `send_timeout` for an unavailable broker.
    pub fn new(
        url: impl Into<String>,
        server_name: impl Into<String>,
        send_timeout: Duration,
    ) -> Self {
        Self {
            url: url.into(),
            server_name: server_name.into(),
            send_timeout,
        }
    }
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
pub type ConnectFuture = BoxFuture<'static, Result<Arc<dyn DynProvider>>>;

inventory::collect!(ProviderFactory);

/// Registers a [`ProviderFactory`] so `EventManagerBuilder::url` finds it by scheme.
///
/// ```
/// use eventing::provider::{ConnectFuture, DynProvider, ProviderConfig};
/// use eventing::memory::MemoryProvider;
///
/// fn connect(_: ProviderConfig) -> ConnectFuture {
///     Box::pin(async { Ok(std::sync::Arc::new(MemoryProvider::new()) as std::sync::Arc<dyn DynProvider>) })
/// }
/// eventing::register_provider!(["my-memory"], connect);
/// ```
#[macro_export]
macro_rules! register_provider {
    ([$($scheme:literal),+ $(,)?], $connect:path) => {
        $crate::__private::inventory::submit! {
            $crate::provider::ProviderFactory { schemes: &[$($scheme),+], connect: $connect }
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
pub async fn connect(config: ProviderConfig) -> Result<Arc<dyn DynProvider>> {
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

/// Work a provider started and must see finished before it closes: acks spawned
/// from [`Acker`] methods (which cannot wait), queued settlements, deletions.
/// [`close`](Provider::close) waits for it with a bound
/// ([`wait_idle`](Self::wait_idle)), so what the runtime settled reaches the broker.
/// Clones share the count.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// let acks = eventing::provider::InFlight::default();
/// acks.spawn(async { /* send the ack */ });
/// assert!(acks.wait_idle(Duration::from_secs(1)).await);
/// assert_eq!(acks.count(), 0);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    running: Arc<std::sync::atomic::AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl InFlight {
    /// Spawns `task` on the current tokio runtime and counts it until it ends.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.begin(1);
        let this = self.clone();
        tokio::spawn(async move {
            task.await;
            this.end(1);
        });
    }

    /// Counts `n` pieces of work started elsewhere (a queue's entries, say); each
    /// must be ended with [`end`](Self::end).
    pub fn begin(&self, n: usize) {
        self.running
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// `n` pieces counted by [`begin`](Self::begin) are done.
    pub fn end(&self, n: usize) {
        let before = self
            .running
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        if before == n {
            self.idle.notify_waiters();
        }
    }

    /// How much is in flight now.
    pub fn count(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until nothing is in flight, at most `limit`; false if something still
    /// was when the time was up.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// A [`Consumer`] that a task of the provider feeds through a channel: the usual
/// shape of a broker consumer (a read loop hands deliveries over; the runtime
/// cancels or drops the consumer to stop it). [`new`](Self::new) gives the
/// runtime's end and the provider's ([`ConsumerFeed`]).
///
/// ```
/// use eventing::provider::ChannelConsumer;
/// let (consumer, feed) = ChannelConsumer::new();
/// drop(consumer); // the runtime dropped it: the read loop sees that
/// assert!(*feed.cancelled.borrow());
/// assert!(feed.deliveries.is_closed());
/// ```
#[derive(Debug)]
pub struct ChannelConsumer {
    rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    cancel: tokio::sync::watch::Sender<bool>,
}

/// The provider's end of a [`ChannelConsumer`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConsumerFeed {
    /// Where the read loop sends deliveries; closed once the consumer is gone.
    pub deliveries: tokio::sync::mpsc::UnboundedSender<Delivery>,
    /// Becomes `true` when the runtime cancels or drops the consumer: the read
    /// loop stops asking the broker for more.
    pub cancelled: tokio::sync::watch::Receiver<bool>,
}

impl ChannelConsumer {
    /// A consumer and the feed of it.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (Self, ConsumerFeed) {
        let (deliveries, rx) = tokio::sync::mpsc::unbounded_channel();
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        (
            Self { rx, cancel },
            ConsumerFeed {
                deliveries,
                cancelled,
            },
        )
    }
}

impl Stream for ChannelConsumer {
    type Item = Result<Delivery>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|d| d.map(Ok))
    }
}

impl Consumer for ChannelConsumer {
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        let _ = self.cancel.send(true);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for ChannelConsumer {
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}
