//! The event manager: sends events through the pipelines and runs listeners.

mod batch;
mod builder;
mod consume;
mod replay;
mod schedule;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use builder::{EventManagerBuilder, ListenerOptions, RetryPolicy, URL_VARIABLE};
pub use subscribe::{ListenerInfo, ListenerKind, SubscribeOptions, Subscription, SubscriptionId};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::{Event, EventDescriptor};
use crate::listener::{AnyListener, ListenerDescriptor};
use crate::pipeline::EnvelopePipeline;
use crate::provider::{ConsumeOptions, DynProvider, Route};
use crate::registry;
use crate::topology::{EventInfo, QueueSpec, Topology};

/// Sends events and runs listeners over one provider.
///
/// ```
/// use eventing::{event, event_listener, Context, EventListener, EventManager, ListenerResult};
/// use serde::{Deserialize, Serialize};
///
/// #[event]
/// #[derive(Serialize, Deserialize)]
/// struct OrderPlaced { id: u64 }
///
/// #[event_listener(OrderPlaced)]
/// struct Billing;
///
/// impl EventListener<OrderPlaced> for Billing {
///     async fn on(&self, order: OrderPlaced, _: &Context) -> ListenerResult {
///         println!("bill order {}", order.id);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eventing::Result<()> {
/// let manager = EventManager::builder().url("memory://doc").build().await?;
/// manager.start().await?;
/// manager.send_event(&OrderPlaced { id: 7 }).await?;
/// manager.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventManager {
    inner: Arc<Inner>,
}

/// An event that went through the send pipelines but was not published
/// ([`EventManager::prepare_event`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Prepared {
    /// The event's resolved address.
    pub address: Arc<str>,
    /// Whether the event is durable (a persistent, confirmed message).
    pub durable: bool,
    /// The finished envelope: body, message id and every pipeline's headers.
    pub envelope: Envelope,
}

/// A handle to a manager that does not keep it alive (given to pipelines).
#[derive(Clone)]
pub struct WeakManager {
    inner: std::sync::Weak<Inner>,
}

impl WeakManager {
    /// The manager, if it still exists.
    pub fn upgrade(&self) -> Option<EventManager> {
        self.inner.upgrade().map(|inner| EventManager { inner })
    }
}

struct Inner {
    provider: Arc<dyn DynProvider>,
    server: String,
    pipelines: Arc<[Arc<dyn EnvelopePipeline>]>,
    vars: HashMap<String, String>,
    /// Resolved addresses by descriptor, computed once.
    addresses: HashMap<usize, Result<Arc<str>, String>, rustc_hash::FxBuildHasher>,
    instances: Vec<(std::any::TypeId, AnyListener)>,
    selected: Option<Vec<std::any::TypeId>>,
    defaults: ListenerOptions,
    overrides: HashMap<String, ListenerOptions>,
    max_body: usize,
    codec: crate::codec::Codec,
    send_timeout: Duration,
    /// The provider bounds its own `publish` by `send_timeout`
    /// ([`Capabilities::bounded_publish`](crate::provider::Capabilities::bounded_publish)),
    /// and this manager connected it, with that timeout: sends need no timer here.
    publish_bounded: bool,
    shutdown_timeout: Duration,
    reconnect: RetryPolicy,
    state: Mutex<State>,
    stopped: AtomicBool,
    stats: Arc<Counters>,
    /// Run-time subscriptions (`subscribe.rs`).
    subscriptions: subscribe::Subscriptions,
}

enum State {
    Built,
    Running {
        stop: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
        queues: Vec<QueueSpec>,
        actives: Vec<Arc<consume::Active>>,
    },
    Stopped,
}

/// Counts since the manager was built.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) delayed: AtomicU64,
}

/// A snapshot of a manager's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events sent.
    pub sent: u64,
    /// Deliveries a listener handled (acknowledged).
    pub handled: u64,
    /// Listener calls that failed (error or panic).
    pub failed: u64,
    /// Calls that were retries.
    pub retried: u64,
    /// Deliveries moved to a dead-letter queue.
    pub dead_lettered: u64,
    /// Times a listener lost its subscription and subscribed again.
    pub reconnects: u64,
    /// Deliveries handed to the delayed retry stage (each round counts).
    pub delayed: u64,
}

/// What a listener is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Subscribed and taking messages.
    Consuming,
    /// The subscription was lost; subscribing again with backoff.
    Reconnecting,
    /// Shut down.
    Stopped,
}

/// The health of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerHealth {
    /// Listener name.
    pub listener: &'static str,
    /// Its queue.
    pub queue: String,
    /// What it is doing.
    pub state: ListenerState,
}

/// A manager's health: per listener, and the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// True when every listener is consuming.
    pub healthy: bool,
    /// Per listener.
    pub listeners: Vec<ListenerHealth>,
    /// The counters.
    pub stats: Stats,
}

/// One listener the manager runs.
struct Planned {
    descriptor: &'static ListenerDescriptor,
    queue: QueueSpec,
    instance: Option<AnyListener>,
}

impl EventManager {
    /// Starts building a manager.
    pub fn builder() -> EventManagerBuilder {
        EventManagerBuilder::default()
    }

    /// A handle that does not keep the manager alive.
    pub fn downgrade(&self) -> WeakManager {
        WeakManager {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The server name (per-process queues are named after it).
    pub fn server_name(&self) -> &str {
        &self.inner.server
    }

    /// The provider in use.
    pub fn provider(&self) -> &Arc<dyn DynProvider> {
        &self.inner.provider
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        Stats {
            sent: c.sent.load(Ordering::Relaxed),
            handled: c.handled.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }

    /// Whether each listener is connected and consuming, and the counters.
    pub fn health(&self) -> Health {
        let mut listeners: Vec<ListenerHealth> = match &*self.inner.state.lock() {
            State::Running { actives, .. } => actives
                .iter()
                .map(|active| ListenerHealth {
                    listener: active.descriptor.name(),
                    queue: active.queue.name.clone(),
                    state: match active.state.load(Ordering::Relaxed) {
                        consume::CONSUMING => ListenerState::Consuming,
                        consume::RECONNECTING => ListenerState::Reconnecting,
                        _ => ListenerState::Stopped,
                    },
                })
                .collect(),
            _ => Vec::new(),
        };
        for active in self.inner.subscriptions.actives() {
            listeners.push(ListenerHealth {
                listener: active.descriptor.name(),
                queue: active.queue.name.clone(),
                state: subscribe::state_of(&active),
            });
        }
        Health {
            healthy: !listeners.is_empty()
                && listeners
                    .iter()
                    .all(|l| l.state == ListenerState::Consuming),
            listeners,
            stats: self.stats(),
        }
    }

    /// The resolved address of an event.
    pub fn address_of(&self, event: &'static EventDescriptor) -> Result<Arc<str>> {
        self.inner.address(event)
    }

    /// The events registered in this binary and the queues this manager creates for
    /// its listeners.
    pub fn topology(&self) -> Result<Topology> {
        let mut events = Vec::new();
        for event in registry::events() {
            events.push(EventInfo {
                name: self.inner.address(event)?.to_string(),
                type_name: event.type_name(),
                durable: event.durable(),
            });
        }
        let mut queues: Vec<QueueSpec> = self.inner.plan()?.into_iter().map(|p| p.queue).collect();
        queues.extend(self.inner.subscriptions.queues());
        let broker_names = queues
            .iter()
            .filter_map(|q| Some((q.name.clone(), self.inner.provider.broker_names(q)?)))
            .collect();
        Ok(Topology {
            server: self.inner.server.clone(),
            events,
            queues,
            broker_names,
        })
    }

    /// Checks the registry, declares the topology and starts every listener.
    pub async fn start(&self) -> Result<()> {
        match *self.inner.state.lock() {
            State::Built => {}
            State::Stopped => {
                return Err(Error::ShutDown {
                    operation: "start()",
                });
            }
            _ => return Err(Error::AlreadyStarted),
        }
        registry::validate()?;
        let plan = self.inner.plan()?;
        let mut bound = Vec::with_capacity(plan.len());
        for planned in plan {
            if !planned.queue.retry_delays.is_empty() && !self.inner.provider.capabilities().delayed
            {
                tracing::error!(
                    listener = planned.descriptor.name(),
                    provider = self.inner.provider.name(),
                    "the retry policy has delays but the provider has no delayed delivery"
                );
                return Err(Error::Unsupported {
                    provider: self.inner.provider.name(),
                    operation: "delayed redelivery (RetryPolicy::delays)",
                });
            }
            let instance = planned
                .descriptor
                .instantiate(planned.instance, &self.inner.instances)?;
            let handler =
                (planned.descriptor.bind)(instance).ok_or(Error::WrongListenerInstance {
                    listener: planned.descriptor.name(),
                    type_name: planned.descriptor.type_name(),
                })?;
            bound.push((planned.descriptor, planned.queue, handler));
        }
        let queues: Vec<QueueSpec> = bound.iter().map(|(_, q, _)| q.clone()).collect();
        self.inner.provider.declare(&queues).await?;

        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::with_capacity(bound.len());
        let mut actives = Vec::with_capacity(bound.len());
        for (descriptor, queue, handler) in bound {
            let options = self.inner.options_for(descriptor);
            let consumer = self
                .inner
                .provider
                .subscribe(&queue, ConsumeOptions::new(options.prefetch))
                .await?;
            tracing::info!(
                event = %queue.event,
                listener = descriptor.name(),
                queue = %queue.name,
                provider = self.inner.provider.name(),
                "listening"
            );
            let active = self.inner.active(descriptor, queue, handler, options);
            actives.push(Arc::clone(&active));
            let shutdown_timeout = self.inner.shutdown_timeout;
            tasks.push(tokio::spawn(consume::run(
                consumer,
                active,
                stopped.clone(),
                shutdown_timeout,
            )));
        }
        {
            let mut state = self.inner.state.lock();
            if !matches!(*state, State::Built) {
                for task in &tasks {
                    task.abort();
                }
                return Err(match *state {
                    State::Stopped => Error::ShutDown {
                        operation: "start()",
                    },
                    _ => Error::AlreadyStarted,
                });
            }
            *state = State::Running {
                stop,
                tasks,
                queues,
                actives,
            };
        }
        self.start_subscriptions().await
    }

    /// Serializes `event`, runs the send pipelines and publishes it. For a durable
    /// event this returns once the broker has confirmed it.
    pub async fn send_event<E: Event>(&self, event: &E) -> Result<()> {
        let descriptor = E::descriptor();
        let address = self.inner.address(descriptor)?;
        let codec = descriptor.codec().unwrap_or(self.inner.codec);
        let body = codec.encode(event, &address)?;
        self.send_encoded(descriptor, address, codec, body).await
    }

    async fn send_encoded(
        &self,
        descriptor: &'static EventDescriptor,
        address: Arc<str>,
        codec: crate::codec::Codec,
        body: bytes::Bytes,
    ) -> Result<()> {
        let envelope = self.envelope_of(descriptor, &address, codec, body)?;
        self.publish_envelope(&address, descriptor.durable(), envelope)
            .await
    }

    /// Serializes `event` and runs the send pipelines, as
    /// [`send_event`](Self::send_event) does, but does not publish: the result holds
    /// the address, the durability and the finished envelope (message id and
    /// headers fixed). Publish it later, perhaps from another process, with
    /// [`publish_prepared`](Self::publish_prepared). A transactional outbox stores
    /// it in the sender's database transaction.
    ///
    /// ```
    /// # #[eventing::event] #[derive(serde::Serialize, serde::Deserialize)] struct Noted { n: u32 }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
    /// let manager = eventing::EventManager::builder().url("memory://prepare-doc").build().await?;
    /// let prepared = manager.prepare_event(&Noted { n: 1 })?;
    /// assert_eq!(&*prepared.address, "Noted");
    /// assert_eq!(prepared.envelope.message_id().len(), 36);
    /// manager.publish_prepared(&prepared.address, prepared.durable, prepared.envelope).await?;
    /// # Ok(()) }
    /// ```
    pub fn prepare_event<E: Event>(&self, event: &E) -> Result<Prepared> {
        let descriptor = E::descriptor();
        let address = self.inner.address(descriptor)?;
        let codec = descriptor.codec().unwrap_or(self.inner.codec);
        let body = codec.encode(event, &address)?;
        let envelope = self.envelope_of(descriptor, &address, codec, body)?;
        Ok(Prepared {
            address,
            durable: descriptor.durable(),
            envelope,
        })
    }

    /// Publishes an envelope built by [`prepare_event`](Self::prepare_event) to
    /// `address` through the provider, without running the send pipelines again; for
    /// a durable event this returns once the broker has confirmed it. Bounded by the
    /// send timeout, like [`send_event`](Self::send_event).
    pub async fn publish_prepared(
        &self,
        address: &str,
        durable: bool,
        envelope: Envelope,
    ) -> Result<()> {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(Error::ShutDown {
                operation: "publish_prepared()",
            });
        }
        self.publish_envelope(address, durable, envelope).await
    }

    /// The envelope of an encoded event: standard headers, then the send pipelines.
    fn envelope_of(
        &self,
        descriptor: &'static EventDescriptor,
        address: &str,
        codec: crate::codec::Codec,
        body: bytes::Bytes,
    ) -> Result<Envelope> {
        if body.len() > self.inner.max_body {
            return Err(Error::TooLarge {
                address: address.to_string(),
                size: body.len(),
                limit: self.inner.max_body,
            });
        }
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(Error::ShutDown {
                operation: "send_event()",
            });
        }
        let mut envelope = Envelope::new(address, codec.content_type(), body);
        if let Some(version) = descriptor.version() {
            envelope
                .headers
                .insert(crate::header::EVENT_VERSION, version);
        }
        for pipeline in self.inner.pipelines.iter() {
            pipeline
                .send(&mut envelope, descriptor)
                .map_err(|source| Error::Pipeline {
                    pipeline: pipeline.name(),
                    source,
                })?;
        }
        Ok(envelope)
    }

    /// Publishes a finished envelope, bounded by the send timeout, and counts it.
    async fn publish_envelope(
        &self,
        address: &str,
        durable: bool,
        envelope: Envelope,
    ) -> Result<()> {
        let span =
            tracing::debug_span!("send", event = %address, message_id = %envelope.message_id());
        let route = Route::new(address, durable);
        let publish = self.inner.provider.publish(route, envelope);
        if self.inner.publish_bounded {
            publish.instrument(span).await?;
        } else {
            self.bounded(publish, span, || format!("send of `{address}`"))
                .await?;
        }
        self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
        crate::metrics::sent(address);
        Ok(())
    }

    /// Awaits a provider's send, bounded by the send timeout: most complete at once,
    /// and only one that waits pays for a timer (and runs in `span`). `what` names
    /// the send in the [`Error::Unavailable`] of a timeout.
    async fn bounded(
        &self,
        mut publish: futures_util::future::BoxFuture<'_, Result<()>>,
        span: tracing::Span,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        if let Some(result) = (&mut publish).now_or_never() {
            return result;
        }
        let limit = self.inner.send_timeout;
        tokio::time::timeout(limit, publish.instrument(span))
            .await
            .map_err(|_| Error::Unavailable {
                provider: self.inner.provider.name(),
                reason: format!("{} did not complete within {limit:?}", what()),
            })?
    }

    /// Up to `limit` dead letters of the queue named `queue` (one of this manager's
    /// queues), oldest first, with the reason in [`header::DEAD_LETTER_REASON`](crate::header::DEAD_LETTER_REASON).
    pub async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let spec = self.queue_spec(queue)?;
        self.dead_letters_of(&spec, limit).await
    }

    /// Moves up to `limit` dead letters of `queue` back onto it, without their
    /// `x-dead-letter-*` headers; returns how many were moved.
    pub async fn replay_dead_letters(&self, queue: &str, limit: usize) -> Result<usize> {
        let spec = self.queue_spec(queue)?;
        self.replay_dead_letters_of(&spec, limit).await
    }

    /// [`dead_letters`](Self::dead_letters) of any queue (the CLI's, which need not
    /// be this manager's).
    pub(crate) async fn dead_letters_of(
        &self,
        spec: &QueueSpec,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let provider = &self.inner.provider;
        if !provider.capabilities().dead_letters {
            return Err(Error::Unsupported {
                provider: provider.name(),
                operation: "listing dead letters",
            });
        }
        provider.dead_letters(spec, limit).await
    }

    /// [`replay_dead_letters`](Self::replay_dead_letters) of any queue.
    pub(crate) async fn replay_dead_letters_of(
        &self,
        spec: &QueueSpec,
        limit: usize,
    ) -> Result<usize> {
        replay::replay(self.inner.provider.as_ref(), spec, limit).await
    }

    fn queue_spec(&self, queue: &str) -> Result<QueueSpec> {
        self.inner
            .plan()?
            .into_iter()
            .map(|p| p.queue)
            .chain(self.inner.subscriptions.queues())
            .find(|q| q.name == queue)
            .ok_or_else(|| Error::UnknownQueue {
                queue: queue.to_owned(),
            })
    }

    /// Stops taking messages, lets running listeners finish (bounded by the shutdown
    /// timeout), acknowledges what they handled, returns the rest to the broker and
    /// closes the provider.
    pub async fn shutdown(&self) -> Result<()> {
        let previous = std::mem::replace(&mut *self.inner.state.lock(), State::Stopped);
        self.inner.stopped.store(true, Ordering::Relaxed);
        let subscriptions = self.inner.subscriptions.close();
        if let State::Running { stop, tasks, .. } = previous {
            let _ = stop.send(true);
            for task in tasks {
                if let Err(error) = task.await {
                    tracing::error!(%error, "listener task ended abnormally");
                }
            }
        }
        subscriptions.wait().await;
        self.inner.provider.close().await
    }

    /// The queues declared by `start()`, and those of the run-time subscriptions
    /// running now.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut declared = match &*self.inner.state.lock() {
            State::Running { queues, .. } => queues.clone(),
            _ => Vec::new(),
        };
        declared.extend(self.inner.subscriptions.started_queues());
        declared
    }
}

impl Inner {
    fn address(&self, event: &'static EventDescriptor) -> Result<Arc<str>> {
        let key = event as *const EventDescriptor as usize;
        match self.addresses.get(&key) {
            Some(Ok(address)) => Ok(Arc::clone(address)),
            Some(Err(_)) | None => registry::resolve_name(event.name(), &self.vars).map(Arc::from),
        }
    }

    fn options_for(&self, listener: &ListenerDescriptor) -> ListenerOptions {
        self.overrides
            .get(listener.name())
            .cloned()
            .unwrap_or_else(|| self.defaults.clone())
    }

    /// The listeners this manager runs, with their queues and bound instances.
    fn plan(&self) -> Result<Vec<Planned>> {
        let mut plan = Vec::new();
        for descriptor in registry::listeners() {
            let type_id = (descriptor.type_id)();
            let instance = self
                .instances
                .iter()
                .find(|(id, _)| *id == type_id)
                .map(|(_, instance)| Arc::clone(instance));
            let selected = match &self.selected {
                None => true,
                Some(types) => types.iter().any(|t| descriptor.is_type(*t)),
            };
            if !selected {
                continue;
            }
            let event = descriptor.event();
            let address = self.address(event)?;
            let queue = if descriptor.singleton() {
                QueueSpec::singleton(&address, descriptor.name(), event.durable())
            } else {
                QueueSpec::new(
                    &address,
                    descriptor.name(),
                    event.durable(),
                    descriptor.per_process(),
                    &self.server,
                )
            };
            let queue = queue.with_retry_delays(&self.options_for(descriptor).retry.delays);
            plan.push(Planned {
                descriptor,
                queue,
                instance,
            });
        }
        Ok(plan)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without shutdown(): stop the listeners; the provider puts back what
        // they had not acknowledged.
        if let State::Running { tasks, .. } = &*self.state.lock() {
            for task in tasks {
                task.abort();
            }
        }
    }
}
