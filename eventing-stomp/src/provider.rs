//! The [`Provider`] implementation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use eventing::backoff::Backoff;
use eventing::provider::{Capabilities, ConsumeOptions, Consumer, Provider, ProviderConfig, Route};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error};
use eventing_rabbitmq::topology as rules;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admin::RabbitAdmin;
use crate::codec::FrameError;
use crate::config::StompConfig;
use crate::connection::{Connection, Inbound, Options};
use crate::consumer::{SUBSCRIPTION_ID, StompConsumer};
use crate::dialect::Dialect;
use crate::error::{PROVIDER, StompError};
use crate::frame::Frame;
use crate::transport::Transport;

/// The publishing session: up to 1024 frames queued before `publish` waits.
const PUBLISHER: Options = Options {
    role: "publisher",
    capacity: 1024,
};
/// A short-lived session that reads dead letters.
const DEAD_LETTER_READER: Options = Options {
    role: "dead-letter reader",
    capacity: 16,
};
/// How long the dead-letter queue of a per-process queue outlives its last use
/// (RabbitMQ's rule, as the AMQP provider applies it).
pub use eventing_rabbitmq::PER_PROCESS_DEAD_LETTER_TTL;
/// The pause between attempts to reopen the publishing session: 100 ms doubling
/// up to 2 s, with jitter.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// How long `dead_letters` waits for one more message before it stops reading.
const BROWSE_IDLE: Duration = Duration::from_millis(300);

/// The STOMP 1.2 provider. Cloning shares the sessions.
///
/// It keeps one session for sending (reopened on the next send after it was
/// lost) and opens one per subscription. On RabbitMQ it declares the event
/// exchanges, competing queues and dead-letter queues over AMQP 0-9-1 (see
/// [`RabbitAdmin`]), because the STOMP plugin cannot.
#[derive(Clone)]
pub struct StompProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StompProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompProvider")
            .field("config", &self.inner.config)
            .field("server_name", &self.inner.server_name)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    config: StompConfig,
    transport: Transport,
    server_name: String,
    send_timeout: Duration,
    publisher: Mutex<Option<Connection>>,
    /// The consumers' sessions, closed by `close`.
    sessions: Mutex<Vec<Connection>>,
    reconnect: tokio::sync::Mutex<()>,
    /// Exchanges declared by this provider.
    exchanges: Mutex<HashSet<String>>,
    /// Queues (and dead-letter queues) declared by this provider.
    queues: Mutex<HashSet<String>>,
    closed: AtomicBool,
    /// Unreadable messages dead-lettered by consumers, and held for want of an
    /// `ack` id (see the `consumer` module).
    unreadable_dead_lettered: AtomicU64,
    unreadable_held: AtomicU64,
    /// Queues whose sessions got stuck on messages they could neither read nor
    /// acknowledge: how many times in a row, and until when not to subscribe.
    stuck: Mutex<HashMap<String, (u32, Instant)>>,
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
        let transport = Transport::new(&config)?;
        let publisher = Connection::open(&config, &transport, PUBLISHER).await?;
        tracing::info!(broker = %config.display_endpoint(), dialect = ?config.dialect, "STOMP provider connected");
        Ok(StompProvider {
            inner: Arc::new(Inner {
                config,
                transport,
                server_name: server_name.into(),
                send_timeout,
                publisher: Mutex::new(Some(publisher)),
                sessions: Mutex::new(Vec::new()),
                reconnect: tokio::sync::Mutex::new(()),
                exchanges: Mutex::new(HashSet::new()),
                queues: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                unreadable_dead_lettered: AtomicU64::new(0),
                unreadable_held: AtomicU64::new(0),
                stuck: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &StompConfig {
        &self.inner.config
    }

    /// Messages this provider's consumers could not read whole (over
    /// `max_frame`, headers over the limits or malformed) and dead-lettered
    /// themselves, with the reason, before acknowledging them. The runtime never
    /// saw them, so they are not in `EventManager::stats()`.
    pub fn unreadable_dead_lettered(&self) -> u64 {
        self.inner.unreadable_dead_lettered.load(Ordering::Relaxed)
    }

    /// Messages without a readable `ack` header (unreadable ones whose `ack`
    /// line was unreadable too, or a `MESSAGE` sent without one), which can be
    /// neither acknowledged nor dead-lettered, so they were left unacknowledged
    /// on their session (counted each time one arrives). Never seen on
    /// RabbitMQ, which writes `ack` among the first header lines.
    pub fn unreadable_held(&self) -> u64 {
        self.inner.unreadable_held.load(Ordering::Relaxed)
    }
}

impl Inner {
    pub(crate) fn dialect(&self) -> Dialect {
        self.config.dialect
    }

    pub(crate) fn count_unreadable_dead_lettered(&self) {
        self.unreadable_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_unreadable_held(&self) {
        self.unreadable_held.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that a session of `queue` got stuck on messages it can neither
    /// read nor acknowledge; returns how long subscribing to it is refused.
    pub(crate) fn hold_queue(&self, queue: &str) -> Duration {
        let mut stuck = self.stuck.lock();
        let entry = stuck
            .entry(queue.to_string())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let wait = crate::consumer::stuck_wait(entry.0);
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

    /// How long a send may wait for the broker.
    pub(crate) fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    fn declares(&self) -> bool {
        self.config.dialect.needs_exchanges() && self.config.declare_topology
    }

    /// The publishing session, reopened with backoff (until `deadline`) if it
    /// was lost.
    async fn publisher(&self, deadline: Instant) -> Result<Connection, StompError> {
        if let Some(conn) = self.current_publisher() {
            return Ok(conn);
        }
        let _one_at_a_time = self.reconnect.lock().await;
        if let Some(conn) = self.current_publisher() {
            return Ok(conn);
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
                Ok(conn) => {
                    tracing::info!(broker = %conn.label(), "STOMP publishing session reopened");
                    *self.publisher.lock() = Some(conn.clone());
                    return Ok(conn);
                }
                Err(error) if error.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(%error, ?pause, "STOMP broker unavailable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn current_publisher(&self) -> Option<Connection> {
        self.publisher
            .lock()
            .clone()
            .filter(|conn| !conn.is_closed())
    }

    async fn admin(&self) -> Result<RabbitAdmin, StompError> {
        RabbitAdmin::open(&self.config, &self.transport).await
    }

    /// Declares the exchange of `address` once per provider (RabbitMQ).
    async fn ensure_exchange(&self, address: &str, durable: bool) -> Result<(), StompError> {
        if !self.declares() || self.exchanges.lock().contains(address) {
            return Ok(());
        }
        let mut admin = self.admin().await?;
        let result = admin.declare_exchange(address, durable).await;
        admin.close().await;
        result?;
        self.exchanges.lock().insert(address.to_string());
        Ok(())
    }

    /// Declares the exchanges, the competing queues bound to them and the
    /// dead-letter queues of `queues` that this provider has not declared yet.
    /// Per-process queues are declared by their `SUBSCRIBE` (exclusive to it).
    async fn declare_all(&self, queues: &[QueueSpec]) -> Result<(), StompError> {
        if !self.declares() {
            return Ok(());
        }
        let todo: Vec<&QueueSpec> = {
            let declared = self.queues.lock();
            let exchanges = self.exchanges.lock();
            queues
                .iter()
                .filter(|q| !declared.contains(&q.name) || !exchanges.contains(&q.event))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let mut admin = self.admin().await?;
        let result = self.declare_with(&mut admin, &todo).await;
        admin.close().await;
        result
    }

    async fn declare_with(
        &self,
        admin: &mut RabbitAdmin,
        queues: &[&QueueSpec],
    ) -> Result<(), StompError> {
        let queue_type = self.config.queue_type;
        for queue in queues {
            if !self.exchanges.lock().contains(&queue.event) {
                let exchange = rules::exchange(&queue.event, queue.durable);
                admin
                    .declare_exchange(&exchange.name, exchange.durable)
                    .await?;
                self.exchanges.lock().insert(queue.event.clone());
            }
            if !queue.per_process {
                // As the AMQP provider does, and as its SUBSCRIBE will find it.
                admin.declare(&rules::queue(queue, queue_type)).await?;
                admin.bind_queue(&queue.name, &queue.event).await?;
            }
            let dlq = rules::dead_letter_queue(queue, queue_type);
            if !admin.queue_exists(&dlq.name).await? {
                admin.declare(&dlq).await?;
            }
            tracing::debug!(event = %queue.event, queue = %queue.name, "declared");
            self.queues.lock().insert(queue.name.clone());
        }
        Ok(())
    }

    /// Sends a dead letter of `queue` persistently and waits for its receipt.
    pub(crate) async fn send_dead_letter(
        &self,
        queue: &QueueSpec,
        envelope: &Envelope,
    ) -> eventing::Result<()> {
        let frame = self.dialect().dead_letter_frame(queue, envelope);
        let target = queue.dead_letter_queue();
        self.send_receipted(
            frame,
            &target,
            envelope,
            "waiting for the RECEIPT of a dead letter",
        )
        .await
    }

    /// Sends `envelope` persistently to `queue` alone and waits for its receipt.
    async fn send_to_queue(&self, queue: &QueueSpec, envelope: &Envelope) -> eventing::Result<()> {
        let frame = self.dialect().replay_frame(queue, envelope);
        self.send_receipted(
            frame,
            &queue.name,
            envelope,
            "waiting for the RECEIPT of a message for one queue",
        )
        .await
    }

    /// Sends `frame` (carrying `envelope`, for `target`) on the publishing
    /// session and waits for its receipt, within the send timeout.
    async fn send_receipted(
        &self,
        frame: Frame,
        target: &str,
        envelope: &Envelope,
        operation: &'static str,
    ) -> eventing::Result<()> {
        let deadline = Instant::now() + self.send_timeout;
        if let Some(reason) = self.dialect().unsendable(&frame) {
            return Err(StompError::Unsendable { reason }.into());
        }
        let conn = self.publisher(deadline).await?;
        let wait = deadline.saturating_duration_since(Instant::now());
        conn.request(frame, wait, operation)
            .await
            .map_err(|error| refused(error, target, envelope))
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> eventing::Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Unavailable {
                provider: PROVIDER,
                reason: "the provider was closed".into(),
            });
        }
        let deadline = Instant::now() + self.send_timeout;
        self.ensure_exchange(route.address, route.durable).await?;
        let frame = self
            .dialect()
            .send_frame(route.address, &envelope, route.durable);
        if let Some(reason) = self.dialect().unsendable(&frame) {
            return Err(StompError::Unsendable { reason }.into());
        }
        let conn = self.publisher(deadline).await?;
        if route.durable {
            let wait = deadline.saturating_duration_since(Instant::now());
            conn.request(frame, wait, "waiting for the broker's RECEIPT")
                .await
                .map_err(|error| refused(error, route.address, &envelope))
        } else {
            conn.send(&frame)
                .await
                .map_err(|error| refused(error, route.address, &envelope))
        }
    }

    async fn subscribe(
        self: &Arc<Self>,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> eventing::Result<Box<dyn Consumer>> {
        if let Some(left) = self.stuck_for(&queue.name) {
            return Err(Error::Unavailable {
                provider: PROVIDER,
                reason: format!(
                    "queue `{}` is held up by messages this client can neither read nor \
                     acknowledge (see the error log); not subscribing for another {left:?}",
                    queue.name
                ),
            });
        }
        self.declare_all(std::slice::from_ref(queue)).await?;
        let prefetch = options.prefetch.max(1);
        // At most `prefetch` deliveries are unsettled, so at most that many ACK
        // or NACK frames wait for the writer: it never makes an acker wait.
        let capacity = 2 * usize::from(prefetch) + 16;
        let options = Options {
            role: "consumer",
            capacity,
        };
        let conn = Connection::open(&self.config, &self.transport, options).await?;
        let rx = conn.subscription(SUBSCRIPTION_ID, usize::from(prefetch) + 16);
        let frame = self.dialect().subscribe_frame_with(
            queue,
            SUBSCRIPTION_ID,
            prefetch,
            self.config.queue_type,
        );
        if let Err(error) = conn.request(frame, self.send_timeout, "SUBSCRIBE").await {
            conn.close().await;
            return Err(error.into());
        }
        {
            let mut sessions = self.sessions.lock();
            sessions.retain(|session| !session.is_closed());
            sessions.push(conn.clone());
        }
        tracing::debug!(event = %queue.event, queue = %queue.name, prefetch, "subscribed");
        Ok(Box::new(StompConsumer::new(
            conn,
            rx,
            Arc::clone(self),
            queue.clone(),
            prefetch,
        )))
    }

    /// How long subscribing to `queue` is still refused after it got stuck.
    fn stuck_for(&self, queue: &str) -> Option<Duration> {
        let stuck = self.stuck.lock();
        let (_, until) = stuck.get(queue)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    async fn dead_letters(
        &self,
        queue: &QueueSpec,
        limit: usize,
    ) -> eventing::Result<Vec<Envelope>> {
        let letters = self.browse_dead_letters(queue, limit).await?;
        let dialect = self.dialect();
        Ok(letters
            .into_iter()
            .map(|letter| {
                let mut letter = match letter {
                    Inbound::Message(frame) => dialect.envelope_of(frame),
                    Inbound::Rejected(rejected) => {
                        crate::consumer::unreadable_letter(dialect, rejected)
                    }
                };
                if dialect == Dialect::RabbitMq {
                    // Dead-lettered by the broker (past a quorum queue's delivery limit).
                    eventing_rabbitmq::explain_dead_letter(&mut letter);
                }
                letter
            })
            .collect())
    }

    /// Up to `limit` messages of `queue`'s dead-letter queue, oldest first, read
    /// on a session of their own and left in place: unacknowledged, they return
    /// to the queue in their order when the session closes.
    async fn browse_dead_letters(
        &self,
        queue: &QueueSpec,
        limit: usize,
    ) -> eventing::Result<Vec<Inbound>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(usize::from(u16::MAX));
        let conn = Connection::open(&self.config, &self.transport, DEAD_LETTER_READER).await?;
        let id = "dead-letters";
        let mut rx = conn.subscription(id, limit + 16);
        let frame = self.dialect().dead_letter_browse_frame(
            queue,
            id,
            u16::try_from(limit).unwrap_or(u16::MAX),
        );
        let letters = match conn
            .request(frame, self.send_timeout, "SUBSCRIBE to dead letters")
            .await
        {
            Ok(()) => {
                let mut letters = Vec::new();
                let deadline = Instant::now() + self.send_timeout;
                while letters.len() < limit {
                    let idle = BROWSE_IDLE.min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(idle, rx.recv()).await {
                        Ok(Some(letter)) => letters.push(letter),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(letters)
            }
            // No dead-letter queue yet: no dead letters.
            Err(StompError::Broker(error)) if error.message == "not_found" => Ok(Vec::new()),
            Err(error) => Err(error.into()),
        };
        conn.close().await;
        letters
    }

    /// How many letters `queue`'s dead-letter queue holds; an error if `queue`
    /// does not exist.
    ///
    /// On RabbitMQ with `declare=amqp` the queue is declared as `declare` does
    /// (competing queues), then both are checked with passive declarations over
    /// AMQP: RabbitMQ confirms a message sent to a queue that does not exist (and
    /// drops it), so a replay must not start then. Otherwise (`declare=none`,
    /// Artemis) the letters are counted by browsing them, up to 65535, and the
    /// queue's existence cannot be checked.
    async fn dead_letter_depth(&self, queue: &QueueSpec) -> eventing::Result<usize> {
        if !self.declares() {
            return Ok(self.browse_dead_letters(queue, usize::MAX).await?.len());
        }
        self.declare_all(std::slice::from_ref(queue)).await?;
        let mut admin = self.admin().await?;
        let checked = async {
            let exists = admin.queue_exists(&queue.name).await?;
            let depth = admin.queue_depth(&queue.dead_letter_queue()).await?;
            Ok::<_, StompError>((exists, depth))
        }
        .await;
        admin.close().await;
        let (exists, depth) = checked?;
        if !exists {
            return Err(Error::QueueNotFound {
                queue: queue.name.clone(),
            });
        }
        Ok(depth.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// A client-individual subscription to `queue`'s dead-letter queue on a
    /// session of its own, `prefetch` at a time. No dead-letter queue: a consumer
    /// that ends at once.
    async fn take_dead_letters(
        self: &Arc<Self>,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> eventing::Result<Box<dyn Consumer>> {
        let prefetch = prefetch.max(1);
        let options = Options {
            role: "dead-letter reader",
            capacity: 2 * usize::from(prefetch) + 16,
        };
        let conn = Connection::open(&self.config, &self.transport, options).await?;
        let rx = conn.subscription(SUBSCRIPTION_ID, usize::from(prefetch) + 16);
        let frame = self
            .dialect()
            .dead_letter_take_frame(queue, SUBSCRIPTION_ID, prefetch);
        match conn
            .request(frame, self.send_timeout, "SUBSCRIBE to dead letters")
            .await
        {
            Ok(()) => {}
            Err(StompError::Broker(error)) if error.message == "not_found" => {
                conn.close().await;
                return Ok(Box::new(crate::consumer::Finished));
            }
            Err(error) => {
                conn.close().await;
                return Err(error.into());
            }
        }
        {
            let mut sessions = self.sessions.lock();
            sessions.retain(|session| !session.is_closed());
            sessions.push(conn.clone());
        }
        tracing::debug!(queue = %queue.name, prefetch, "taking dead letters");
        Ok(Box::new(StompConsumer::dead_letters(
            conn,
            rx,
            Arc::clone(self),
            queue.clone(),
            prefetch,
        )))
    }

    /// Closes the publishing session and every consumer session (their
    /// unacknowledged messages return to the queues), waiting for each.
    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut sessions = std::mem::take(&mut *self.sessions.lock());
        sessions.extend(self.publisher.lock().take());
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

impl Provider for StompProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_dead_letters()
    }

    async fn declare(&self, queues: &[QueueSpec]) -> eventing::Result<()> {
        Ok(self.inner.declare_all(queues).await?)
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> eventing::Result<()> {
        self.inner.publish(route, envelope).await
    }

    async fn subscribe(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> eventing::Result<Box<dyn Consumer>> {
        let span = tracing::debug_span!("subscribe", event = %queue.event, queue = %queue.name);
        self.inner.subscribe(queue, options).instrument(span).await
    }

    async fn close(&self) -> eventing::Result<()> {
        self.inner.close().await;
        Ok(())
    }

    async fn dead_letters(
        &self,
        queue: &QueueSpec,
        limit: usize,
    ) -> eventing::Result<Vec<Envelope>> {
        self.inner.dead_letters(queue, limit).await
    }

    async fn dead_letter_depth(&self, queue: &QueueSpec) -> eventing::Result<usize> {
        self.inner.dead_letter_depth(queue).await
    }

    async fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> eventing::Result<Box<dyn Consumer>> {
        self.inner.take_dead_letters(queue, prefetch).await
    }

    async fn send_to_queue(&self, queue: &QueueSpec, envelope: Envelope) -> eventing::Result<()> {
        self.inner.send_to_queue(queue, &envelope).await
    }
}

/// The factory registered for `stomp://` and `stomps://`.
fn connect(config: ProviderConfig) -> eventing::provider::ConnectFuture {
    Box::pin(async move { Ok(StompProvider::connect(config).await?.into_dyn()) })
}

eventing::register_provider!(["stomp", "stomps"], connect);
