//! The in-process provider: a small broker in memory with the semantics of the real
//! ones (fanout per event, competing consumers with round-robin dispatch, prefetch,
//! acknowledgements, redelivery of unacknowledged messages when a consumer goes away,
//! dead-letter queues), so tests that pass here mean something on a broker.
//!
//! Delayed delivery (the delayed retry stage and scheduled sends) waits on timers
//! of the broker: one thread per broker, running only while something waits, so a
//! consumer dropped in between loses nothing. Like everything here, waiting
//! messages live in this process.
//!
//! Several [`EventManager`](crate::EventManager)s sharing one provider (clone it, or
//! use the same `memory://name` URL) stand in for several servers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tokio::sync::{Notify, mpsc};

use crate::envelope::Envelope;
use crate::error::Result;
use crate::provider::{
    Acker, Capabilities, ConnectFuture, ConsumeOptions, Consumer, Delivery, DynProvider,
    ProviderConfig, Route,
};
use crate::topology::QueueSpec;

/// The in-process provider. Cloning shares the broker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
/// use eventing::EventManager;
/// use eventing::memory::MemoryProvider;
/// let broker = MemoryProvider::new();
/// let server_a = EventManager::builder().provider(broker.clone()).server_name("a").build().await?;
/// let server_b = EventManager::builder().provider(broker.clone()).server_name("b").build().await?;
/// # drop((server_a, server_b)); Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryProvider {
    broker: Arc<Broker>,
}

/// How many ready messages a queue holds before publishers wait (flow control, as a
/// broker blocks publishers): the default of [`MemoryProvider::with_limits`].
pub const DEFAULT_MAX_QUEUE_LEN: usize = 10_000;

struct Broker {
    /// Event address -> the queues bound to it.
    exchanges: RwLock<HashMap<String, Vec<Arc<Queue>>, rustc_hash::FxBuildHasher>>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    max_queue_len: usize,
    publish_timeout: Duration,
    /// False during a simulated outage.
    available: AtomicBool,
    back: Notify,
    /// Messages waiting for their time (delayed retries, scheduled sends).
    timers: Timers,
}

impl Default for Broker {
    fn default() -> Self {
        Self {
            exchanges: RwLock::default(),
            queues: Mutex::default(),
            max_queue_len: DEFAULT_MAX_QUEUE_LEN,
            publish_timeout: Duration::from_secs(30),
            available: AtomicBool::new(true),
            back: Notify::new(),
            timers: Timers::default(),
        }
    }
}

/// Where a waiting message goes when its time comes.
enum Due {
    /// Back onto one queue (a delayed retry).
    Queue(Arc<Queue>),
    /// To every queue bound to an address (a scheduled send).
    Address(String),
}

struct Timer {
    at: std::time::Instant,
    seq: u64,
    to: Due,
    envelope: Envelope,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The broker's timers: a heap of waiting messages and a thread that delivers
/// them when due, started when the first message waits and ending when none does.
#[derive(Default)]
struct Timers {
    state: Mutex<TimerState>,
    wake: parking_lot::Condvar,
}

#[derive(Default)]
struct TimerState {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Timer>>,
    seq: u64,
    running: bool,
}

impl Broker {
    /// Holds `envelope` for `delay`, then delivers it to `to`.
    fn after(self: &Arc<Self>, delay: Duration, to: Due, envelope: Envelope) {
        let at = std::time::Instant::now() + delay;
        let mut state = self.timers.state.lock();
        state.seq += 1;
        let seq = state.seq;
        state.heap.push(std::cmp::Reverse(Timer {
            at,
            seq,
            to,
            envelope,
        }));
        if state.running {
            drop(state);
            self.timers.wake.notify_one();
            return;
        }
        state.running = true;
        drop(state);
        let broker = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("eventing-memory-timers".into())
            .spawn(move || broker.run_timers());
        if let Err(error) = spawned {
            // Without a thread nothing would ever be delivered: deliver now rather
            // than lose the messages.
            tracing::error!(%error, "cannot start the timer thread; delivering at once");
            self.timers.state.lock().running = false;
            self.fire_all();
        }
    }

    fn fire_all(&self) {
        let due: Vec<Timer> = std::mem::take(&mut self.timers.state.lock().heap)
            .into_iter()
            .map(|t| t.0)
            .collect();
        for timer in due {
            self.deliver(timer);
        }
    }

    /// The timer thread: delivers what is due, sleeps until the next, ends when
    /// nothing waits.
    fn run_timers(&self) {
        let mut state = self.timers.state.lock();
        loop {
            let Some(std::cmp::Reverse(next)) = state.heap.peek() else {
                state.running = false;
                return;
            };
            let at = next.at;
            if at > std::time::Instant::now() {
                self.timers.wake.wait_until(&mut state, at);
                continue;
            }
            let Some(std::cmp::Reverse(timer)) = state.heap.pop() else {
                continue;
            };
            drop(state);
            self.deliver(timer);
            state = self.timers.state.lock();
        }
    }

    fn deliver(&self, timer: Timer) {
        match timer.to {
            Due::Queue(queue) => queue.push(timer.envelope, false),
            Due::Address(address) => {
                let exchanges = self.exchanges.read();
                for queue in exchanges.get(&address).map(Vec::as_slice).unwrap_or(&[]) {
                    queue.push(timer.envelope.clone(), false);
                }
            }
        }
    }
}

struct Queue {
    name: String,
    per_process: bool,
    dead_letters: Option<Arc<Queue>>,
    max_len: usize,
    state: Mutex<QueueState>,
    /// Publishers waiting for room.
    waiting: AtomicUsize,
    room: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<(Envelope, bool)>,
    consumers: Vec<Slot>,
    next_consumer: usize,
    /// Unsettled deliveries by tag: slot `tag - first_unacked`.
    unacked: VecDeque<Option<(u64, Envelope)>>,
    first_unacked: u64,
    next_tag: u64,
    next_consumer_id: u64,
    deleted: bool,
}

struct Slot {
    id: u64,
    credit: u32,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    acker: Arc<MemoryAcker>,
}

impl MemoryProvider {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new broker whose queues hold at most `max_queue_len` ready messages; a
    /// publisher to a full queue waits up to `publish_timeout`, then gets
    /// [`Error::Unavailable`](crate::Error::Unavailable).
    pub fn with_limits(max_queue_len: usize, publish_timeout: Duration) -> Self {
        Self {
            broker: Arc::new(Broker {
                max_queue_len: max_queue_len.max(1),
                publish_timeout,
                ..Broker::default()
            }),
        }
    }

    /// The broker registered under `name` in this process (created on first use);
    /// this is what the URL `memory://name` connects to (`memory://` is `"default"`).
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryProvider>>> = OnceLock::new();
        NAMED
            .get_or_init(Default::default)
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The names of the queues that exist, dead-letter queues included, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.broker.queues.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// How many messages wait in `queue` (ready, not counting unacknowledged ones).
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        let queue = self.broker.queues.lock().get(queue).cloned()?;
        let depth = queue.state.lock().ready.len();
        Some(depth)
    }

    /// Simulates losing (`false`) and regaining (`true`) the broker, for tests of
    /// what users' code does in an outage. Going down ends every consumer's stream
    /// as a lost connection does (their unacknowledged messages go back to their
    /// queues); while down, declaring and subscribing fail and publishes wait.
    pub fn set_available(&self, available: bool) {
        self.broker.available.store(available, Ordering::SeqCst);
        if available {
            self.broker.back.notify_waiters();
            return;
        }
        let queues: Vec<Arc<Queue>> = self.broker.queues.lock().values().cloned().collect();
        for queue in queues {
            let consumers: Vec<(u64, Arc<MemoryAcker>)> = queue
                .state
                .lock()
                .consumers
                .iter()
                .map(|c| (c.id, Arc::clone(&c.acker)))
                .collect();
            for (id, acker) in consumers {
                // Acks the consumer collected count as sent: only what it had not
                // handled goes back.
                acker.flush();
                queue.remove_consumer(id, true);
            }
        }
    }

    fn check_available(&self) -> Result<()> {
        if self.broker.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(crate::Error::Unavailable {
                provider: "memory",
                reason: "the in-process broker is down (set_available(false))".into(),
            })
        }
    }

    fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.broker.queues.lock().get(name).cloned()
    }

    fn delete_queue(&self, queue: &Arc<Queue>) {
        self.broker.queues.lock().remove(&queue.name);
        for bound in self.broker.exchanges.write().values_mut() {
            bound.retain(|q| !Arc::ptr_eq(q, queue));
        }
    }
}

impl Queue {
    fn new(
        name: String,
        per_process: bool,
        dead_letters: Option<Arc<Queue>>,
        max_len: usize,
    ) -> Self {
        Self {
            name,
            per_process,
            dead_letters,
            max_len,
            state: Mutex::new(QueueState::default()),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// Enqueues regardless of the length limit (redeliveries, dead letters).
    fn push(&self, envelope: Envelope, redelivered: bool) {
        let mut state = self.state.lock();
        if state.deleted {
            return;
        }
        state.ready.push_back((envelope, redelivered));
        state.dispatch();
    }

    /// Enqueues if the queue has room.
    fn try_publish(&self, envelope: Envelope) -> Result<(), Envelope> {
        let mut state = self.state.lock();
        if state.deleted {
            return Ok(());
        }
        if state.ready.len() >= self.max_len {
            return Err(envelope);
        }
        state.ready.push_back((envelope, false));
        state.dispatch();
        Ok(())
    }

    /// Enqueues, waiting for room up to `limit`.
    async fn publish(&self, mut envelope: Envelope, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let room = self.room.notified();
            match self.try_publish(envelope) {
                Ok(()) => break Ok(()),
                Err(back) => envelope = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                break Err(crate::Error::Unavailable {
                    provider: "memory",
                    reason: format!(
                        "queue `{}` is full ({} messages) and did not drain within {limit:?}",
                        self.name, self.max_len
                    ),
                });
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Wakes waiting publishers once the queue has drained to half its limit, so a
    /// full queue costs one wake-up per batch rather than one per message.
    fn signal_room(&self, ready: usize) {
        if ready <= self.max_len / 2 && self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Acknowledges several deliveries under one lock.
    ///
    /// The settled copies are freed after the lock is released, so publishers do not
    /// wait on a batch of frees.
    fn settle_many(&self, tags: &[u64]) {
        let mut settled: SmallVec<[Envelope; ACK_BATCH]> = SmallVec::new();
        let mut state = self.state.lock();
        for &tag in tags {
            let Some((consumer, envelope)) = state.take_unacked_untrimmed(tag) else {
                continue;
            };
            settled.push(envelope);
            if let Some(slot) = state.consumers.iter_mut().find(|s| s.id == consumer) {
                slot.credit += 1;
            }
        }
        state.trim_unacked();
        state.dispatch();
        let ready = state.ready.len();
        drop(state);
        drop(settled);
        self.signal_room(ready);
    }

    fn settle(&self, tag: u64, requeue: bool) {
        let mut state = self.state.lock();
        let Some((consumer, envelope)) = state.take_unacked(tag) else {
            return;
        };
        if let Some(slot) = state.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.credit += 1;
        }
        if requeue {
            state.ready.push_front((envelope, true));
        }
        state.dispatch();
        let ready = state.ready.len();
        drop(state);
        self.signal_room(ready);
    }

    /// Removes a consumer; with `requeue_unacked` its unsettled messages go back to
    /// the front of the queue. Returns true if no consumer is left.
    fn remove_consumer(&self, id: u64, requeue_unacked: bool) -> bool {
        let mut state = self.state.lock();
        state.consumers.retain(|slot| slot.id != id);
        if requeue_unacked {
            let mut returned = Vec::new();
            for slot in state.unacked.iter_mut() {
                if matches!(slot, Some((consumer, _)) if *consumer == id) {
                    if let Some((_, envelope)) = slot.take() {
                        returned.push(envelope);
                    }
                }
            }
            state.trim_unacked();
            // Oldest first at the front, as a broker requeues them.
            for envelope in returned.into_iter().rev() {
                state.ready.push_front((envelope, true));
            }
        }
        state.dispatch();
        let (ready, empty) = (state.ready.len(), state.consumers.is_empty());
        drop(state);
        self.signal_room(ready);
        empty
    }
}

impl QueueState {
    fn take_unacked(&mut self, tag: u64) -> Option<(u64, Envelope)> {
        let taken = self.take_unacked_untrimmed(tag);
        self.trim_unacked();
        taken
    }

    /// Takes a delivery out of the unacked ring; the caller trims the ring after.
    fn take_unacked_untrimmed(&mut self, tag: u64) -> Option<(u64, Envelope)> {
        let index = usize::try_from(tag.checked_sub(self.first_unacked)?).ok()?;
        self.unacked.get_mut(index)?.take()
    }

    fn trim_unacked(&mut self) {
        while matches!(self.unacked.front(), Some(None)) {
            self.unacked.pop_front();
            self.first_unacked += 1;
        }
        if self.unacked.is_empty() {
            self.first_unacked = self.next_tag;
        }
    }

    /// Hands ready messages to consumers with credit, round-robin.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let count = self.consumers.len();
            let index = if count == 1 {
                // One consumer (the usual case): no round-robin arithmetic.
                if self.consumers[0].credit == 0 {
                    return;
                }
                0
            } else {
                let start = self.next_consumer % count;
                let Some(index) = (0..count)
                    .map(|i| (start + i) % count)
                    .find(|&i| self.consumers[i].credit > 0)
                else {
                    return;
                };
                index
            };
            let Some((envelope, redelivered)) = self.ready.pop_front() else {
                return;
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            let slot = &mut self.consumers[index];
            let delivery = Delivery {
                envelope: envelope.clone(),
                tag,
                redelivered,
                acker: Arc::clone(&slot.acker) as Arc<dyn Acker>,
            };
            if slot.tx.send(Ok(delivery)).is_err() {
                // The consumer is gone without saying so; keep the message.
                self.consumers.remove(index);
                self.ready.push_front((envelope, redelivered));
                continue;
            }
            slot.credit -= 1;
            let consumer = slot.id;
            debug_assert_eq!(self.first_unacked + self.unacked.len() as u64, tag);
            self.unacked.push_back(Some((consumer, envelope)));
            self.next_consumer = index + 1;
        }
    }
}

/// A publish that completed synchronously.
struct Published;

impl Future for Published {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

/// Acknowledgements collected before they are applied under one queue lock.
const ACK_BATCH: usize = 64;

/// Settles one consumer's deliveries. Acks are batched: they are applied when the
/// batch is full and whenever the consumer finds nothing buffered and is about to
/// wait, so credit comes back before the consumer waits (and at cancel and drop).
struct MemoryAcker {
    queue: Arc<Queue>,
    /// For its timers (weak: the broker holds the queue that holds this acker).
    broker: std::sync::Weak<Broker>,
    pending: Mutex<SmallVec<[u64; ACK_BATCH]>>,
}

impl MemoryAcker {
    fn flush(&self) {
        let mut pending = self.pending.lock();
        if pending.is_empty() {
            // Nothing to settle (the usual case when the consumer keeps up): do not
            // move the whole inline batch out.
            return;
        }
        let tags = std::mem::take(&mut *pending);
        drop(pending);
        self.queue.settle_many(&tags);
    }
}

impl Acker for MemoryAcker {
    fn ack(&self, tag: u64) {
        let mut pending = self.pending.lock();
        pending.push(tag);
        if pending.len() >= ACK_BATCH {
            let tags = std::mem::take(&mut *pending);
            drop(pending);
            self.queue.settle_many(&tags);
        }
    }

    fn requeue(&self, tag: u64) {
        self.flush();
        self.queue.settle(tag, true);
    }

    fn dead_letter(&self, tag: u64, envelope: Envelope) -> BoxFuture<'static, Result<()>> {
        self.flush();
        if let Some(dlq) = &self.queue.dead_letters {
            dlq.push(envelope, false);
        }
        self.queue.settle(tag, false);
        Box::pin(std::future::ready(Ok(())))
    }

    fn delay(
        &self,
        tag: u64,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<()>> {
        let Some(broker) = self.broker.upgrade() else {
            return Box::pin(std::future::ready(Err(crate::Error::Unavailable {
                provider: "memory",
                reason: "the in-process broker is gone".into(),
            })));
        };
        self.flush();
        broker.after(delay, Due::Queue(Arc::clone(&self.queue)), envelope);
        self.queue.settle(tag, false);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct MemoryConsumer {
    provider: MemoryProvider,
    queue: Arc<Queue>,
    acker: Arc<MemoryAcker>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Result<Delivery>>,
}

impl Stream for MemoryConsumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Settle collected acks only when nothing is buffered: under load they go
        // in batches, and credit still comes back before the consumer waits.
        if let Poll::Ready(item) = self.rx.poll_recv(cx) {
            return Poll::Ready(item);
        }
        self.acker.flush();
        self.rx.poll_recv(cx)
    }
}

impl Consumer for MemoryConsumer {
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        // Dropping the slot drops its sender: the stream ends after what it buffered.
        self.acker.flush();
        self.queue.remove_consumer(self.id, false);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        // Whatever this consumer did not settle goes back, as a broker does when a
        // channel closes.
        self.acker.flush();
        let empty = self.queue.remove_consumer(self.id, true);
        if empty && self.queue.per_process {
            self.queue.state.lock().deleted = true;
            self.provider.delete_queue(&self.queue);
        }
    }
}

/// Implemented directly in its object-safe form: a publish that completes at once
/// returns a zero-sized future, so the hot path does not allocate for it.
impl DynProvider for MemoryProvider {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_dead_letters().with_delayed()
    }

    fn broker_names(&self, _: &QueueSpec) -> Option<String> {
        None
    }

    fn declare<'a>(&'a self, queues: &'a [QueueSpec]) -> BoxFuture<'a, Result<()>> {
        if let Err(error) = self.check_available() {
            return Box::pin(std::future::ready(Err(error)));
        }
        for spec in queues {
            let queue = {
                let mut all = self.broker.queues.lock();
                if let Some(queue) = all.get(&spec.name) {
                    Arc::clone(queue)
                } else {
                    let dlq_name = spec.dead_letter_queue();
                    let dlq = Arc::clone(all.entry(dlq_name.clone()).or_insert_with(|| {
                        Arc::new(Queue::new(dlq_name, false, None, usize::MAX))
                    }));
                    let queue = Arc::new(Queue::new(
                        spec.name.clone(),
                        spec.per_process,
                        Some(dlq),
                        self.broker.max_queue_len,
                    ));
                    all.insert(spec.name.clone(), Arc::clone(&queue));
                    queue
                }
            };
            let mut exchanges = self.broker.exchanges.write();
            let bound = exchanges.entry(spec.event.clone()).or_default();
            if !bound.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                bound.push(queue);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish<'a>(&'a self, route: Route<'a>, envelope: Envelope) -> BoxFuture<'a, Result<()>> {
        if !self.broker.available.load(Ordering::SeqCst) {
            // Wait for the broker to come back; the manager's send timeout bounds it.
            return Box::pin(async move {
                loop {
                    let back = self.broker.back.notified();
                    if self.broker.available.load(Ordering::SeqCst) {
                        break;
                    }
                    back.await;
                }
                self.publish(route, envelope).await
            });
        }
        // Fast path: every bound queue has room. Full ones are waited for after the
        // exchange lock is released.
        let mut full: SmallVec<[(Arc<Queue>, Envelope); 2]> = SmallVec::new();
        {
            let exchanges = self.broker.exchanges.read();
            match exchanges.get(route.address).map(Vec::as_slice) {
                Some([]) | None => {
                    tracing::debug!(
                        address = route.address,
                        "no queue is bound; message not routed"
                    );
                }
                Some([queue]) => {
                    if let Err(back) = queue.try_publish(envelope) {
                        full.push((Arc::clone(queue), back));
                    }
                }
                Some(queues) => {
                    for queue in queues {
                        if let Err(back) = queue.try_publish(envelope.clone()) {
                            full.push((Arc::clone(queue), back));
                        }
                    }
                }
            }
        }
        if full.is_empty() {
            // Zero-sized, so boxing it does not allocate.
            return Box::pin(Published);
        }
        let limit = self.broker.publish_timeout;
        Box::pin(async move {
            for (queue, envelope) in full {
                queue.publish(envelope, limit).await?;
            }
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a QueueSpec,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        Box::pin(async move {
            self.check_available()?;
            let queue = match self.queue(&spec.name) {
                Some(queue) => queue,
                None => {
                    self.declare(std::slice::from_ref(spec)).await?;
                    self.queue(&spec.name)
                        .ok_or_else(|| crate::Error::QueueNotFound {
                            queue: spec.name.clone(),
                        })?
                }
            };
            Ok(Box::new(self.consume(queue, options.prefetch)) as Box<dyn Consumer>)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letters<'a>(
        &'a self,
        spec: &'a QueueSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>> {
        let letters = self
            .queue(&spec.dead_letter_queue())
            .map(|dlq| {
                let state = dlq.state.lock();
                state
                    .ready
                    .iter()
                    .take(limit)
                    .map(|(e, _)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(letters)))
    }

    fn dead_letter_depth<'a>(&'a self, spec: &'a QueueSpec) -> BoxFuture<'a, Result<usize>> {
        let depth = match self.queue(&spec.name) {
            None => Err(crate::Error::QueueNotFound {
                queue: spec.name.clone(),
            }),
            Some(_) => Ok(self
                .queue(&spec.dead_letter_queue())
                .map_or(0, |dlq| dlq.state.lock().ready.len())),
        };
        Box::pin(std::future::ready(depth))
    }

    fn take_dead_letters<'a>(
        &'a self,
        spec: &'a QueueSpec,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        let taken = match self.queue(&spec.dead_letter_queue()) {
            Some(dlq) => Ok(Box::new(self.consume(dlq, prefetch)) as Box<dyn Consumer>),
            None => Err(crate::Error::QueueNotFound {
                queue: spec.dead_letter_queue(),
            }),
        };
        Box::pin(std::future::ready(taken))
    }

    fn send_to_queue<'a>(
        &'a self,
        spec: &'a QueueSpec,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>> {
        let sent = match self.queue(&spec.name) {
            Some(queue) => {
                queue.push(envelope, false);
                Ok(())
            }
            None => Err(crate::Error::QueueNotFound {
                queue: spec.name.clone(),
            }),
        };
        Box::pin(std::future::ready(sent))
    }

    /// A timer of the broker; when it fires, the message goes to the queues bound
    /// to the address then (ignoring their length limit, as redeliveries do).
    fn publish_delayed<'a>(
        &'a self,
        route: Route<'a>,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<()>> {
        let result = self.check_available().map(|()| {
            self.broker
                .after(delay, Due::Address(route.address.to_string()), envelope);
        });
        Box::pin(std::future::ready(result))
    }
}

impl MemoryProvider {
    /// A consumer of `queue` with `prefetch` credit.
    fn consume(&self, queue: Arc<Queue>, prefetch: u16) -> MemoryConsumer {
        let (tx, rx) = mpsc::unbounded_channel();
        let acker = Arc::new(MemoryAcker {
            queue: Arc::clone(&queue),
            broker: Arc::downgrade(&self.broker),
            pending: Mutex::new(SmallVec::new()),
        });
        let id = {
            let mut state = queue.state.lock();
            state.deleted = false;
            let id = state.next_consumer_id;
            state.next_consumer_id += 1;
            state.consumers.push(Slot {
                id,
                credit: u32::from(prefetch.max(1)),
                tx,
                acker: Arc::clone(&acker),
            });
            state.dispatch();
            let ready = state.ready.len();
            drop(state);
            queue.signal_room(ready);
            id
        };
        MemoryConsumer {
            provider: self.clone(),
            queue,
            acker,
            id,
            rx,
        }
    }
}

fn connect(config: ProviderConfig) -> ConnectFuture {
    Box::pin(async move {
        let rest = config
            .url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or("");
        let name = rest.trim_end_matches('/');
        let name = if name.is_empty() { "default" } else { name };
        Ok(Arc::new(MemoryProvider::named(name)) as Arc<dyn DynProvider>)
    })
}

crate::register_provider!(["memory"], connect);
