//! NATS JetStream provider for `eventing`, on `async-nats`: `nats://` and `tls://`
//! URLs.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
//! use eventing_nats as _; // links the `nats://` and `tls://` factory
//! let manager = eventing::EventManager::builder().url("nats://127.0.0.1:4222").build().await?;
//! manager.start().await?;
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! | eventing | JetStream | why |
//! |---|---|---|
//! | event `E` | stream `ev-<E>` with the one subject `ev.<E>` | a stream per event keeps each event's storage and retention its own |
//! | durable event | file storage; `send_event` returns after the publish ack | the ack means the server stored it |
//! | transient event | memory storage (lost when the server restarts) | |
//! | retention | `Limits`, `max_age` 7 days (`?max_age=`): a message stays until it is 7 days old, whoever acknowledged it; queues only see what is published after they exist (`deliver_policy = new`) | `Interest` (`?retention=interest`) would drop a message once every queue acknowledged it, like RabbitMQ, but in our restart test on 2.9.10 it lost 21 of 20,000 acknowledged publishes, consecutive ones sent as the server came back (most likely the stream was back before its consumers, so nobody was interested); with `Limits` the same test loses none |
//! | queue `E::L` (competing, singleton) | durable pull consumer `<E::L>` on `ev-<E>`, `filter_subject = ev.<E>`, explicit ack, `deliver_policy = new`, no inactive threshold | instances share it and compete; 2.9 deletes idle durables that have a threshold |
//! | per-process queue `E::L-server` | the same with `inactive_threshold` (60 s) | deleted when its subscription is cancelled (shutdown); after a crash the threshold removes it |
//! | prefetch | what one instance asks for in its pull requests (and `max_ack_pending` of the consumer, × 16 for shared ones) | `max_ack_pending` is one limit for every instance of a shared consumer |
//! | ack / requeue | `+ACK` / `-NAK` (redelivered at once) | |
//! | crashed consumer | redelivered after `ack_wait` (30 s, `?ack_wait=`) | |
//! | dead-letter queue `E::L.dlq` | subject `dlq.<E::L.dlq>` of the file stream `eventing-dlq` (limits retention) | listing leaves letters in place; taking one deletes it by sequence |
//! | replaying onto one queue | a publish to `ev.<E>` with header `Eventing-Nats-Queue: <queue>`; other queues ack and skip it | 2.9 has one filter subject per consumer, so a per-queue subject could not reach the queue alone |
//! | delay queue `E::L.delay.<ms>` (delayed retry stage) | a copy on subject `delay.<E::L.delay.<ms>>` of the work-queue file stream `eventing-delay`, due time in a header; the queue's subscriptions drain it (durable consumer of the same name) with delayed NAKs until due, then publish it to `ev.<E>` for `E::L` alone and ack | a `-NAK {"delay"}` of the original would stay pending on the queue's consumer, counting against its `max_ack_pending` (measured on 2.9.10), and could not carry the runtime's attempt headers |
//! | scheduled send | subject `sched.<E>` of `eventing-delay`, drained the same way (consumer `eventing-schedule`) into `ev.<E>` | 2.9 has no per-message schedule |
//! | headers | NATS headers; awkward ones escaped; `event` and a JSON `content-type` left out, the subject implies them (see [`headers`]) | fewer bytes for the server to parse and store |
//! | message id | `message-id`; with `?dedupe=true` sent as `Nats-Msg-Id` (a retried publish is stored once within 2 min) | the duplicate tracking is costly on 2.9, so opt-in |
//!
//! Names are mapped reversibly by [`names`] (`=XX` escapes): NATS forbids `.`, `*`,
//! `>`, whitespace, `/` and `\` in stream and consumer names, and 2.9.10 corrupts ack
//! subjects of names with `%`.
//!
//! Sends that fail because the server is unreachable are retried (with
//! `?dedupe=true` under the same `Nats-Msg-Id`, so a retry is stored once) until
//! the manager's send timeout and
//! then fail with [`Error::Unavailable`]. A consumer survives reconnects; when its
//! JetStream consumer is gone (deleted, or a memory stream lost in a restart) its
//! stream ends and the runtime declares and subscribes again.

pub mod headers;
pub mod names;
pub mod url;

mod consumer;
mod delayed;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream as js;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::{Client, ConnectErrorKind};
use bytes::Bytes;
use eventing::backoff::Backoff;
use eventing::provider::{
    Capabilities, ConnectFuture, ConsumeOptions, Consumer, InFlight, Provider, ProviderConfig,
    Route,
};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error, Headers, Result};
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use url::NatsUrl;

pub(crate) const NAME: &str = "nats";

/// The longest a JetStream API call or publish ack is awaited at once.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a one-off pull request (listing dead letters) waits at the server.
const FETCH_EXPIRES: Duration = Duration::from_secs(2);

/// How long one publish attempt waits for its ack before publishing again.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Publish retries while the server is unreachable.
const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).jitter(0.5);

/// How much larger `max_ack_pending` of a shared consumer is than one prefetch.
const SHARED_ACK_PENDING_FACTOR: i64 = 16;

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        provider: NAME,
        reason: reason.into(),
    }
}

fn provider_error(reason: impl Into<String>) -> Error {
    Error::Provider {
        provider: NAME,
        source: reason.into().into(),
    }
}

/// A provider on two NATS connections, one consuming and one publishing
/// ([`NatsProvider::connect`]). Cloning shares them.
#[derive(Clone)]
pub struct NatsProvider {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The consuming connection: pull requests, deliveries, acks, API calls.
    pub(crate) client: Client,
    js: js::Context,
    /// For publishing events, on the publishing connection: its timeout is
    /// [`ACK_WAIT`], how long one attempt waits for the publish ack.
    publisher: js::Context,
    url: NatsUrl,
    send_timeout: Duration,
    /// Events whose stream is known to exist.
    streams: Mutex<FxHashMap<String, async_nats::Subject>>,
    dead_letter_stream: AtomicBool,
    /// The delay stream ([`names::DELAY_STREAM`]) is known to exist.
    delay_stream: AtomicBool,
    /// The mover of scheduled sends was started ([`delayed`]).
    scheduler: AtomicBool,
    /// Turns true when the provider is closed: its movers stop.
    stop: watch::Sender<bool>,
    pub(crate) acks: Acks,
    /// Counts lost connections (async-nats' `Disconnected` events).
    pub(crate) disconnects: Arc<watch::Sender<u64>>,
}

/// The headers of one message to publish to an event's subject.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    headers: &'a Headers,
    /// Provider headers, sent as they are.
    extra: &'a [(&'a str, &'a str)],
    /// `extra` holds the message id as `Nats-Msg-Id`: the `message-id` header is
    /// left out.
    dedupe: bool,
}

/// Acks and NAKs on their way to the server. Most are handed to the client at
/// once: its outgoing queue nearly always has room, and then publishing does not
/// wait. Those that would wait, and every one after them while any does, go through
/// one task per provider that publishes them in order, so settling a delivery
/// costs a channel send at most, never a spawned task; `close` waits until they
/// are all handed to the client.
pub(crate) struct Acks {
    client: Client,
    queue: mpsc::UnboundedSender<(async_nats::Subject, &'static [u8])>,
    /// Work that must come before its ack (deleting a dead letter), and the acks
    /// queued but not yet handed to the client.
    pub(crate) tasks: InFlight,
}

impl Acks {
    fn new(client: Client) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<(async_nats::Subject, &'static [u8])>();
        let tasks = InFlight::default();
        let settled = tasks.clone();
        let publisher = client.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            // Ends when the provider (the only sender) is gone.
            while rx.recv_many(&mut batch, 64).await > 0 {
                let n = batch.len();
                for (reply, payload) in batch.drain(..) {
                    let sent = publisher.publish(reply, Bytes::from_static(payload)).await;
                    if let Err(error) = sent {
                        tracing::debug!(%error, "ack not sent");
                    }
                }
                settled.end(n);
            }
        });
        Self {
            client,
            queue,
            tasks,
        }
    }

    /// Sends `payload` (`b""` is an ack, `b"-NAK"` a requeue) for `reply`: at
    /// once if the client takes it without waiting and nothing is queued before
    /// it, else through the queue.
    pub(crate) fn send(&self, reply: async_nats::Subject, payload: &'static [u8]) {
        if self.tasks.count() == 0 {
            // A publish that would wait is dropped before it sent anything.
            let publish = self
                .client
                .publish(reply.clone(), Bytes::from_static(payload));
            if let Some(sent) = publish.now_or_never() {
                if let Err(error) = sent {
                    tracing::debug!(%error, "ack not sent");
                }
                return;
            }
        }
        self.tasks.begin(1);
        if self.queue.send((reply, payload)).is_err() {
            self.tasks.end(1);
        }
    }
}

impl NatsProvider {
    /// Connects to the server(s) of `config.url`, waiting at most the send timeout:
    /// two connections, one for consuming (pull requests, deliveries, acks and
    /// JetStream API calls) and one for publishing events. A connection is served
    /// by one task in this process and one reader at the server, so on one
    /// connection publishes queue behind deliveries and acks (and the other way
    /// round); apart, they run side by side (in the bench, raw async-nats moved
    /// 10-15% more events per second that way).
    pub async fn connect(config: ProviderConfig) -> Result<Self> {
        let url = url::parse(&config.url)?;
        let disconnects = Arc::new(watch::Sender::new(0u64));
        let (client, publishing) = tokio::try_join!(
            open(&url, &config, "", Some(Arc::clone(&disconnects))),
            open(&url, &config, " (publishing)", None),
        )?;
        let js = js::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client.clone());
        tracing::debug!(servers = ?url.servers, "connected to NATS");
        let acks = Acks::new(client.clone());
        let publisher = js::ContextBuilder::new()
            .timeout(ACK_WAIT)
            .build(publishing.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                publisher,
                url,
                send_timeout: config.send_timeout,
                streams: Mutex::new(FxHashMap::default()),
                dead_letter_stream: AtomicBool::new(false),
                delay_stream: AtomicBool::new(false),
                scheduler: AtomicBool::new(false),
                stop: watch::Sender::new(false),
                acks,
                disconnects,
            }),
        })
    }

    /// The async-nats client of the consuming connection (for what the provider
    /// does not do).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// Opens one connection to the server(s) of `url`, named `eventing <server><role>`
/// (as `connz` shows it), counting its losses in `disconnects` if given.
async fn open(
    url: &NatsUrl,
    config: &ProviderConfig,
    role: &str,
    disconnects: Option<Arc<watch::Sender<u64>>>,
) -> Result<Client> {
    let options = url
        .options()
        .await?
        .event_callback(move |event| {
            let disconnects = disconnects.clone();
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    tracing::debug!("NATS connection lost");
                    if let Some(count) = disconnects {
                        count.send_modify(|n| *n += 1);
                    }
                }
            }
        })
        .name(format!("eventing {}{role}", config.server_name))
        .connection_timeout(
            config
                .send_timeout
                .clamp(Duration::from_secs(1), API_TIMEOUT),
        )
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(50 * u64::try_from(attempt).unwrap_or(20))
                .min(Duration::from_secs(1))
        })
        .max_reconnects(None);
    let options = if url.retain_order {
        options.retain_servers_order()
    } else {
        options
    };
    let connect = options.connect(url.servers.clone());
    match tokio::time::timeout(config.send_timeout.max(Duration::from_secs(1)), connect).await {
        Err(_) => Err(unavailable("connecting timed out")),
        Ok(Err(error)) => Err(match error.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                provider_error(format!("the server refused the credentials: {error}"))
            }
            _ => unavailable(format!("cannot connect: {error}")),
        }),
        Ok(Ok(client)) => Ok(client),
    }
}

/// True for errors that mean "not reachable right now" (worth a retry).
fn api_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("timed out")
        || text.contains("no responders")
        || text.contains("broken pipe")
        || text.contains("disconnected")
        || text.contains("connection")
        || text.contains("jetstream not enabled")
        || text.contains("unavailable")
}

fn api_error(what: &str, error: &(dyn std::error::Error + 'static)) -> Error {
    if api_unavailable(error) {
        unavailable(format!("{what}: {error}"))
    } else {
        provider_error(format!("{what}: {error}"))
    }
}

impl Inner {
    fn stream_config(&self, event: &str, durable: bool) -> Result<stream::Config> {
        Ok(stream::Config {
            name: names::stream(event)?,
            subjects: vec![names::subject(event)],
            description: Some(format!("eventing event {event}")),
            storage: if durable {
                StorageType::File
            } else {
                StorageType::Memory
            },
            retention: if self.url.interest {
                RetentionPolicy::Interest
            } else {
                RetentionPolicy::Limits
            },
            max_age: if self.url.interest {
                Duration::ZERO
            } else {
                self.url.max_age
            },
            num_replicas: self.url.replicas,
            ..Default::default()
        })
    }

    /// Creates the stream of `event` unless this provider did so already; the
    /// subject its events are published to. The creation is boxed: every publish
    /// awaits this, and inline it would make each publish's future as large as
    /// the JetStream API call's (copied on every send).
    async fn ensure_stream(&self, event: &str, durable: bool) -> Result<async_nats::Subject> {
        if let Some(subject) = self.streams.lock().get(event) {
            return Ok(subject.clone());
        }
        Box::pin(self.create_stream(event, durable)).await
    }

    async fn create_stream(&self, event: &str, durable: bool) -> Result<async_nats::Subject> {
        let config = self.stream_config(event, durable)?;
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| api_error(&format!("creating the stream of `{event}`"), &e))?;
        let subject = async_nats::Subject::from(names::subject(event));
        self.streams
            .lock()
            .insert(event.to_string(), subject.clone());
        Ok(subject)
    }

    async fn ensure_dead_letter_stream(&self) -> Result<()> {
        if self.dead_letter_stream.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = stream::Config {
            name: names::DEAD_LETTER_STREAM.to_string(),
            subjects: vec![names::DEAD_LETTER_SUBJECTS.to_string()],
            description: Some("eventing dead letters, one subject per dead-letter queue".into()),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            num_replicas: self.url.replicas,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| api_error("creating the dead-letter stream", &e))?;
        self.dead_letter_stream.store(true, Ordering::Release);
        Ok(())
    }

    fn queue_config(&self, spec: &QueueSpec, prefetch: u16) -> Result<pull::Config> {
        let consumer = names::consumer(&spec.name)?;
        let prefetch = i64::from(prefetch.max(1));
        Ok(pull::Config {
            durable_name: Some(consumer),
            description: Some(format!("eventing queue {}", spec.name)),
            filter_subject: names::subject(&spec.event),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.url.ack_wait,
            deliver_policy: DeliverPolicy::New,
            max_ack_pending: if spec.per_process {
                prefetch
            } else {
                prefetch * SHARED_ACK_PENDING_FACTOR
            },
            // Never on shared queues: 2.9 deletes idle durables with a threshold.
            inactive_threshold: if spec.per_process {
                self.url.inactive_threshold
            } else {
                Duration::ZERO
            },
            num_replicas: self.url.replicas,
            ..Default::default()
        })
    }

    async fn ensure_queue(&self, spec: &QueueSpec, prefetch: u16) -> Result<()> {
        self.ensure_stream(&spec.event, spec.durable).await?;
        for job in delayed::Job::of_queue(spec)? {
            self.job_consumer(&job).await?;
        }
        let stream = names::stream(&spec.event)?;
        let config = self.queue_config(spec, prefetch)?;
        match self
            .js
            .create_consumer_on_stream(config.clone(), &stream)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("stream not found") => {
                // Deleted behind our back (or a memory stream lost in a restart).
                self.streams.lock().remove(&spec.event);
                self.ensure_stream(&spec.event, spec.durable).await?;
                self.js
                    .create_consumer_on_stream(config, &stream)
                    .await
                    .map(|_| ())
                    .map_err(|e| api_error(&format!("creating queue `{}`", spec.name), &e))
            }
            Err(error) => Err(api_error(
                &format!("creating queue `{}`", spec.name),
                &error,
            )),
        }
    }

    /// A JetStream API request with a raw body; the JSON answer.
    async fn api(&self, subject: String, body: Bytes) -> Result<serde_json::Value> {
        let answer = tokio::time::timeout(API_TIMEOUT, self.client.request(subject, body))
            .await
            .map_err(|_| unavailable("a JetStream API request timed out"))?
            .map_err(|e| unavailable(format!("a JetStream API request failed: {e}")))?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| provider_error(format!("unreadable JetStream API answer: {e}")))
    }

    /// True if the queue's consumer exists.
    async fn queue_exists(&self, spec: &QueueSpec) -> Result<bool> {
        let stream = names::stream(&spec.event)?;
        let consumer = names::consumer(&spec.name)?;
        let answer = self
            .api(
                format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                Bytes::new(),
            )
            .await?;
        Ok(answer.get("error").is_none())
    }

    /// Publishes with retries until the send timeout; returns after the publish ack.
    /// The NATS headers are built per attempt from `headers` and `extra` (a retry is
    /// rare; cloning them for every publish is not), leaving out what the subject
    /// implies ([`headers::event_to_nats`]); with `dedupe` the message id is the
    /// `Nats-Msg-Id` in `extra`.
    async fn publish(
        &self,
        event: &str,
        durable: bool,
        out: Outgoing<'_>,
        body: Bytes,
    ) -> Result<()> {
        let deadline = Instant::now() + self.send_timeout;
        let mut attempt = 0;
        let mut last;
        loop {
            let remaining = if attempt == 0 {
                self.send_timeout
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let sent = self.try_publish(event, durable, out, body.clone(), remaining);
            match sent.await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(reason)) => last = reason,
            }
            attempt += 1;
            let wait = BACKOFF.delay(attempt);
            if Instant::now() + wait >= deadline {
                return Err(unavailable(format!(
                    "publish to `{event}` failed for {:?}: {last}",
                    self.send_timeout
                )));
            }
            tracing::debug!(event, attempt, reason = %last, "publish failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn try_publish(
        &self,
        event: &str,
        durable: bool,
        out: Outgoing<'_>,
        body: Bytes,
        remaining: Duration,
    ) -> std::result::Result<(), Failure> {
        let subject = match self.ensure_stream(event, durable).await {
            Ok(subject) => subject,
            Err(Error::Unavailable { reason, .. }) => return Err(Failure::Retry(reason)),
            Err(other) => return Err(Failure::Fatal(other)),
        };
        let map = headers::event_to_nats(out.headers, event, out.dedupe, out.extra)
            .map_err(Failure::Fatal)?;
        let size = body.len();
        let sent = self
            .publisher
            .publish_with_headers(subject, map, body)
            .await;
        // The publish context gives up on the ack after ACK_WAIT by itself; a
        // shorter rest of the send timeout needs a timer of its own. A publish sent
        // again after a lost ack is stored once with `?dedupe=true` (same
        // `Nats-Msg-Id`), else it may be stored twice (at least once).
        let no_ack = || Failure::Retry("no publish ack in time".into());
        let outcome = match sent {
            Ok(ack) if remaining >= ACK_WAIT => ack.await.map(|_| ()),
            Ok(ack) => {
                let wait = remaining.max(Duration::from_millis(50));
                match tokio::time::timeout(wait, ack.into_future()).await {
                    Ok(acked) => acked.map(|_| ()),
                    Err(_) => return Err(no_ack()),
                }
            }
            Err(error) => Err(error),
        };
        let Err(error) = outcome else { return Ok(()) };
        match error.kind() {
            PublishErrorKind::StreamNotFound => {
                // Deleted, or a memory stream lost in a restart: create it again.
                self.streams.lock().remove(event);
                Err(Failure::Retry(error.to_string()))
            }
            PublishErrorKind::TimedOut => Err(no_ack()),
            PublishErrorKind::MaxPayloadExceeded => Err(Failure::Fatal(Error::TooLarge {
                address: event.to_string(),
                size,
                limit: self.client.server_info().max_payload,
            })),
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                Err(Failure::Fatal(Error::Refused {
                    provider: NAME,
                    address: event.to_string(),
                    message_id: String::new(),
                    reason: error.to_string(),
                }))
            }
            PublishErrorKind::Other if error.to_string().contains("invalid") => {
                Err(Failure::Fatal(provider_error(error.to_string())))
            }
            _ => Err(Failure::Retry(error.to_string())),
        }
    }

    /// Sends an ack (`+ACK` for an empty payload, `-NAK`, ...), fire and forget.
    pub(crate) async fn send_ack(&self, reply: async_nats::Subject, payload: &'static [u8]) {
        if let Err(error) = self
            .client
            .publish(reply, Bytes::from_static(payload))
            .await
        {
            tracing::debug!(%error, "ack not sent");
        }
    }

    /// Acknowledges and waits for the server to confirm it (a "double ack").
    pub(crate) async fn confirm_ack(&self, reply: async_nats::Subject) -> Result<()> {
        match tokio::time::timeout(
            API_TIMEOUT,
            self.client.request(reply, Bytes::from_static(b"+ACK")),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unavailable(format!("ack not confirmed: {error}"))),
            Err(_) => Err(unavailable("ack not confirmed in time")),
        }
    }

    /// Stores a dead letter on `subject` of the dead-letter stream (publish ack).
    pub(crate) async fn store_dead_letter(&self, subject: &str, letter: &Envelope) -> Result<()> {
        self.ensure_dead_letter_stream().await?;
        let headers = headers::to_nats(&letter.headers, &[])?;
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, letter.body.clone())
            .await
            .map_err(|e| unavailable(format!("storing a dead letter: {e}")))?;
        ack.await
            .map(|_| ())
            .map_err(|e| unavailable(format!("storing a dead letter: {e}")))
    }

    /// Deletes message `sequence` of `stream` (a letter taken off its dead-letter queue).
    pub(crate) async fn delete_message(&self, stream: &str, sequence: u64) {
        let subject = format!("$JS.API.STREAM.MSG.DELETE.{stream}");
        let body = format!("{{\"seq\":{sequence},\"no_erase\":true}}");
        match self.api(subject, Bytes::from(body)).await {
            Ok(answer) if answer.get("error").is_some() => {
                tracing::warn!(%answer, sequence, "cannot delete a dead letter");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, sequence, "cannot delete a dead letter"),
        }
    }

    /// Up to `limit` messages `consumer` has now, not acknowledged: one pull request
    /// that expires after [`FETCH_EXPIRES`].
    async fn fetch_now(&self, stream: &str, consumer: &str, limit: usize) -> Result<Vec<Envelope>> {
        let inbox = self.client.new_inbox();
        let mut subscriber = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(format!("reading dead letters: {e}")))?;
        let body = format!(
            "{{\"batch\":{limit},\"expires\":{}}}",
            FETCH_EXPIRES.as_nanos()
        );
        self.client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                inbox,
                Bytes::from(body),
            )
            .await
            .map_err(|e| unavailable(format!("reading dead letters: {e}")))?;
        let deadline = Instant::now() + FETCH_EXPIRES + Duration::from_secs(1);
        let mut letters = Vec::new();
        while letters.len() < limit {
            match tokio::time::timeout_at(deadline, subscriber.next()).await {
                Ok(Some(message)) if message.status.is_none() => {
                    letters.push(headers::to_envelope(
                        message.headers.as_ref(),
                        message.payload,
                        None,
                        None,
                    ));
                }
                // 404 no more, 408 expired; or no answer in time.
                Ok(Some(_)) | Ok(None) | Err(_) => break,
            }
        }
        let _ = subscriber.unsubscribe().await;
        Ok(letters)
    }

    pub(crate) async fn delete_consumer(&self, stream: &str, consumer: &str) {
        let subject = format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}");
        if let Err(error) = self.api(subject, Bytes::new()).await {
            tracing::debug!(%error, consumer, "cannot delete a consumer");
        }
    }

    /// A short-lived consumer of the dead letters of `spec`, from the oldest.
    async fn letters_consumer(
        &self,
        spec: &QueueSpec,
        purpose: &str,
        prefetch: usize,
    ) -> Result<(String, js::consumer::PullConsumer)> {
        tracing::debug!(queue = %spec.name, purpose, "dead-letter consumer");
        self.ensure_dead_letter_stream().await?;
        let name = format!(
            "{purpose}-{}",
            self.client.new_inbox().rsplit('.').next().unwrap_or("x")
        );
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: names::dead_letter_subject(&spec.dead_letter_queue()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.url.ack_wait,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: i64::try_from(prefetch.max(1)).unwrap_or(1000),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let consumer = self
            .js
            .create_consumer_on_stream(config, names::DEAD_LETTER_STREAM)
            .await
            .map_err(|e| api_error("reading dead letters", &e))?;
        Ok((name, consumer))
    }
}

enum Failure {
    Retry(String),
    Fatal(Error),
}

impl Provider for NatsProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_dead_letters().with_delayed()
    }

    /// The consumer, its stream and subject, the dead-letter subject and the
    /// delay queues' subjects, as the server names them (escaped: see [`names`]).
    fn broker_names(&self, queue: &QueueSpec) -> Option<String> {
        let consumer = names::consumer(&queue.name).ok()?;
        let stream = names::stream(&queue.event).ok()?;
        let mut names = format!(
            "consumer {consumer} on stream {stream} (subject {}), dead letters {} in {}",
            names::subject(&queue.event),
            names::dead_letter_subject(&queue.dead_letter_queue()),
            names::DEAD_LETTER_STREAM,
        );
        let delays: Vec<String> = queue
            .delay_queues()
            .iter()
            .map(|name| names::delay_subject(name))
            .collect();
        if !delays.is_empty() {
            names.push_str(&format!(
                ", delayed retries wait on {} in {} (consumers of the same names)",
                delays.join(", "),
                names::DELAY_STREAM
            ));
        }
        Some(names)
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        for spec in queues {
            self.inner.ensure_queue(spec, DEFAULT_PREFETCH).await?;
        }
        Ok(())
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> Result<()> {
        let message_id = envelope.message_id();
        let dedupe = self.inner.url.dedupe && !message_id.is_empty();
        let msg_id = [(headers::MSG_ID, message_id)];
        let extra: &[(&str, &str)] = if dedupe { &msg_id } else { &[] };
        self.inner
            .publish(
                route.address,
                route.durable,
                Outgoing {
                    headers: &envelope.headers,
                    extra,
                    dedupe,
                },
                envelope.body.clone(),
            )
            .await
    }

    async fn subscribe(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.inner.ensure_queue(queue, options.prefetch).await?;
        let spec = consumer::Spec {
            stream: names::stream(&queue.event)?,
            consumer: names::consumer(&queue.name)?,
            prefetch: usize::from(options.prefetch.max(1)),
            kind: consumer::Kind::Queue {
                event: queue.event.clone(),
                target: names::escape(&queue.name),
                per_process: queue.per_process,
                queue: queue.clone(),
                waiting: delayed::Job::of_queue(queue)?,
            },
        };
        let dead_letters = names::dead_letter_subject(&queue.dead_letter_queue());
        let consumer = consumer::subscribe(Arc::clone(&self.inner), spec, dead_letters).await?;
        delayed::ensure_scheduler(&self.inner);
        Ok(consumer)
    }

    async fn close(&self) -> Result<()> {
        self.inner.stop.send_replace(true);
        // Acks given so far reach the server before the connection goes: the flush
        // is a PING/PONG round trip after them.
        self.inner.acks.tasks.wait_idle(API_TIMEOUT).await;
        for client in [self.inner.client.clone(), self.inner.publisher.client()] {
            if let Err(error) = client.flush().await {
                tracing::debug!(%error, "flush on close failed");
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, queue: &QueueSpec, limit: usize) -> Result<Vec<Envelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (name, consumer) = self.inner.letters_consumer(queue, "browse", limit).await?;
        // As many as the consumer counts (a no_wait request may get no answer on 2.9.10
        // after letters were deleted from the stream, so we do not rely on its 404).
        let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
        let letters = match pending.min(limit) {
            0 => Ok(Vec::new()),
            n => {
                self.inner
                    .fetch_now(names::DEAD_LETTER_STREAM, &name, n)
                    .await
            }
        };
        self.inner
            .delete_consumer(names::DEAD_LETTER_STREAM, &name)
            .await;
        letters
    }

    async fn dead_letter_depth(&self, queue: &QueueSpec) -> Result<usize> {
        if !self.inner.queue_exists(queue).await? {
            return Err(Error::QueueNotFound {
                queue: queue.name.clone(),
            });
        }
        let (name, consumer) = self.inner.letters_consumer(queue, "depth", 1).await?;
        let depth = consumer.cached_info().num_pending;
        self.inner
            .delete_consumer(names::DEAD_LETTER_STREAM, &name)
            .await;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }

    async fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>> {
        let prefetch = usize::from(prefetch.max(1));
        let (name, _) = self.inner.letters_consumer(queue, "take", prefetch).await?;
        let spec = consumer::Spec {
            stream: names::DEAD_LETTER_STREAM.to_string(),
            consumer: name,
            prefetch,
            kind: consumer::Kind::Letters,
        };
        let dead_letters = names::dead_letter_subject(&queue.dead_letter_queue());
        consumer::subscribe(Arc::clone(&self.inner), spec, dead_letters).await
    }

    /// Stored on the subject `sched.<event>` of the delay stream (file storage,
    /// whatever the event's durability) with its due time; a provider that
    /// consumes moves it to the event when due (see docs/nats.md, "Delayed retries
    /// and scheduled sends").
    async fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: Duration,
        envelope: Envelope,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "nats.send_delayed",
            event = route.address,
            message_id = envelope.message_id(),
            ?delay
        );
        let due = delayed::due_after(delay);
        tracing::Instrument::instrument(
            self.inner.store_waiting(
                names::schedule_subject(route.address),
                &envelope.headers,
                envelope.body.clone(),
                due,
                Some(route.durable),
            ),
            span,
        )
        .await
    }

    async fn send_to_queue(&self, queue: &QueueSpec, envelope: Envelope) -> Result<()> {
        if !self.inner.queue_exists(queue).await? {
            return Err(Error::QueueNotFound {
                queue: queue.name.clone(),
            });
        }
        let target = names::escape(&queue.name);
        // A fresh message id: the original's would be taken for a duplicate.
        let id = format!(
            "{}:{}",
            envelope.message_id(),
            self.inner
                .client
                .new_inbox()
                .rsplit('.')
                .next()
                .unwrap_or("")
        );
        let extra = [
            (headers::TARGET_QUEUE, target.as_str()),
            (headers::MSG_ID, id.as_str()),
        ];
        self.inner
            .publish(
                &queue.event,
                queue.durable,
                Outgoing {
                    headers: &envelope.headers,
                    extra: &extra,
                    dedupe: false,
                },
                envelope.body.clone(),
            )
            .await
    }
}

/// The prefetch `declare` gives a queue before a subscription sets its own.
const DEFAULT_PREFETCH: u16 = 64;

fn connect(config: ProviderConfig) -> ConnectFuture {
    Box::pin(async move { Ok(NatsProvider::connect(config).await?.into_dyn()) })
}

eventing::register_provider!(["nats", "tls"], connect);
