//! [`TestBus`]: an [`EventManager`] on a private in-process broker that records what
//! was published, handled, failed and dead-lettered, with bounded waits, for the
//! unit tests of an application's listeners.
//!
//! See the [crate documentation](crate) for an example.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use eventing::codec::Codec;
use eventing::memory::MemoryProvider;
use eventing::pipeline::{Call, EnvelopePipeline};
use eventing::topology::QueueSpec;
use eventing::{
    BoxError, Envelope, Event, EventDescriptor, EventManager, EventManagerBuilder,
    ListenerDescriptor, header,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How many dead letters of one queue a listing reads at most.
const DEAD_LETTER_LISTING: usize = 10_000;

/// How often dead-letter queues are polled while waiting for dead letters.
const DEAD_LETTER_POLL: Duration = Duration::from_millis(10);

/// What went wrong in a [`TestBus`]: mostly a wait that did not see what it waited
/// for, saying what it saw instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// A wait ended before enough records arrived.
    #[error(
        "timed out after {waited:?} waiting for {wanted} {what}: saw {seen}; on the bus: {seen_instead}"
    )]
    Timeout {
        /// What was waited for (`"handled `Billing` of `shop.OrderPlaced`"`, ...).
        what: String,
        /// How many were wanted.
        wanted: usize,
        /// How many there were when the wait ended.
        seen: usize,
        /// How long the wait took.
        waited: Duration,
        /// A summary of everything the bus recorded: published per event, handled
        /// and failed per listener (with the last error), dead letters per queue
        /// (with the last reason).
        seen_instead: String,
    },
    /// No running listener of this bus has that name for that event.
    #[error("no listener `{listener}` of event `{event}` runs on this bus; running: {running:?}")]
    NoSuchListener {
        /// The event's address.
        event: String,
        /// The name asked for.
        listener: String,
        /// `listener of event` for every listener the bus runs.
        running: Vec<String>,
    },
    /// A recorded body did not decode as the event type asked for.
    #[error("a `{content_type}` body does not decode as `{type_name}`: {reason}")]
    Decode {
        /// The Rust type asked for.
        type_name: &'static str,
        /// The body's `content-type`.
        content_type: String,
        /// The decoder's error.
        reason: String,
    },
    /// The manager failed (building, starting, sending, listing dead letters).
    #[error(transparent)]
    Eventing(#[from] eventing::Error),
    /// Starting every registered listener failed because the binary also links the
    /// kit's own suites (the `suites` feature of `eventing-test`), whose listeners
    /// need per-test state and an `{env}` variable.
    #[error(
        "starting the bus failed: {source}; this binary links the conformance suites of \
         eventing-test (its `suites` feature, on by default), whose listeners cannot run \
         unbound: select your listeners (`.only_bound_listeners()`, `.listener_type::<L>()`) \
         or depend on eventing-test with `default-features = false`"
    )]
    SuitesLinked {
        /// The manager's error.
        source: eventing::Error,
    },
}

/// One message as the bus saw it: on its way out (published), or as a listener
/// got it (handled, failed), or on a dead-letter queue.
#[derive(Clone, Debug)]
pub struct Message {
    event: &'static str,
    type_name: &'static str,
    address: String,
    message_id: String,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Message {
    fn new(envelope: &Envelope, event: &EventDescriptor) -> Message {
        Message {
            event: event.name(),
            type_name: event.type_name(),
            address: envelope.event().to_string(),
            message_id: envelope.message_id().to_string(),
            content_type: envelope
                .headers
                .get(header::CONTENT_TYPE)
                .unwrap_or_default()
                .to_string(),
            headers: envelope
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: envelope.body.clone(),
        }
    }

    /// True if this is a message of event `E`.
    pub fn is<E: Event>(&self) -> bool {
        let descriptor = E::descriptor();
        self.type_name == descriptor.type_name() && self.event == descriptor.name()
    }

    /// The body decoded as `E` (by its `content-type`: JSON, MessagePack or CBOR).
    pub fn decode<E: Event>(&self) -> Result<E, TestError> {
        decode(&self.content_type, &self.body)
    }

    /// The event's name as declared (placeholders such as `{env}` unresolved).
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The event's address (its name resolved), from the `event` header.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The `message-id` header.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header, in the envelope's order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The raw body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// One thing the bus recorded, in the order it happened.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Record {
    /// A message left through `send_event` (recorded when the send pipelines ran:
    /// a send the broker then refused is listed too).
    Published(Message),
    /// A listener returned `Ok`.
    Handled {
        /// The listener's name.
        listener: &'static str,
        /// 1 on the first call of this listener for this message, 2 on the first
        /// retry, and so on.
        attempt: u32,
        /// The message as the listener got it.
        message: Message,
    },
    /// A listener call failed: an error, a panic or an undecodable body.
    Failed {
        /// The listener's name.
        listener: &'static str,
        /// As for [`Record::Handled`].
        attempt: u32,
        /// The error's text.
        error: String,
        /// The message as the listener got it.
        message: Message,
    },
}

/// A failed call of a listener of `E`.
#[derive(Clone, Debug)]
pub struct Failed<E> {
    /// The event, or `None` if the body did not decode (the failure then is that).
    pub event: Option<E>,
    /// The error's text (`"listener panicked: ..."` for a panic).
    pub error: String,
    /// 1 on the first call, 2 on the first retry, and so on.
    pub attempt: u32,
    /// The message.
    pub message: Message,
}

/// A message of `E` on a listener's dead-letter queue.
#[derive(Clone, Debug)]
pub struct DeadLettered<E> {
    /// The event, or `None` if the body does not decode.
    pub event: Option<E>,
    /// Why it was dead-lettered (the `x-dead-letter-reason` header).
    pub reason: String,
    /// How many calls were made (0 when it was refused without a call).
    pub attempts: Option<u32>,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// The message as it sits on the dead-letter queue.
    pub message: Message,
}

#[derive(Default)]
struct Journal {
    records: Mutex<Vec<Record>>,
    changed: Notify,
}

impl Journal {
    fn push(&self, make: impl FnOnce(&[Record]) -> Record) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let record = make(&records);
        records.push(record);
        drop(records);
        self.changed.notify_waiters();
    }

    fn with<T>(&self, read: impl FnOnce(&[Record]) -> T) -> T {
        read(&self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The calls `listener` made before for the message `message_id`, plus one.
fn next_attempt(records: &[Record], listener: &str, message_id: &str) -> u32 {
    let earlier = records
        .iter()
        .filter(|record| match record {
            Record::Handled {
                listener: l,
                message,
                ..
            }
            | Record::Failed {
                listener: l,
                message,
                ..
            } => *l == listener && message.message_id == message_id,
            Record::Published(_) => false,
        })
        .count();
    u32::try_from(earlier).unwrap_or(u32::MAX).saturating_add(1)
}

/// The pipeline that fills the journal: last of the manager's pipelines, so it sees
/// what leaves after every other send pipeline, and wraps the listener call itself.
struct Recording {
    journal: Arc<Journal>,
}

impl EnvelopePipeline for Recording {
    fn name(&self) -> &'static str {
        "eventing-test bus"
    }

    fn send(&self, envelope: &mut Envelope, event: &EventDescriptor) -> Result<(), BoxError> {
        let message = Message::new(envelope, event);
        self.journal.push(|_| Record::Published(message));
        Ok(())
    }

    fn around(&self, envelope: &Envelope, listener: &ListenerDescriptor, call: Call) -> Call {
        let message = Message::new(envelope, listener.event());
        let listener = listener.name();
        let journal = Arc::clone(&self.journal);
        Box::pin(async move {
            let outcome = call.await;
            let error = outcome.error();
            journal.push(|records| {
                let attempt = next_attempt(records, listener, &message.message_id);
                match error {
                    None => Record::Handled {
                        listener,
                        attempt,
                        message,
                    },
                    Some(error) => Record::Failed {
                        listener,
                        attempt,
                        error,
                        message,
                    },
                }
            });
            outcome
        })
    }
}

/// An [`EventManager`] on a fresh, uniquely named in-process broker, started, that
/// records what was published, what each listener handled and what failed, and
/// reads the dead-letter queues: assertions wait (bounded) instead of sleeping.
///
/// Build it with [`start`](Self::start) (every registered listener, as a manager
/// runs them by default), [`with`](Self::with) (configure the builder: bind
/// listener instances, select listeners, set variables, options and pipelines) or
/// [`from_builder`](Self::from_builder). Whatever the builder says, the bus uses
/// its own broker (`memory://<unique>`, see [`url`](Self::url)) and adds a
/// recording pipeline after the others.
///
/// Waiting needs a tokio runtime (the one of `#[tokio::test]`, or
/// [`run`](crate::run) in a plain `#[test]`).
pub struct TestBus {
    manager: EventManager,
    broker: MemoryProvider,
    url: String,
    journal: Arc<Journal>,
}

impl fmt::Debug for TestBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBus")
            .field("url", &self.url)
            .field("records", &self.journal.with(<[Record]>::len))
            .finish_non_exhaustive()
    }
}

impl TestBus {
    /// A bus running every listener registered in this binary (the constructible
    /// ones: listeners with state need [`with`](Self::with) to bind an instance).
    pub async fn start() -> Result<TestBus, TestError> {
        Self::with(|builder| builder).await
    }

    /// A bus whose manager `configure` sets up, starting from a builder with the
    /// server name `test-bus` and a 5 s shutdown timeout.
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), eventing_test::TestError> {
    /// use eventing_test::TestBus;
    /// let bus = TestBus::with(|builder| builder.var("env", "test").only_bound_listeners()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn with(
        configure: impl FnOnce(EventManagerBuilder) -> EventManagerBuilder,
    ) -> Result<TestBus, TestError> {
        let builder = EventManager::builder()
            .server_name("test-bus")
            .shutdown_timeout(Duration::from_secs(5));
        Self::from_builder(configure(builder)).await
    }

    /// A bus from a builder of your own (its provider or URL is replaced by the
    /// bus's broker).
    pub async fn from_builder(builder: EventManagerBuilder) -> Result<TestBus, TestError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "eventing-test-bus-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = format!("memory://{name}");
        let journal = Arc::new(Journal::default());
        let manager = builder
            .url(url.clone())
            .pipeline(Recording {
                journal: Arc::clone(&journal),
            })
            .build()
            .await?;
        if let Err(error) = manager.start().await {
            let kit_linked = eventing::registry::listeners()
                .iter()
                .any(|l| l.type_name().starts_with("eventing_test::"));
            return Err(if kit_linked {
                TestError::SuitesLinked { source: error }
            } else {
                TestError::Eventing(error)
            });
        }
        Ok(TestBus {
            manager,
            broker: MemoryProvider::named(&name),
            url,
            journal,
        })
    }

    /// The manager: send with it, read its [`stats`](EventManager::stats),
    /// [`queues`](EventManager::queues) and [`health`](EventManager::health).
    pub fn manager(&self) -> &EventManager {
        &self.manager
    }

    /// The in-process broker (queue names and depths, simulated outages with
    /// [`set_available`](MemoryProvider::set_available)).
    pub fn broker(&self) -> &MemoryProvider {
        &self.broker
    }

    /// The broker's URL (`memory://<unique>`): managers built with it in this process
    /// share the broker, as other servers would (they are not recorded).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `event` through the manager.
    pub async fn send<E: Event>(&self, event: &E) -> Result<(), TestError> {
        Ok(self.manager.send_event(event).await?)
    }

    /// Everything recorded so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.journal.with(<[Record]>::to_vec)
    }

    /// The messages of `E` published so far, decoded.
    ///
    /// # Panics
    ///
    /// If one does not decode as `E` (it was encoded from an `E`, so it does).
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.journal
            .with(|records| published::<E>(records))
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits until at least `n` messages of `E` were published (by the test or by
    /// listeners), at most `timeout`; returns all of them.
    pub async fn wait_published<E: Event>(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<E>, TestError> {
        let what = format!("published `{}`", E::descriptor().name());
        self.wait(&what, n, timeout, published::<E>).await
    }

    /// The events of `E` that the listener named `listener` handled so far.
    pub fn handled<E: Event>(&self, listener: &str) -> Result<Vec<E>, TestError> {
        self.journal.with(|records| handled::<E>(records, listener))
    }

    /// Waits until the listener named `listener` handled at least `n` events of
    /// `E`, at most `timeout`; returns all it handled. The error says what the bus
    /// saw instead (its failures with their errors, dead letters with their
    /// reasons) or that no such listener runs.
    pub async fn wait_handled<E: Event>(
        &self,
        listener: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<E>, TestError> {
        self.running::<E>(listener)?;
        let what = format!("handled by `{listener}` of `{}`", E::descriptor().name());
        self.wait(&what, n, timeout, |records| handled::<E>(records, listener))
            .await
    }

    /// The failed calls of the listener named `listener` for events of `E` so far.
    pub fn failed<E: Event>(&self, listener: &str) -> Vec<Failed<E>> {
        self.journal.with(|records| failed::<E>(records, listener))
    }

    /// Waits until the listener named `listener` failed at least `n` calls for
    /// events of `E` (retries count), at most `timeout`; returns all its failures.
    pub async fn wait_failed<E: Event>(
        &self,
        listener: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Failed<E>>, TestError> {
        self.running::<E>(listener)?;
        let what = format!(
            "failed calls of `{listener}` for `{}`",
            E::descriptor().name()
        );
        self.wait(&what, n, timeout, |records| {
            Ok(failed::<E>(records, listener))
        })
        .await
    }

    /// The messages of `E` on the dead-letter queue of the listener named
    /// `listener`, oldest first.
    pub async fn dead_lettered<E: Event>(
        &self,
        listener: &str,
    ) -> Result<Vec<DeadLettered<E>>, TestError> {
        let queues = self.running::<E>(listener)?;
        let mut letters = Vec::new();
        for queue in &queues {
            for envelope in self
                .manager
                .dead_letters(&queue.name, DEAD_LETTER_LISTING)
                .await?
            {
                letters.push(dead_lettered::<E>(&envelope, &queue.name));
            }
        }
        Ok(letters)
    }

    /// Waits until the dead-letter queue of the listener named `listener` holds at
    /// least `n` messages of `E`, at most `timeout` (polling the broker every
    /// 10 ms); returns all of them.
    pub async fn wait_dead_lettered<E: Event>(
        &self,
        listener: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<DeadLettered<E>>, TestError> {
        let began = Instant::now();
        let deadline = began + timeout;
        loop {
            let letters = self.dead_lettered::<E>(listener).await?;
            if letters.len() >= n {
                return Ok(letters);
            }
            if Instant::now() >= deadline {
                return Err(TestError::Timeout {
                    what: format!(
                        "dead letters of `{listener}` for `{}`",
                        E::descriptor().name()
                    ),
                    wanted: n,
                    seen: letters.len(),
                    waited: began.elapsed(),
                    seen_instead: self.summary().await,
                });
            }
            tokio::time::sleep(DEAD_LETTER_POLL).await;
        }
    }

    /// Shuts the manager down (running calls finish, bounded by its shutdown
    /// timeout). The records stay readable.
    pub async fn shutdown(&self) -> Result<(), TestError> {
        Ok(self.manager.shutdown().await?)
    }

    /// The queues of the listener named `listener` of `E` that this bus runs, or
    /// why there are none.
    fn running<E: Event>(&self, listener: &str) -> Result<Vec<QueueSpec>, TestError> {
        let address = self.manager.address_of(E::descriptor())?;
        let queues = self.manager.queues();
        let mine: Vec<QueueSpec> = queues
            .iter()
            .filter(|q| q.listener == listener && q.event == *address)
            .cloned()
            .collect();
        if mine.is_empty() {
            return Err(TestError::NoSuchListener {
                event: address.to_string(),
                listener: listener.to_string(),
                running: queues
                    .iter()
                    .map(|q| format!("{} of {}", q.listener, q.event))
                    .collect(),
            });
        }
        Ok(mine)
    }

    /// Waits until `probe` finds at least `n`, at most `timeout`.
    async fn wait<T>(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        probe: impl Fn(&[Record]) -> Result<Vec<T>, TestError>,
    ) -> Result<Vec<T>, TestError> {
        let began = Instant::now();
        let deadline = began + timeout;
        loop {
            // Created before looking, so a record pushed in between still wakes it.
            let changed = self.journal.changed.notified();
            let found = self.journal.with(&probe)?;
            if found.len() >= n {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let found = self.journal.with(&probe)?;
                if found.len() >= n {
                    return Ok(found);
                }
                return Err(TestError::Timeout {
                    what: what.to_string(),
                    wanted: n,
                    seen: found.len(),
                    waited: began.elapsed(),
                    seen_instead: self.summary().await,
                });
            }
        }
    }

    /// One line of what the bus saw: published per event, handled and failed per
    /// listener (with the last error), dead letters per queue (with the last
    /// reason).
    pub async fn summary(&self) -> String {
        #[derive(Default)]
        struct Calls {
            handled: usize,
            failed: usize,
            last_error: Option<String>,
        }
        let (published, calls) = self.journal.with(|records| {
            let mut published: BTreeMap<String, usize> = BTreeMap::new();
            let mut calls: BTreeMap<(String, &'static str), Calls> = BTreeMap::new();
            for record in records {
                match record {
                    Record::Published(message) => {
                        *published.entry(message.address.clone()).or_default() += 1;
                    }
                    Record::Handled {
                        listener, message, ..
                    } => {
                        calls
                            .entry((message.address.clone(), listener))
                            .or_default()
                            .handled += 1;
                    }
                    Record::Failed {
                        listener,
                        message,
                        error,
                        ..
                    } => {
                        let entry = calls
                            .entry((message.address.clone(), listener))
                            .or_default();
                        entry.failed += 1;
                        entry.last_error = Some(error.clone());
                    }
                }
            }
            (published, calls)
        });
        let mut parts = Vec::new();
        for (address, n) in &published {
            parts.push(format!("published {n} `{address}`"));
        }
        for ((address, listener), calls) in &calls {
            let mut part = format!(
                "`{listener}` of `{address}` handled {} failed {}",
                calls.handled, calls.failed
            );
            if let Some(error) = &calls.last_error {
                part.push_str(&format!(" (last error: {error})"));
            }
            parts.push(part);
        }
        for queue in self.manager.queues() {
            let Ok(letters) = self
                .manager
                .dead_letters(&queue.name, DEAD_LETTER_LISTING)
                .await
            else {
                continue;
            };
            if let Some(last) = letters.last() {
                let reason = last.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
                parts.push(format!(
                    "{} dead-lettered from `{}` (last reason: {reason})",
                    letters.len(),
                    queue.name
                ));
            }
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join("; ")
        }
    }
}

fn published<E: Event>(records: &[Record]) -> Result<Vec<E>, TestError> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Published(message) if message.is::<E>() => Some(message.decode()),
            _ => None,
        })
        .collect()
}

fn handled<E: Event>(records: &[Record], name: &str) -> Result<Vec<E>, TestError> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Handled {
                listener, message, ..
            } if *listener == name && message.is::<E>() => Some(message.decode()),
            _ => None,
        })
        .collect()
}

fn failed<E: Event>(records: &[Record], name: &str) -> Vec<Failed<E>> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Failed {
                listener,
                attempt,
                error,
                message,
            } if *listener == name && message.is::<E>() => Some(Failed {
                event: message.decode().ok(),
                error: error.clone(),
                attempt: *attempt,
                message: message.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn dead_lettered<E: Event>(envelope: &Envelope, queue: &str) -> DeadLettered<E> {
    let message = Message::new(envelope, E::descriptor());
    DeadLettered {
        event: message.decode().ok(),
        reason: message
            .header(header::DEAD_LETTER_REASON)
            .unwrap_or_default()
            .to_string(),
        attempts: message
            .header(header::DEAD_LETTER_ATTEMPTS)
            .and_then(|n| n.parse().ok()),
        queue: queue.to_string(),
        message,
    }
}

/// Decodes a body as `E` by its content type, as the runtime does.
fn decode<E: Event>(content_type: &str, body: &[u8]) -> Result<E, TestError> {
    let error = |reason: String| TestError::Decode {
        type_name: E::descriptor().type_name(),
        content_type: content_type.to_string(),
        reason,
    };
    let codec = if content_type.is_empty() {
        Some(Codec::Json)
    } else {
        Codec::from_content_type(content_type)
    };
    match codec {
        Some(Codec::Json) => serde_json::from_slice(body).map_err(|e| error(e.to_string())),
        Some(Codec::MessagePack) => rmp_serde::from_slice(body).map_err(|e| error(e.to_string())),
        Some(Codec::Cbor) => ciborium::from_reader(body).map_err(|e| error(e.to_string())),
        _ => Err(error("unsupported content type".to_string())),
    }
}
