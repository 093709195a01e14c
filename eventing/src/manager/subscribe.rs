//! Run-time subscriptions: listeners added to a manager before or after `start()`
//! and removed again while it runs, and the list of every listener a manager runs.
//!
//! A subscription is a listener like a compiled one: the same queue rule
//! (`<event>::<name>`, `-<server>` when per process), the same consume loop
//! (prefetch, concurrency, retries, dead letters, draining), the same health,
//! topology and counters. Only its lifetime differs.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{EventManager, Inner, ListenerOptions, ListenerState, State, WeakManager, consume};
use crate::error::{Error, Result};
use crate::event::{Event, EventDescriptor};
use crate::listener::{
    ErasedListener, EventListener, FnListener, ListenerDescriptor, ListenerFn, ListenerOrigin,
};
use crate::provider::ConsumeOptions;
use crate::registry;
use crate::topology::QueueSpec;

/// How a run-time subscription listens: its kind, whether it may share the queue
/// of a listener with the same name, its limits and free-form metadata.
///
/// ```
/// use eventing::SubscribeOptions;
/// let options = SubscribeOptions::new()
///     .per_process(true)
///     .metadata("owner", "cache team");
/// assert!(options.is_per_process());
/// ```
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    per_process: bool,
    compete: bool,
    listener: Option<ListenerOptions>,
    metadata: Vec<(String, String)>,
}

impl SubscribeOptions {
    /// A competing subscription (instances with its name on all servers share one
    /// queue, `<event>::<name>`), with the manager's listener options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Broadcast: this server gets every event on a queue of its own,
    /// `<event>::<name>-<server>`, removed again by `unsubscribe`.
    #[must_use]
    pub fn per_process(mut self, per_process: bool) -> Self {
        self.per_process = per_process;
        self
    }

    /// Share the queue of a listener of the event with the same name (a compiled
    /// one, or another subscription) and compete with it for each event. Without
    /// it such a name is [`Error::ListenerNameTaken`]: an accidental collision
    /// would silently split one listener's events between two handlers.
    #[must_use]
    pub fn compete_with_existing(mut self) -> Self {
        self.compete = true;
        self
    }

    /// Prefetch, concurrency and retries for this subscription (default: the
    /// manager's options for its name).
    #[must_use]
    pub fn listener_options(mut self, options: ListenerOptions) -> Self {
        self.listener = Some(options);
        self
    }

    /// A free-form key and value shown by [`EventManager::subscriptions`].
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// True for a broadcast (per-process) subscription.
    pub fn is_per_process(&self) -> bool {
        self.per_process
    }
}

/// Identifies a run-time subscription of one manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The handle of a run-time subscription. Dropping it leaves the subscription
/// running (until [`EventManager::unsubscribe`] or `shutdown()`), as dropping a
/// tokio `JoinHandle` leaves its task running.
#[derive(Clone)]
pub struct Subscription {
    id: SubscriptionId,
    listener: &'static str,
    queue: String,
    manager: WeakManager,
}

impl Subscription {
    /// Its id, for [`EventManager::unsubscribe`].
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Its listener name.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops it: see [`EventManager::unsubscribe`].
    pub async fn unsubscribe(self) -> Result<()> {
        match self.manager.upgrade() {
            Some(manager) => manager.unsubscribe(self.id).await,
            None => Err(Error::ShutDown {
                operation: "unsubscribe()",
            }),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("listener", &self.listener)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// The kind of a listener, which decides its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerKind {
    /// Instances on all servers share `<event>::<listener>`.
    Competing,
    /// Every server has `<event>::<listener>-<server>`.
    PerProcess,
    /// Every singleton listener of the event shares `<event>::singleton`.
    Singleton,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Competing => "competing",
            Self::PerProcess => "per process",
            Self::Singleton => "singleton",
        })
    }
}

/// One listener of a manager, compiled or subscribed at run time
/// ([`EventManager::subscriptions`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// The listener name.
    pub listener: &'static str,
    /// The event's address.
    pub event: String,
    /// Its queue.
    pub queue: QueueSpec,
    /// Competing, per process or singleton.
    pub kind: ListenerKind,
    /// A type, a function, or a run-time subscription.
    pub origin: ListenerOrigin,
    /// The listener's type (for a subscription, the closure's or listener's type).
    pub type_name: &'static str,
    /// The subscription's id (`None` for compiled listeners).
    pub id: Option<SubscriptionId>,
    /// Prefetch, concurrency and retries.
    pub options: ListenerOptions,
    /// What [`SubscribeOptions::metadata`] gave (empty for compiled listeners).
    pub metadata: Vec<(String, String)>,
    /// What it is doing; `None` before `start()`.
    pub state: Option<ListenerState>,
}

/// A manager's run-time subscriptions.
#[derive(Default)]
pub(super) struct Subscriptions {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// `start()` ran: new subscriptions start at once.
    started: bool,
    /// `shutdown()` ran: no new subscriptions.
    closed: bool,
    entries: Vec<Entry>,
}

struct Entry {
    id: SubscriptionId,
    descriptor: &'static ListenerDescriptor,
    queue: QueueSpec,
    handler: Arc<dyn ErasedListener>,
    options: ListenerOptions,
    metadata: Vec<(String, String)>,
    run: Option<Run>,
}

/// A started subscription: its consume loop and the switch that stops it.
struct Run {
    active: Arc<consume::Active>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Run {
    /// Stops the loop and waits for it: no more deliveries are taken, buffered
    /// ones go back, running calls finish (bounded by the shutdown timeout) and
    /// are acknowledged, the consumer is cancelled and dropped.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, queue = %self.active.queue.name, "subscription task ended abnormally");
        }
    }
}

/// What `close` hands to `shutdown()` to wait for.
pub(super) struct Stopping(Vec<Run>);

impl Stopping {
    /// Waits until every subscription's loop has drained and ended.
    pub(super) async fn wait(self) {
        for run in self.0 {
            run.stop().await;
        }
    }
}

impl Subscriptions {
    /// Shutdown: refuses new subscriptions and signals every running one to stop
    /// (all at once, so they drain in parallel with the compiled listeners).
    pub(super) fn close(&self) -> Stopping {
        let mut table = self.table.lock();
        table.closed = true;
        let runs: Vec<Run> = table.entries.drain(..).filter_map(|e| e.run).collect();
        for run in &runs {
            let _ = run.stop.send(true);
        }
        Stopping(runs)
    }

    /// The queues of every subscription, started or not.
    pub(super) fn queues(&self) -> Vec<QueueSpec> {
        let table = self.table.lock();
        table.entries.iter().map(|e| e.queue.clone()).collect()
    }

    /// The queues of the started subscriptions.
    pub(super) fn started_queues(&self) -> Vec<QueueSpec> {
        let table = self.table.lock();
        table
            .entries
            .iter()
            .filter(|e| e.run.is_some())
            .map(|e| e.queue.clone())
            .collect()
    }

    /// The consume loops of the started subscriptions (for health).
    pub(super) fn actives(&self) -> Vec<Arc<consume::Active>> {
        let table = self.table.lock();
        table
            .entries
            .iter()
            .filter_map(|e| e.run.as_ref().map(|run| Arc::clone(&run.active)))
            .collect()
    }
}

/// Subscription descriptors by (event type, name, per process, listener type):
/// made once and kept, as compiled descriptors are, so subscribing the same name
/// again does not allocate another.
type Interned = HashMap<(TypeId, String, bool, &'static str), &'static ListenerDescriptor>;
static DESCRIPTORS: Mutex<Option<Interned>> = Mutex::new(None);

fn descriptor<E: Event>(
    name: &str,
    per_process: bool,
    type_name: &'static str,
    type_id: fn() -> TypeId,
) -> &'static ListenerDescriptor {
    let mut interned = DESCRIPTORS.lock();
    let interned = interned.get_or_insert_with(HashMap::new);
    let key = (TypeId::of::<E>(), name.to_string(), per_process, type_name);
    interned.entry(key).or_insert_with(|| {
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        Box::leak(Box::new(ListenerDescriptor::subscription(
            name,
            type_name,
            per_process,
            crate::__private::event_descriptor::<E>,
            type_id,
        )))
    })
}

fn check_name(name: &str) -> Result<()> {
    let reason = if name.trim().is_empty() {
        "must not be empty"
    } else if name.contains(char::is_whitespace) {
        "must not contain white space"
    } else {
        return Ok(());
    };
    Err(Error::InvalidListenerName {
        name: name.to_string(),
        reason,
    })
}

fn kind_of(queue: &QueueSpec) -> ListenerKind {
    if queue.per_process {
        ListenerKind::PerProcess
    } else if queue
        .name
        .ends_with(&format!("::{}", crate::topology::SINGLETON))
    {
        ListenerKind::Singleton
    } else {
        ListenerKind::Competing
    }
}

impl Inner {
    /// The queue of a compiled listener on this manager's server.
    pub(super) fn queue_of(&self, descriptor: &ListenerDescriptor, address: &str) -> QueueSpec {
        let event = descriptor.event();
        if descriptor.singleton() {
            QueueSpec::singleton(address, descriptor.name(), event.durable())
        } else {
            QueueSpec::new(
                address,
                descriptor.name(),
                event.durable(),
                descriptor.per_process(),
                &self.server,
            )
        }
    }

    /// The consume loop's view of one listener bound to its queue: shared by the
    /// compiled listeners (`start()`) and the run-time subscriptions.
    pub(super) fn active(
        &self,
        descriptor: &'static ListenerDescriptor,
        queue: QueueSpec,
        handler: Arc<dyn ErasedListener>,
        options: ListenerOptions,
    ) -> Arc<consume::Active> {
        let metrics = crate::metrics::ListenerMetrics::new(&queue.event, descriptor.name());
        Arc::new(consume::Active {
            descriptor,
            queue_name: Arc::from(queue.name.as_str()),
            queue,
            handler,
            pipelines: Arc::clone(&self.pipelines),
            options,
            stats: Arc::clone(&self.stats),
            provider: Arc::clone(&self.provider),
            reconnect: self.reconnect.clone(),
            max_body: self.max_body,
            state: AtomicU8::new(consume::CONSUMING),
            metrics,
            accepts: descriptor
                .version()
                .and_then(|range| semver::VersionReq::parse(range).ok()),
        })
    }

    /// Declares a subscription's queue, subscribes and starts its consume loop.
    async fn launch(
        &self,
        descriptor: &'static ListenerDescriptor,
        queue: QueueSpec,
        handler: Arc<dyn ErasedListener>,
        options: ListenerOptions,
    ) -> Result<Run> {
        self.provider.declare(std::slice::from_ref(&queue)).await?;
        let consumer = self
            .provider
            .subscribe(&queue, ConsumeOptions::new(options.prefetch))
            .await?;
        tracing::info!(
            event = %queue.event,
            listener = descriptor.name(),
            queue = %queue.name,
            provider = self.provider.name(),
            "listening (run-time subscription)"
        );
        let active = self.active(descriptor, queue, handler, options);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(consume::run(
            consumer,
            Arc::clone(&active),
            stopped,
            self.shutdown_timeout,
        ));
        Ok(Run { active, stop, task })
    }

    /// Who else of this manager (a compiled listener of the binary, or another
    /// subscription) has `name` on the event at `address`, if sharing `queue` with
    /// them is not allowed.
    fn name_taken(
        &self,
        table: &Table,
        address: &str,
        name: &str,
        queue: &QueueSpec,
        compete: bool,
    ) -> Result<()> {
        let mut holders: Vec<(String, QueueSpec)> = Vec::new();
        for compiled in registry::listeners() {
            if compiled.name() != name {
                continue;
            }
            match self.address(compiled.event()) {
                Ok(other) if &*other == address => {
                    holders.push((
                        format!("`{}`", compiled.type_name()),
                        self.queue_of(compiled, address),
                    ));
                }
                _ => {}
            }
        }
        for entry in &table.entries {
            if entry.descriptor.name() == name && entry.queue.event == address {
                holders.push((format!("subscription {}", entry.id), entry.queue.clone()));
            }
        }
        for (holder, theirs) in holders {
            if !compete {
                return Err(Error::ListenerNameTaken {
                    event: address.to_string(),
                    name: name.to_string(),
                    existing: holder,
                });
            }
            if theirs.name != queue.name {
                return Err(Error::ListenerNameTaken {
                    event: address.to_string(),
                    name: name.to_string(),
                    existing: format!(
                        "{holder}, {} on queue `{}`; only a listener of the same kind shares a queue",
                        kind_of(&theirs),
                        theirs.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether a listener of this manager other than subscription `id` consumes
    /// `queue` (a compiled one, or another subscription sharing it).
    fn queue_in_use(&self, queue: &QueueSpec, id: SubscriptionId) -> bool {
        let compiled = self
            .plan()
            .map(|plan| plan.iter().any(|p| p.queue.name == queue.name))
            .unwrap_or(false);
        compiled
            || self
                .subscriptions
                .table
                .lock()
                .entries
                .iter()
                .any(|e| e.id != id && e.queue.name == queue.name)
    }
}

impl EventManager {
    /// Adds a listener of `E` while the program runs: `callback` is called for each
    /// event, as a compiled listener's `on` is, with the same queue rule
    /// (`<event>::<name>`, or `<event>::<name>-<server>` with
    /// [`SubscribeOptions::per_process`]), retries, dead letters and draining.
    /// Before `start()` it is started by `start()`; after, at once (the queue is
    /// declared first). Returns a handle for [`unsubscribe`](Self::unsubscribe).
    ///
    /// Errors: [`Error::ListenerNameTaken`] if a listener of `E` already has
    /// `name` and the options do not ask to
    /// [compete with it](SubscribeOptions::compete_with_existing);
    /// [`Error::InvalidListenerName`]; [`Error::ShutDown`] after `shutdown()`;
    /// the provider's error if declaring or subscribing fails.
    ///
    /// ```
    /// use eventing::{event, EventManager, SubscribeOptions};
    /// use std::time::Duration;
    ///
    /// #[event]
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Joined { name: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
    /// let manager = EventManager::builder().url("memory://subscribe-doc").build().await?;
    /// manager.start().await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let greeter = manager
    ///     .subscribe::<Joined>("greeter", SubscribeOptions::new(), move |joined, _ctx| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             tx.send(format!("hello, {}", joined.name))?;
    ///             Ok(())
    ///         }
    ///     })
    ///     .await?;
    /// manager.send_event(&Joined { name: "Ada".into() }).await?;
    /// let greeting = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(greeting.ok().flatten().as_deref(), Some("hello, Ada"));
    /// greeter.unsubscribe().await?;
    /// manager.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<E: Event>(
        &self,
        name: impl Into<String>,
        options: SubscribeOptions,
        callback: impl ListenerFn<E>,
    ) -> Result<Subscription> {
        let type_name = std::any::type_name_of_val(&callback);
        self.subscribe_erased::<E>(
            name.into(),
            options,
            crate::listener::erase::<_, E>(FnListener(callback)),
            type_name,
        )
        .await
    }

    /// [`subscribe`](Self::subscribe) with a listener value (any
    /// `EventListener<E>`, such as a compiled listener's type with its state)
    /// instead of a closure.
    pub async fn subscribe_listener<E: Event>(
        &self,
        name: impl Into<String>,
        options: SubscribeOptions,
        listener: impl EventListener<E>,
    ) -> Result<Subscription> {
        let type_name = std::any::type_name_of_val(&listener);
        self.subscribe_erased::<E>(
            name.into(),
            options,
            crate::listener::erase::<_, E>(listener),
            type_name,
        )
        .await
    }

    async fn subscribe_erased<E: Event>(
        &self,
        name: String,
        options: SubscribeOptions,
        handler: Arc<dyn ErasedListener>,
        type_name: &'static str,
    ) -> Result<Subscription> {
        const OPERATION: &str = "subscribe()";
        check_name(&name)?;
        let inner = &self.inner;
        if inner.stopped.load(Ordering::Relaxed) {
            return Err(Error::ShutDown {
                operation: OPERATION,
            });
        }
        let event: &'static EventDescriptor = E::descriptor();
        let address = inner.address(event)?;
        let descriptor = descriptor::<E>(&name, options.per_process, type_name, || {
            TypeId::of::<Subscription>()
        });
        let listener_options = options
            .listener
            .clone()
            .unwrap_or_else(|| inner.options_for(descriptor));
        let queue = QueueSpec::new(
            &address,
            descriptor.name(),
            event.durable(),
            options.per_process,
            &inner.server,
        )
        .with_retry_delays(&listener_options.retry.delays);
        let (id, start_now) = {
            let mut table = inner.subscriptions.table.lock();
            if table.closed {
                return Err(Error::ShutDown {
                    operation: OPERATION,
                });
            }
            inner.name_taken(&table, &address, &name, &queue, options.compete)?;
            table.next += 1;
            let id = SubscriptionId(table.next);
            table.entries.push(Entry {
                id,
                descriptor,
                queue: queue.clone(),
                handler: Arc::clone(&handler),
                options: listener_options.clone(),
                metadata: options.metadata,
                run: None,
            });
            (id, table.started)
        };
        let handle = Subscription {
            id,
            listener: descriptor.name(),
            queue: queue.name.clone(),
            manager: self.downgrade(),
        };
        if start_now {
            self.launch_entry(id, descriptor, queue, handler, listener_options)
                .await?;
        }
        Ok(handle)
    }

    /// Starts subscription `id` and records its loop; if it was removed meanwhile
    /// (unsubscribed, or the manager shut down), stops it again.
    async fn launch_entry(
        &self,
        id: SubscriptionId,
        descriptor: &'static ListenerDescriptor,
        queue: QueueSpec,
        handler: Arc<dyn ErasedListener>,
        options: ListenerOptions,
    ) -> Result<()> {
        let inner = &self.inner;
        let run = match inner.launch(descriptor, queue, handler, options).await {
            Ok(run) => run,
            Err(error) => {
                inner
                    .subscriptions
                    .table
                    .lock()
                    .entries
                    .retain(|e| e.id != id);
                return Err(error);
            }
        };
        let orphan = {
            let mut table = inner.subscriptions.table.lock();
            let closed = table.closed;
            match table.entries.iter_mut().find(|e| e.id == id) {
                Some(entry) if !closed => {
                    entry.run = Some(run);
                    None
                }
                _ => Some((run, closed)),
            }
        };
        match orphan {
            None => Ok(()),
            Some((run, closed)) => {
                run.stop().await;
                Err(if closed {
                    Error::ShutDown {
                        operation: "subscribe()",
                    }
                } else {
                    Error::UnknownSubscription { id: id.0 }
                })
            }
        }
    }

    /// Starts the subscriptions made before `start()`; new ones start at once
    /// from now on.
    pub(super) async fn start_subscriptions(&self) -> Result<()> {
        type Pending = (
            SubscriptionId,
            &'static ListenerDescriptor,
            QueueSpec,
            Arc<dyn ErasedListener>,
            ListenerOptions,
        );
        let pending: Vec<Pending> = {
            let mut table = self.inner.subscriptions.table.lock();
            table.started = true;
            table
                .entries
                .iter()
                .filter(|e| e.run.is_none())
                .map(|e| {
                    (
                        e.id,
                        e.descriptor,
                        e.queue.clone(),
                        Arc::clone(&e.handler),
                        e.options.clone(),
                    )
                })
                .collect()
        };
        let mut first_error = None;
        for (id, descriptor, queue, handler, options) in pending {
            if let Err(error) = self
                .launch_entry(id, descriptor, queue, handler, options)
                .await
            {
                tracing::error!(%error, listener = descriptor.name(), "starting a subscription failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Ends run-time subscription `id`: it takes no more messages, what it had
    /// buffered goes back to the broker, running calls finish (bounded by the
    /// shutdown timeout) and are acknowledged, and a per-process subscription's
    /// queue is removed (unless another listener of this manager shares it).
    /// Nothing is acknowledged that the callback did not handle.
    ///
    /// A second call with the same id, or an id this manager did not hand out, is
    /// [`Error::UnknownSubscription`].
    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<()> {
        let entry = {
            let mut table = self.inner.subscriptions.table.lock();
            let position = table
                .entries
                .iter()
                .position(|e| e.id == id)
                .ok_or(Error::UnknownSubscription { id: id.0 })?;
            table.entries.remove(position)
        };
        let queue = entry.queue;
        if let Some(run) = entry.run {
            run.stop().await;
            if queue.per_process && !self.inner.queue_in_use(&queue, id) {
                self.inner.provider.delete_queue(&queue).await?;
            }
        }
        tracing::info!(
            event = %queue.event,
            listener = entry.descriptor.name(),
            queue = %queue.name,
            "unsubscribed"
        );
        Ok(())
    }

    /// Every listener of this manager: the compiled ones it runs (types and
    /// functions) and the run-time subscriptions, with their queue, kind, options,
    /// metadata and state.
    pub fn subscriptions(&self) -> Result<Vec<ListenerInfo>> {
        let inner = &self.inner;
        let actives: Vec<Arc<consume::Active>> = match &*inner.state.lock() {
            State::Running { actives, .. } => actives.clone(),
            _ => Vec::new(),
        };
        let started = !actives.is_empty() || inner.subscriptions.table.lock().started;
        let mut list = Vec::new();
        for planned in inner.plan()? {
            let state = actives
                .iter()
                .find(|a| {
                    a.queue.name == planned.queue.name
                        && a.descriptor.name() == planned.descriptor.name()
                })
                .map(|a| state_of(a));
            list.push(ListenerInfo {
                listener: planned.descriptor.name(),
                event: planned.queue.event.clone(),
                kind: kind_of(&planned.queue),
                queue: planned.queue,
                origin: planned.descriptor.origin(),
                type_name: planned.descriptor.type_name(),
                id: None,
                options: inner.options_for(planned.descriptor),
                metadata: Vec::new(),
                state: state.or(started.then_some(ListenerState::Stopped)),
            });
        }
        let table = inner.subscriptions.table.lock();
        for entry in &table.entries {
            list.push(ListenerInfo {
                listener: entry.descriptor.name(),
                event: entry.queue.event.clone(),
                queue: entry.queue.clone(),
                kind: kind_of(&entry.queue),
                origin: ListenerOrigin::Subscription,
                type_name: entry.descriptor.type_name(),
                id: Some(entry.id),
                options: entry.options.clone(),
                metadata: entry.metadata.clone(),
                state: entry.run.as_ref().map(|run| state_of(&run.active)),
            });
        }
        Ok(list)
    }
}

/// The listener state a consume loop reports.
pub(super) fn state_of(active: &consume::Active) -> ListenerState {
    match active.state.load(Ordering::Relaxed) {
        consume::CONSUMING => ListenerState::Consuming,
        consume::RECONNECTING => ListenerState::Reconnecting,
        _ => ListenerState::Stopped,
    }
}
