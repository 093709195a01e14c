//! The reference provider: the template a new transport copies.
//!
//! It is a plain broker in memory, written for reading rather than speed (one lock
//! for the whole broker; the tuned in-process broker is `eventing::memory::MemoryProvider`).
//! What it shows is the shape every provider has:
//!
//! - [`Provider`] is a handful of `async fn`s: `declare` the queues of a topology,
//!   `publish` to an address, `subscribe` to a queue, and the optional dead-letter
//!   primitives announced by [`capabilities`](Provider::capabilities);
//! - a subscription is a [`Stream`] of [`Delivery`]s, each settled through an
//!   [`Acker`] (`ack`, `requeue`, `dead_letter`);
//! - a lost connection ends the stream without `cancel`: the runtime then declares
//!   and subscribes again with backoff ([`ReferenceProvider::restart`] simulates it);
//! - the factory registered with [`eventing::register_provider!`] makes it reachable
//!   by URL: `reference://<name>`.
//!
//! Everything else (serialization, pipelines, retries, dead-letter decisions and
//! headers, replay, concurrency, shutdown) is the runtime's. It passes the whole
//! conformance kit (`eventing-test`); see `tests/kit.rs`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
//! use eventing_reference as _; // links the `reference://` factory
//! let manager = eventing::EventManager::builder().url("reference://doc").build().await?;
//! manager.start().await?;
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use eventing::provider::{
    Acker, Capabilities, ConnectFuture, ConsumeOptions, Consumer, Delivery, Provider,
    ProviderConfig, Route,
};
use eventing::topology::QueueSpec;
use eventing::{BoxFuture, Envelope, Error, Result};
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

const NAME: &str = "reference";

/// A broker in memory. Cloning shares it; `reference://<name>` URLs share the one
/// registered under that name in this process.
#[derive(Clone, Default)]
pub struct ReferenceProvider {
    broker: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Broker>,
    /// Woken when the broker comes back after [`ReferenceProvider::restart`].
    back: Notify,
    /// Woken when a queue has room again.
    room: Notify,
}

#[derive(Default)]
struct Broker {
    down: bool,
    /// Event address -> the names of the queues bound to it.
    bindings: HashMap<String, Vec<String>>,
    queues: HashMap<String, Queue>,
    next_tag: u64,
    next_consumer: u64,
}

/// The most ready messages a queue holds before publishers wait.
const MAX_READY: usize = 10_000;

#[derive(Default)]
struct Queue {
    per_process: bool,
    /// Messages waiting, with "delivered before".
    ready: VecDeque<(Envelope, bool)>,
    /// Delivered and not settled: tag -> (consumer, message).
    unacked: HashMap<u64, (u64, Envelope)>,
    consumers: Vec<Subscriber>,
    /// Round-robin position among the consumers.
    turn: usize,
}

struct Subscriber {
    id: u64,
    prefetch: usize,
    in_flight: usize,
    tx: mpsc::UnboundedSender<Delivery>,
}

impl ReferenceProvider {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The broker registered under `name` in this process (created on first use).
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, ReferenceProvider>>> = OnceLock::new();
        NAMED
            .get_or_init(Default::default)
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Simulates a broker restart: every subscription ends as on a lost connection
    /// (its unsettled messages go back to their queues), and for `outage` declaring
    /// and subscribing fail and publishes wait. Queued messages stay.
    pub async fn restart(&self, outage: Duration) {
        {
            let mut broker = self.broker.state.lock();
            broker.down = true;
            for queue in broker.queues.values_mut() {
                let ids: Vec<u64> = queue.consumers.iter().map(|c| c.id).collect();
                for id in ids {
                    queue.remove_consumer(id);
                }
            }
        }
        tokio::time::sleep(outage).await;
        self.broker.state.lock().down = false;
        self.broker.back.notify_waiters();
    }

    fn up(&self) -> Result<parking_lot::MutexGuard<'_, Broker>> {
        let broker = self.broker.state.lock();
        if broker.down {
            return Err(Error::Unavailable {
                provider: NAME,
                reason: "the broker is restarting".into(),
            });
        }
        Ok(broker)
    }

    /// Waits until the broker is up (the manager's send timeout bounds it).
    async fn wait_up(&self) {
        loop {
            let back = self.broker.back.notified();
            if !self.broker.state.lock().down {
                return;
            }
            back.await;
        }
    }

    fn acker(&self, queue: &str) -> Arc<dyn Acker> {
        Arc::new(Settle {
            provider: self.clone(),
            queue: queue.to_owned(),
        })
    }

    /// A subscription to the queue named `queue`.
    fn consume(
        &self,
        broker: &mut Broker,
        queue: &str,
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>> {
        broker.next_consumer += 1;
        let id = broker.next_consumer;
        let (tx, rx) = mpsc::unbounded_channel();
        let acker = self.acker(queue);
        let Broker {
            queues, next_tag, ..
        } = broker;
        let q = queues.get_mut(queue).ok_or_else(|| Error::QueueNotFound {
            queue: queue.to_owned(),
        })?;
        q.consumers.push(Subscriber {
            id,
            prefetch: usize::from(prefetch.max(1)),
            in_flight: 0,
            tx,
        });
        q.dispatch(next_tag, &acker);
        Ok(Box::new(Subscription {
            provider: self.clone(),
            queue: queue.to_owned(),
            id,
            rx,
        }))
    }
}

impl Queue {
    /// Hands ready messages to consumers with room, in turn.
    fn dispatch(&mut self, next_tag: &mut u64, acker: &Arc<dyn Acker>) {
        while !self.ready.is_empty() {
            let n = self.consumers.len();
            let Some(pick) = (0..n)
                .map(|i| (self.turn + i) % n)
                .find(|&i| self.consumers[i].in_flight < self.consumers[i].prefetch)
            else {
                return;
            };
            self.turn = pick + 1;
            let Some((envelope, redelivered)) = self.ready.pop_front() else {
                return;
            };
            *next_tag += 1;
            let tag = *next_tag;
            let consumer = &mut self.consumers[pick];
            let delivery =
                Delivery::new(envelope.clone(), tag, Arc::clone(acker)).redelivered(redelivered);
            if consumer.tx.send(delivery).is_ok() {
                consumer.in_flight += 1;
                self.unacked.insert(tag, (consumer.id, envelope));
            } else {
                // The subscriber is gone: put the message back and forget it.
                self.ready.push_front((envelope, redelivered));
                let id = consumer.id;
                self.remove_consumer(id);
            }
        }
    }

    /// Removes a consumer; what it had not settled goes back to the front, in order.
    fn remove_consumer(&mut self, id: u64) {
        self.consumers.retain(|c| c.id != id);
        let mut returned: Vec<(u64, Envelope)> = self
            .unacked
            .iter()
            .filter(|(_, (owner, _))| *owner == id)
            .map(|(tag, (_, envelope))| (*tag, envelope.clone()))
            .collect();
        returned.sort_by_key(|(tag, _)| *tag);
        for (tag, envelope) in returned.into_iter().rev() {
            self.unacked.remove(&tag);
            self.ready.push_front((envelope, true));
        }
    }

    /// Takes a delivery out of the unsettled set, returning its consumer's credit.
    fn settle(&mut self, tag: u64) -> Option<Envelope> {
        let (owner, envelope) = self.unacked.remove(&tag)?;
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == owner) {
            consumer.in_flight -= 1;
        }
        Some(envelope)
    }
}

impl Provider for ReferenceProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_dead_letters().with_delayed()
    }

    async fn declare(&self, specs: &[QueueSpec]) -> Result<()> {
        let mut broker = self.up()?;
        for spec in specs {
            broker.queues.entry(spec.dead_letter_queue()).or_default();
            broker
                .queues
                .entry(spec.name.clone())
                .or_insert_with(|| Queue {
                    per_process: spec.per_process,
                    ..Queue::default()
                });
            let bound = broker.bindings.entry(spec.event.clone()).or_default();
            if !bound.contains(&spec.name) {
                bound.push(spec.name.clone());
            }
        }
        Ok(())
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> Result<()> {
        loop {
            self.wait_up().await;
            let room = self.broker.room.notified();
            {
                let mut broker = self.broker.state.lock();
                if broker.down {
                    continue;
                }
                let targets = broker
                    .bindings
                    .get(route.address)
                    .cloned()
                    .unwrap_or_default();
                let full = targets.iter().any(|name| {
                    broker
                        .queues
                        .get(name)
                        .is_some_and(|q| q.ready.len() >= MAX_READY)
                });
                if !full {
                    let Broker {
                        queues, next_tag, ..
                    } = &mut *broker;
                    for name in &targets {
                        if let Some(queue) = queues.get_mut(name) {
                            queue.ready.push_back((envelope.clone(), false));
                            queue.dispatch(next_tag, &self.acker(name));
                        }
                    }
                    return Ok(());
                }
            }
            // Flow control: a full queue makes publishers wait for room.
            room.await;
        }
    }

    async fn subscribe(
        &self,
        spec: &QueueSpec,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Consumer>> {
        // Subscribing declares the queue if needed, as brokers' consumers usually do.
        Provider::declare(self, std::slice::from_ref(spec)).await?;
        let mut broker = self.up()?;
        self.consume(&mut broker, &spec.name, options.prefetch)
    }

    async fn dead_letters(&self, spec: &QueueSpec, limit: usize) -> Result<Vec<Envelope>> {
        let broker = self.up()?;
        Ok(broker
            .queues
            .get(&spec.dead_letter_queue())
            .map(|dlq| {
                dlq.ready
                    .iter()
                    .take(limit)
                    .map(|(e, _)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn dead_letter_depth(&self, spec: &QueueSpec) -> Result<usize> {
        let broker = self.up()?;
        if !broker.queues.contains_key(&spec.name) {
            return Err(Error::QueueNotFound {
                queue: spec.name.clone(),
            });
        }
        Ok(broker
            .queues
            .get(&spec.dead_letter_queue())
            .map_or(0, |dlq| dlq.ready.len()))
    }

    async fn take_dead_letters(
        &self,
        spec: &QueueSpec,
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>> {
        let mut broker = self.up()?;
        self.consume(&mut broker, &spec.dead_letter_queue(), prefetch)
    }

    async fn send_to_queue(&self, spec: &QueueSpec, envelope: Envelope) -> Result<()> {
        let mut broker = self.up()?;
        let Broker {
            queues, next_tag, ..
        } = &mut *broker;
        let queue = queues
            .get_mut(&spec.name)
            .ok_or_else(|| Error::QueueNotFound {
                queue: spec.name.clone(),
            })?;
        queue.ready.push_back((envelope, false));
        queue.dispatch(next_tag, &self.acker(&spec.name));
        Ok(())
    }

    /// A timer task per waiting message, then an ordinary publish (a broker
    /// would keep them in its store; here they live as long as the runtime).
    async fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: Duration,
        envelope: Envelope,
    ) -> Result<()> {
        drop(self.up()?);
        let (provider, address, durable) = (self.clone(), route.address.to_owned(), route.durable);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let route = Route::new(&address, durable);
            if let Err(error) = Provider::publish(&provider, route, envelope).await {
                tracing::error!(%error, address, "scheduled send failed");
            }
        });
        Ok(())
    }
}

impl ReferenceProvider {
    /// Puts `envelope` onto the queue named `queue` (if it still exists).
    fn push(&self, queue: &str, envelope: Envelope) {
        let mut broker = self.broker.state.lock();
        let Broker {
            queues, next_tag, ..
        } = &mut *broker;
        if let Some(q) = queues.get_mut(queue) {
            q.ready.push_back((envelope, false));
            q.dispatch(next_tag, &self.acker(queue));
        }
    }
}

/// Settles the deliveries of one queue.
struct Settle {
    provider: ReferenceProvider,
    queue: String,
}

impl Settle {
    /// Settles `tag`; `then` decides what becomes of the message.
    fn settle(&self, tag: u64, then: impl FnOnce(&mut Broker, Envelope)) {
        let mut broker = self.provider.broker.state.lock();
        let Some(envelope) = broker
            .queues
            .get_mut(&self.queue)
            .and_then(|q| q.settle(tag))
        else {
            return; // settled already, or returned when its consumer went away
        };
        then(&mut broker, envelope);
        let Broker {
            queues, next_tag, ..
        } = &mut *broker;
        if let Some(queue) = queues.get_mut(&self.queue) {
            queue.dispatch(next_tag, &self.provider.acker(&self.queue));
        }
        drop(broker);
        self.provider.broker.room.notify_waiters();
    }
}

impl Acker for Settle {
    fn ack(&self, tag: u64) {
        self.settle(tag, |_, _| {});
    }

    fn requeue(&self, tag: u64) {
        let queue = self.queue.clone();
        self.settle(tag, move |broker, envelope| {
            if let Some(q) = broker.queues.get_mut(&queue) {
                q.ready.push_front((envelope, true));
            }
        });
    }

    fn dead_letter(&self, tag: u64, letter: Envelope) -> BoxFuture<'static, Result<()>> {
        let dlq = format!("{}.dlq", self.queue);
        self.settle(tag, move |broker, _original| {
            broker
                .queues
                .entry(dlq)
                .or_default()
                .ready
                .push_back((letter, false));
        });
        Box::pin(std::future::ready(Ok(())))
    }

    /// A timer task puts the copy back onto this queue alone when `delay` has
    /// passed; the original is settled at once.
    fn delay(&self, tag: u64, delay: Duration, copy: Envelope) -> BoxFuture<'static, Result<()>> {
        let (provider, queue) = (self.provider.clone(), self.queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            provider.push(&queue, copy);
        });
        self.settle(tag, |_, _| {});
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One subscription: deliveries arrive on a channel the broker fills.
struct Subscription {
    provider: ReferenceProvider,
    queue: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|d| d.map(Ok))
    }
}

impl Consumer for Subscription {
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        // No more deliveries: the stream ends after what it already holds.
        let mut broker = self.provider.broker.state.lock();
        if let Some(queue) = broker.queues.get_mut(&self.queue) {
            queue.consumers.retain(|c| c.id != self.id);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut broker = self.provider.broker.state.lock();
        let Broker {
            queues,
            bindings,
            next_tag,
            ..
        } = &mut *broker;
        let Some(queue) = queues.get_mut(&self.queue) else {
            return;
        };
        // What this subscription did not settle goes back, as a broker does when a
        // connection closes; cancelled subscriptions are already out of the list.
        queue.consumers.retain(|c| c.id != self.id);
        queue.remove_consumer(self.id);
        if queue.per_process && queue.consumers.is_empty() {
            // A per-process queue goes away with its server.
            queues.remove(&self.queue);
            for bound in bindings.values_mut() {
                bound.retain(|name| name != &self.queue);
            }
        } else {
            queue.dispatch(next_tag, &self.provider.acker(&self.queue));
        }
    }
}

fn connect(config: ProviderConfig) -> ConnectFuture {
    let name = config
        .url
        .split_once("://")
        .map_or("", |(_, rest)| rest.trim_end_matches('/'))
        .to_owned();
    Box::pin(async move {
        let name = if name.is_empty() { "default" } else { &name };
        Ok(ReferenceProvider::named(name).into_dyn())
    })
}

eventing::register_provider!(["reference"], connect);
