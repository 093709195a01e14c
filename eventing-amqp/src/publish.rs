//! Publishing: one confirm-mode channel for durable messages and dead letters, one
//! plain channel for transient messages, both shared by every concurrent send, on
//! the publishing connection.
//!
//! A publish that fails because the connection or the channel went away is made
//! again, on a fresh channel and connection, with capped exponential backoff and
//! jitter, until shortly before the send timeout; then it fails with
//! [`Error::Unavailable`] and the last reason. A durable publish succeeds only on
//! the broker's confirm. A publish whose confirm was lost with the connection may
//! have reached the broker, so a retry can store it twice: at least once, never
//! zero times without an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventing::backoff::Backoff;
use eventing::provider::Route;
use eventing::{Envelope, Error, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use parking_lot::{Mutex, RwLock};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::{
    AmqpError, PROVIDER, broker, is_retryable, is_retryable_error, kind_name, short,
};
use crate::headers;
use crate::link::Link;
use crate::topology::{self, DeadLetterQueue};
use eventing_rabbitmq::topology as rules;

/// The pause after a failed attempt: 20 ms doubling up to 1 s, less up to half of
/// it at random, so waiting publishes do not retry in step.
const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).jitter(0.5);
/// The time left for the last attempt before a publish gives up.
const LAST_ATTEMPT: Duration = Duration::from_millis(20);

/// Sends messages for one provider.
pub(crate) struct Publisher {
    link: Link,
    confirmed: Lane,
    transient: Lane,
    /// Exchanges declared (or being declared) on the current channels, by address.
    /// Looked up on every publish: hashed with FxHash, as the names come from
    /// the registry, not from outside the process.
    exchanges: RwLock<HashMap<String, Arc<OnceCell<()>>, rustc_hash::FxBuildHasher>>,
    /// Queues made on demand (delayed delivery) and when this process last declared
    /// each ([`rules::ON_DEMAND_REFRESH`]).
    on_demand: Mutex<HashMap<String, Instant>>,
    timeout: Duration,
}

/// One message to publish, where to, and how to name it in errors.
struct Message<'a> {
    /// `""` for the default exchange.
    exchange: &'a str,
    routing_key: &'a str,
    /// Ask the broker to return it if no queue takes it.
    mandatory: bool,
    /// The event's fanout exchange to declare first: address and durability.
    declare: Option<(&'a str, bool)>,
    envelope: &'a Envelope,
    persistent: bool,
    /// What is being done, for errors (`"publishing to exchange"`).
    operation: &'static str,
    /// The exchange or queue, for errors.
    target: &'a str,
}

/// Why one attempt of a publish failed.
enum Failed {
    /// The broker or the channel failed the publish itself.
    Broker(lapin::Error),
    /// No channel could be had, or the exchange could not be declared.
    Other(Error),
}

impl Failed {
    fn retryable(&self) -> bool {
        match self {
            Failed::Broker(error) => is_retryable(error),
            Failed::Other(error) => is_retryable_error(error),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Failed::Broker(error) => kind_name(error),
            Failed::Other(Error::Unavailable { .. }) => "unavailable",
            Failed::Other(Error::Timeout { .. }) => "timeout",
            Failed::Other(_) => "other",
        }
    }

    fn into_error(self, message: &Message<'_>) -> Error {
        match self {
            Failed::Broker(error) => broker(message.operation, message.target, error),
            Failed::Other(error) => error,
        }
    }

    fn reason(&self) -> String {
        match self {
            Failed::Broker(error) => error.to_string(),
            Failed::Other(Error::Unavailable { reason, .. }) => reason.clone(),
            Failed::Other(error) => error.to_string(),
        }
    }
}

impl Publisher {
    pub(crate) async fn new(link: Link, timeout: Duration) -> Result<Self> {
        let connection = link.get().await?;
        let confirmed = Lane::open(&connection, true).await?;
        let transient = Lane::open(&connection, false).await?;
        Ok(Self {
            link,
            confirmed,
            transient,
            exchanges: RwLock::new(HashMap::default()),
            on_demand: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// Stores `envelope` in the waiting queue `queue` (a delay queue or a
    /// scheduled-send queue: it moves on by itself when its time to live runs
    /// out) through the default exchange, persistent if `persistent`, and waits for
    /// the broker's confirm. With `on_demand` the queue is declared first unless
    /// this process declared it within [`rules::ON_DEMAND_REFRESH`]; a missing
    /// queue is declared and the publish made once more.
    pub(crate) async fn to_waiting_queue(
        &self,
        queue: &rules::Queue,
        envelope: &Envelope,
        persistent: bool,
        on_demand: bool,
    ) -> Result<()> {
        let declare = || async {
            let connection = self.link.get().await?;
            topology::declare_rule_queue(&connection, queue).await?;
            self.on_demand
                .lock()
                .insert(queue.name.clone(), Instant::now());
            Ok::<(), Error>(())
        };
        if on_demand {
            let fresh = self
                .on_demand
                .lock()
                .get(&queue.name)
                .is_some_and(|at| at.elapsed() < rules::ON_DEMAND_REFRESH);
            if !fresh {
                declare().await?;
            }
        }
        let message = Message {
            exchange: "",
            routing_key: &queue.name,
            mandatory: true,
            declare: None,
            envelope,
            persistent,
            operation: "publishing to the waiting queue",
            target: &queue.name,
        };
        for attempt in 0..2 {
            match self.stored(&message).await? {
                Stored::Yes => return Ok(()),
                Stored::NoQueue if attempt == 0 => {
                    tracing::warn!(queue = %queue.name, "waiting queue missing; declaring it again");
                    declare().await?;
                }
                Stored::NoQueue => break,
            }
        }
        Err(Error::QueueNotFound {
            queue: queue.name.clone(),
        })
    }

    /// Declares the fanout exchange of `address` unless this publisher did on its
    /// current channel.
    pub(crate) async fn exchange(&self, address: &str, durable: bool) -> Result<()> {
        self.ensure_exchange(address, durable).await
    }

    /// Publishes to the event's fanout exchange. Durable messages are persistent and
    /// this returns once the broker confirmed them.
    pub(crate) async fn publish(&self, route: Route<'_>, envelope: &Envelope) -> Result<()> {
        let began = Instant::now();
        self.publish_until(route, envelope, began, began + deadline(self.timeout))
            .await
    }

    /// [`publish`](Self::publish), retrying until `deadline`.
    async fn publish_until(
        &self,
        route: Route<'_>,
        envelope: &Envelope,
        began: Instant,
        deadline: Instant,
    ) -> Result<()> {
        let message = event_message(route, envelope);
        let confirmation = self
            .deliver(self.lane(route), &message, began, deadline)
            .await?;
        match confirmation {
            Confirmation::Nack(_) => Err(refused(route, envelope)),
            Confirmation::Ack(_) => Ok(()),
            Confirmation::NotRequested if !route.durable => Ok(()),
            Confirmation::NotRequested => Err(not_confirmed(route.address)),
        }
    }

    /// Publishes `envelopes` to the event's fanout exchange, in order, pipelined:
    /// every publish is queued on the channel before any answer is awaited, and for
    /// a durable event all the broker's confirms are then awaited together. A
    /// message whose publish failed for a reason a new channel may cure, or that the
    /// broker nacked, is published again on its own, with the retries of
    /// [`publish`](Self::publish), within the same deadline.
    pub(crate) async fn publish_batch(
        &self,
        route: Route<'_>,
        envelopes: &[Envelope],
    ) -> Result<()> {
        let Some(first) = envelopes.first() else {
            return Ok(());
        };
        let began = Instant::now();
        let deadline = began + deadline(self.timeout);
        let lane = self.lane(route);
        let pipelined = tokio::time::timeout_at(deadline, self.pipelined(lane, route, envelopes));
        let again: Vec<&Envelope> = match pipelined.await {
            Ok(Ok(outcomes)) => {
                let mut again = Vec::new();
                for (envelope, outcome) in envelopes.iter().zip(outcomes) {
                    match outcome {
                        Ok(Confirmation::Ack(_)) => {}
                        Ok(Confirmation::NotRequested) if !route.durable => {}
                        Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => {
                            again.push(envelope)
                        }
                        Err(error) if is_retryable(&error) => again.push(envelope),
                        Err(error) => {
                            let message = event_message(route, envelope);
                            return Err(Failed::Broker(error).into_error(&message));
                        }
                    }
                }
                again
            }
            Ok(Err(failed)) if failed.retryable() => envelopes.iter().collect(),
            Ok(Err(failed)) => return Err(failed.into_error(&event_message(route, first))),
            Err(_) => {
                let message = event_message(route, first);
                return Err(self.gave_up(&message, began, 1, None));
            }
        };
        if !again.is_empty() {
            tracing::debug!(
                event = route.address,
                count = again.len(),
                of = envelopes.len(),
                "publishing part of a batch again, one by one"
            );
        }
        for envelope in again {
            self.publish_until(route, envelope, began, deadline).await?;
        }
        Ok(())
    }

    /// One pipelined attempt of a batch: the outcome of each publish, in order.
    async fn pipelined(
        &self,
        lane: &Lane,
        route: Route<'_>,
        envelopes: &[Envelope],
    ) -> std::result::Result<Vec<lapin::Result<Confirmation>>, Failed> {
        let exchange = short("exchange", route.address).map_err(Failed::Other)?;
        let (channel, fresh) = lane.channel(&self.link).await.map_err(Failed::Other)?;
        if fresh {
            self.exchanges.write().clear();
        }
        self.ensure_exchange(route.address, route.durable)
            .await
            .map_err(Failed::Other)?;
        let mut publishes = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let properties =
                headers::to_properties(envelope, route.durable).map_err(Failed::Other)?;
            publishes.push(lane.publish(
                &channel,
                exchange.clone(),
                ShortString::default(),
                BasicPublishOptions::default(),
                &envelope.body,
                properties,
            ));
        }
        // Polled in order: each publish's frames are queued at its first poll.
        Ok(futures_util::future::join_all(publishes).await)
    }

    /// The lane of an event's messages.
    fn lane(&self, route: Route<'_>) -> &Lane {
        if route.durable {
            &self.confirmed
        } else {
            &self.transient
        }
    }

    /// Stores `envelope` persistently in `dlq` through the default exchange and waits
    /// for the broker's confirm. A missing queue is declared once and the publish
    /// made again.
    pub(crate) async fn dead_letter(
        &self,
        dlq: &DeadLetterQueue,
        envelope: &Envelope,
    ) -> Result<()> {
        let message = Message {
            exchange: "",
            routing_key: dlq.name.as_str(),
            mandatory: true,
            declare: None,
            envelope,
            persistent: true,
            operation: "dead-lettering to queue",
            target: dlq.name.as_str(),
        };
        for attempt in 0..2 {
            match self.stored(&message).await? {
                Stored::Yes => return Ok(()),
                Stored::NoQueue if attempt == 0 => {
                    tracing::warn!(dlq = %dlq.name, "dead-letter queue missing; declaring it again");
                    let connection = self.link.get().await?;
                    topology::declare_dead_letter_queue(&connection, dlq).await?;
                }
                Stored::NoQueue => break,
            }
        }
        Err(Error::QueueNotFound {
            queue: dlq.name.to_string(),
        })
    }

    /// Stores `envelope` persistently in `queue` through the default exchange (so
    /// only that queue gets it) and waits for the broker's confirm. A missing queue
    /// (the broker returns the mandatory message) is [`Error::QueueNotFound`].
    pub(crate) async fn to_queue(&self, queue: &str, envelope: &Envelope) -> Result<()> {
        let message = Message {
            exchange: "",
            routing_key: queue,
            mandatory: true,
            declare: None,
            envelope,
            persistent: true,
            operation: "publishing to queue",
            target: queue,
        };
        match self.stored(&message).await? {
            Stored::Yes => Ok(()),
            Stored::NoQueue => Err(Error::QueueNotFound {
                queue: queue.to_string(),
            }),
        }
    }

    /// Publishes a mandatory, persistent `message` on the confirm channel.
    async fn stored(&self, message: &Message<'_>) -> Result<Stored> {
        let began = Instant::now();
        let deadline = began + deadline(self.timeout);
        match self
            .deliver(&self.confirmed, message, began, deadline)
            .await?
        {
            Confirmation::Nack(_) => Err(Error::Refused {
                provider: PROVIDER,
                address: message.target.to_string(),
                message_id: message.envelope.message_id().to_string(),
                reason: "the broker nacked the message (publisher confirm)".into(),
            }),
            Confirmation::Ack(Some(_returned)) => Ok(Stored::NoQueue),
            Confirmation::Ack(None) => Ok(Stored::Yes),
            Confirmation::NotRequested => Err(not_confirmed(message.target)),
        }
    }

    /// Publishes `message` on `lane` and returns the broker's answer, making it
    /// again while it fails for a reason a new channel or connection may cure
    /// ([`is_retryable`]), with capped exponential backoff and jitter, until
    /// `deadline` (normally [`deadline`] of the send timeout after `began`). Then
    /// the error is [`Error::Unavailable`] with the last reason, or
    /// [`Error::Timeout`] if the broker is connected and simply did not confirm in
    /// time.
    async fn deliver(
        &self,
        lane: &Lane,
        message: &Message<'_>,
        began: Instant,
        deadline: Instant,
    ) -> Result<Confirmation> {
        let mut attempts: u32 = 0;
        let mut last: Option<String> = None;
        // The broker's last answer if it was a nack: what the caller gets if the
        // time runs out before another attempt is answered.
        let mut nacked: Option<Confirmation> = None;
        loop {
            attempts += 1;
            let attempt = self.attempt(lane, message);
            let failed = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((Confirmation::Nack(nack), channel))) => {
                    // RabbitMQ may nack every publish of a channel opened while a
                    // quorum queue elects a new leader, while a new channel is fine:
                    // publish again on a new channel while there is time.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining <= LAST_ATTEMPT {
                        return Ok(Confirmation::Nack(nack));
                    }
                    tracing::warn!(
                        target = message.target,
                        message_id = message.envelope.message_id(),
                        attempts,
                        "the broker nacked the message; publishing it again on a new channel"
                    );
                    nacked = Some(Confirmation::Nack(nack));
                    // Bounded as every wait here: `publish` keeps its deadline on its
                    // own (`Capabilities::bounded_publish`).
                    let _ =
                        tokio::time::timeout_at(deadline, lane.renew(&self.link, &channel)).await;
                    last = Some("the broker nacked the message (publisher confirm)".into());
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining <= LAST_ATTEMPT {
                        continue; // one last attempt, bounded by the deadline
                    }
                    tokio::time::sleep(BACKOFF.delay(attempts).min(remaining - LAST_ATTEMPT)).await;
                    continue;
                }
                Ok(Ok((confirmation, _))) => {
                    if attempts > 1 {
                        tracing::debug!(
                            target = message.target,
                            message_id = message.envelope.message_id(),
                            attempts,
                            took = ?began.elapsed(),
                            "published after retrying"
                        );
                    }
                    return Ok(confirmation);
                }
                Ok(Err(failed)) => {
                    nacked = None;
                    failed
                }
                Err(_) => match nacked {
                    Some(nack) => return Ok(nack),
                    None => return Err(self.gave_up(message, began, attempts, last)),
                },
            };
            if !failed.retryable() {
                tracing::debug!(
                    target = message.target,
                    kind = failed.kind(),
                    reason = %failed.reason(),
                    "publish failed; not retried"
                );
                return Err(failed.into_error(message));
            }
            // The last pause ends a little before the deadline, so a broker that
            // came back gets one more attempt.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining <= LAST_ATTEMPT {
                return Err(self.gave_up(message, began, attempts, Some(failed.reason())));
            }
            let pause = BACKOFF.delay(attempts).min(remaining - LAST_ATTEMPT);
            tracing::debug!(
                target = message.target,
                message_id = message.envelope.message_id(),
                attempts,
                kind = failed.kind(),
                reason = %failed.reason(),
                ?pause,
                "publish failed; retrying"
            );
            last = Some(failed.reason());
            tokio::time::sleep(pause).await;
        }
    }

    /// The error once a publish ran out of time.
    fn gave_up(
        &self,
        message: &Message<'_>,
        began: Instant,
        attempts: u32,
        last: Option<String>,
    ) -> Error {
        let error = self.why_not(message, began, attempts, last);
        tracing::warn!(
            target = message.target,
            message_id = message.envelope.message_id(),
            attempts,
            %error,
            "publish given up"
        );
        error
    }

    fn why_not(
        &self,
        message: &Message<'_>,
        began: Instant,
        attempts: u32,
        last: Option<String>,
    ) -> Error {
        let connection = self.link.current();
        let status = connection.status();
        let took = began.elapsed();
        if status.blocked() {
            return Error::Unavailable {
                provider: PROVIDER,
                reason: format!(
                    "{} `{}`: the broker blocks publishers (connection.blocked: a resource alarm) and did not take the message within {took:?}",
                    message.operation, message.target
                ),
            };
        }
        match last {
            None if status.connected() && message.persistent => Error::Timeout {
                operation: "publishing a durable message (waiting for the broker's confirm)",
                after: took,
            },
            None if status.connected() => Error::Timeout {
                operation: "publishing a message",
                after: took,
            },
            None => Error::Unavailable {
                provider: PROVIDER,
                reason: format!(
                    "{} `{}`: no connection to the broker within {took:?}",
                    message.operation, message.target
                ),
            },
            Some(last) => Error::Unavailable {
                provider: PROVIDER,
                reason: format!(
                    "{} `{}`: {attempts} attempts in {took:?} failed, the last with: {last}",
                    message.operation, message.target
                ),
            },
        }
    }

    /// One attempt: publishes on `lane`, on a new channel (and connection) if the
    /// last one was lost, after declaring the event's exchange if the message names
    /// one. A new channel also forgets which exchanges exist: the broker closes a
    /// channel that publishes to a deleted exchange, and declaring again is cheap.
    async fn attempt(
        &self,
        lane: &Lane,
        message: &Message<'_>,
    ) -> std::result::Result<(Confirmation, Arc<Channel>), Failed> {
        let exchange = short("exchange", message.exchange).map_err(Failed::Other)?;
        let routing_key = short("routing key", message.routing_key).map_err(Failed::Other)?;
        let properties =
            headers::to_properties(message.envelope, message.persistent).map_err(Failed::Other)?;
        let (channel, fresh) = lane.channel(&self.link).await.map_err(Failed::Other)?;
        if fresh {
            self.exchanges.write().clear();
        }
        if let Some((address, durable)) = message.declare {
            self.ensure_exchange(address, durable)
                .await
                .map_err(Failed::Other)?;
        }
        let options = BasicPublishOptions {
            mandatory: message.mandatory,
            immediate: false,
        };
        let confirmation = lane
            .publish(
                &channel,
                exchange,
                routing_key,
                options,
                &message.envelope.body,
                properties,
            )
            .await
            .map_err(Failed::Broker)?;
        Ok((confirmation, channel))
    }

    /// Declares the fanout exchange of `address` once per channel, so a message sent
    /// before any listener exists is dropped by the broker (as AMQP does for an
    /// exchange without queues) instead of closing the channel with NOT_FOUND.
    async fn ensure_exchange(&self, address: &str, durable: bool) -> Result<()> {
        let cell = self.exchanges.read().get(address).cloned();
        match cell {
            Some(cell) if cell.initialized() => Ok(()),
            // Boxed, as `Lane::reopen`: the declaration is rare, the publish hot.
            cell => Box::pin(self.declare_exchange(address, durable, cell)).await,
        }
    }

    /// Declares the exchange of `address` once, however many publishes wait for it.
    async fn declare_exchange(
        &self,
        address: &str,
        durable: bool,
        cell: Option<Arc<OnceCell<()>>>,
    ) -> Result<()> {
        let cell = match cell {
            Some(cell) => cell,
            None => Arc::clone(
                self.exchanges
                    .write()
                    .entry(address.to_string())
                    .or_default(),
            ),
        };
        cell.get_or_try_init(|| async {
            let connection = self.link.get().await?;
            topology::declare_exchange(&connection, address, durable).await
        })
        .await
        .map(|_| ())
    }

    /// Records that `declare` created the exchange of `address`.
    pub(crate) fn exchange_declared(&self, address: &str) {
        let mut exchanges = self.exchanges.write();
        let cell = exchanges.entry(address.to_string()).or_default();
        let _ = cell.set(());
    }

    /// Closes the publishing connection for good.
    pub(crate) async fn close(&self) {
        self.link.close().await;
    }
}

/// Whether a mandatory publish found its queue.
enum Stored {
    Yes,
    /// The broker returned the message: no such queue.
    NoQueue,
}

/// A message to the event's fanout exchange.
fn event_message<'a>(route: Route<'a>, envelope: &'a Envelope) -> Message<'a> {
    Message {
        exchange: route.address,
        routing_key: "",
        mandatory: false,
        declare: Some((route.address, route.durable)),
        envelope,
        persistent: route.durable,
        operation: if route.durable {
            "publishing a durable message to exchange"
        } else {
            "publishing a message to exchange"
        },
        target: route.address,
    }
}

/// The broker nacked an event's message.
fn refused(route: Route<'_>, envelope: &Envelope) -> Error {
    Error::Refused {
        provider: PROVIDER,
        address: route.address.to_string(),
        message_id: envelope.message_id().to_string(),
        reason: "the broker nacked the message (publisher confirm)".into(),
    }
}

fn not_confirmed(target: &str) -> Error {
    Error::provider(
        PROVIDER,
        AmqpError::NotConfirmed {
            target: target.to_string(),
        },
    )
}

/// How long a publish keeps trying: the send timeout less a margin (a twentieth,
/// between 10 ms and 500 ms), so that the publisher's own error, with its reason,
/// comes before the manager's timeout around the whole send.
pub(crate) fn deadline(send_timeout: Duration) -> Duration {
    let margin = (send_timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(500));
    send_timeout.saturating_sub(margin)
}

/// One publishing channel, opened again when the broker or the connection lost it.
struct Lane {
    channel: RwLock<Arc<Channel>>,
    confirms: bool,
    reopening: tokio::sync::Mutex<()>,
    /// lapin numbers a confirm-mode publish and queues its frames under two
    /// different locks; publishes racing between the two would be confirmed by each
    /// other's acks. Held only around the synchronous first poll of a publish.
    order: Mutex<()>,
}

impl Lane {
    async fn open(connection: &Connection, confirms: bool) -> Result<Self> {
        Ok(Self {
            channel: RwLock::new(Arc::new(open_channel(connection, confirms).await?)),
            confirms,
            reopening: tokio::sync::Mutex::new(()),
            order: Mutex::new(()),
        })
    }

    /// The channel, and whether it is a new one.
    async fn channel(&self, link: &Link) -> Result<(Arc<Channel>, bool)> {
        let channel = Arc::clone(&self.channel.read());
        if channel.status().connected() {
            return Ok((channel, false));
        }
        // Boxed: inline, opening a channel would make every publish's future as
        // large as its own (copied on every send).
        Box::pin(self.reopen(link)).await
    }

    /// Opens a new channel for the lane unless another publish just did.
    async fn reopen(&self, link: &Link) -> Result<(Arc<Channel>, bool)> {
        let _reopening = self.reopening.lock().await;
        let channel = Arc::clone(&self.channel.read());
        if channel.status().connected() {
            return Ok((channel, false));
        }
        let connection = link.get().await?;
        let fresh = Arc::new(open_channel(&connection, self.confirms).await?);
        tracing::info!("opened a new publishing channel");
        *self.channel.write() = Arc::clone(&fresh);
        Ok((fresh, true))
    }

    /// Replaces `used` with a new channel if it is still the lane's channel (a
    /// channel the broker nacks publishes on); the old one is closed in the
    /// background once its other publishes are answered. A failure to open one is
    /// left to the next attempt, which opens a channel when the lane has none.
    async fn renew(&self, link: &Link, used: &Arc<Channel>) {
        let _reopening = self.reopening.lock().await;
        if !Arc::ptr_eq(&self.channel.read(), used) {
            return;
        }
        let connection = match link.get().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "cannot renew the publishing channel yet");
                return;
            }
        };
        match open_channel(&connection, self.confirms).await {
            Ok(fresh) => {
                tracing::info!("replaced a publishing channel the broker nacked on");
                *self.channel.write() = Arc::new(fresh);
                let old = Arc::clone(used);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let _ = old
                        .close(200, "eventing: replaced after nacks".into())
                        .await;
                });
            }
            Err(error) => tracing::debug!(%error, "cannot renew the publishing channel yet"),
        }
    }

    async fn publish(
        &self,
        channel: &Channel,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Confirmation> {
        let publish = channel.basic_publish(exchange, routing_key, options, payload, properties);
        let confirm = if self.confirms {
            first_poll_locked(&self.order, publish).await?
        } else {
            publish.await?
        };
        confirm.await
    }
}

async fn open_channel(connection: &Connection, confirms: bool) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker("opening", "publishing channel", e))?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("enabling publisher confirms on", "publishing channel", e))?;
    }
    Ok(channel)
}

/// Polls `future` with `lock` held during its first poll only.
async fn first_poll_locked<F: Future>(lock: &Mutex<()>, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut first = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut first) {
            let _order = lock.lock();
            future.as_mut().poll(cx)
        } else {
            future.as_mut().poll(cx)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_falls_just_before_the_send_timeout() {
        assert_eq!(
            deadline(Duration::from_secs(30)),
            Duration::from_millis(29_500)
        );
        assert_eq!(
            deadline(Duration::from_secs(5)),
            Duration::from_millis(4_750)
        );
        assert_eq!(
            deadline(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        assert_eq!(deadline(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        const FIRST_BACKOFF: Duration = Duration::from_millis(20);
        const MAX_BACKOFF: Duration = Duration::from_secs(1);
        let backoff = |attempt| BACKOFF.delay(attempt);
        for _ in 0..100 {
            let first = backoff(1);
            assert!(
                first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF,
                "{first:?}"
            );
            let later = backoff(40);
            assert!(
                later >= MAX_BACKOFF / 2 && later <= MAX_BACKOFF,
                "{later:?}"
            );
        }
        let fourth = backoff(4);
        assert!(fourth >= FIRST_BACKOFF * 4 && fourth <= FIRST_BACKOFF * 8);
        let distinct: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff(8)).collect();
        assert!(distinct.len() > 1, "jitter varies the pause");
    }
}
