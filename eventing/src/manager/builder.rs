//! Building an [`EventManager`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Counters, EventManager, Inner, State};
use crate::error::Result;
use crate::pipeline::EnvelopePipeline;
use crate::provider::{self, DynProvider, ProviderConfig};
use crate::registry;

/// How a failing listener call is retried before the message is dead-lettered.
///
/// Two stages. Immediate retries happen in the consumer, holding the message:
/// `max_attempts` calls with backoff. Then, if `delays` is not empty, the delayed
/// stage: the message leaves the consumer and waits on the broker for the first
/// delay, comes back to its own queue (not the event's other listeners) and gets
/// `max_attempts` calls again, then waits for the next delay, and so on; only
/// after the round that follows the last delay is it dead-lettered, with the
/// attempts of every round counted. [`Context::attempt`](crate::Context::attempt)
/// counts across rounds, and a consumer restart in between loses nothing. The
/// provider needs the `delayed` capability (the manager's `start()` fails
/// otherwise).
///
/// ```
/// use std::time::Duration;
/// use eventing::RetryPolicy;
///
/// // 3 calls, then after 5 s, 30 s and 5 min 3 calls each: 12 in all.
/// let policy = RetryPolicy::default().with_delays([
///     Duration::from_secs(5),
///     Duration::from_secs(30),
///     Duration::from_secs(300),
/// ]);
/// assert_eq!(policy.total_attempts(), 12);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls per round, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// The wait doubles per retry up to this.
    pub max_backoff: Duration,
    /// The delayed stage: how long the message waits on the broker before each
    /// further round (empty, the default: none, dead-letter after the first round).
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            delays: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The wait before call number `attempt + 1` (`attempt` >= 1), with up to 20%
    /// jitter so retries of many messages do not fall in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::Backoff::new(self.initial_backoff, self.max_backoff).delay(attempt)
    }

    /// The same policy with this delayed stage (see [`delays`](Self::delays)).
    #[must_use]
    pub fn with_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = delays.into_iter().collect();
        self
    }

    /// Listener calls before a message is dead-lettered, over both stages.
    pub fn total_attempts(&self) -> u32 {
        let rounds = u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.max_attempts.max(1).saturating_mul(rounds)
    }
}

/// Limits and retries for a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerOptions {
    /// Unacknowledged deliveries the broker may push ahead (default 256).
    pub prefetch: u16,
    /// Concurrent `on` calls (default 32).
    pub concurrency: usize,
    /// Retries before dead-lettering.
    pub retry: RetryPolicy,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            prefetch: 256,
            concurrency: 32,
            retry: RetryPolicy::default(),
        }
    }
}

enum ProviderSource {
    Instance(Arc<dyn DynProvider>),
    Url(String),
}

/// Configures an [`EventManager`]; finish with [`build`](Self::build).
pub struct EventManagerBuilder {
    provider: Option<ProviderSource>,
    server_name: Option<String>,
    pipelines: Vec<Arc<dyn EnvelopePipeline>>,
    instances: Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
    selected: Option<Vec<TypeId>>,
    vars: HashMap<String, String>,
    defaults: ListenerOptions,
    overrides: HashMap<String, ListenerOptions>,
    max_body: usize,
    codec: crate::codec::Codec,
    send_timeout: Duration,
    shutdown_timeout: Duration,
    reconnect: RetryPolicy,
}

impl Default for EventManagerBuilder {
    fn default() -> Self {
        Self {
            provider: None,
            server_name: None,
            pipelines: Vec::new(),
            instances: Vec::new(),
            selected: None,
            vars: HashMap::new(),
            defaults: ListenerOptions::default(),
            overrides: HashMap::new(),
            max_body: 8 * 1024 * 1024,
            codec: crate::codec::Codec::Json,
            send_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            reconnect: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(10),
                delays: Vec::new(),
            },
        }
    }
}

/// The environment variable [`EventManagerBuilder::url_from_env`] reads.
pub const URL_VARIABLE: &str = "EVENTING_URL";

impl EventManagerBuilder {
    /// Uses this provider instance (share a [`MemoryProvider`](crate::memory::MemoryProvider)
    /// between managers by cloning it).
    pub fn provider(mut self, provider: impl DynProvider) -> Self {
        self.provider = Some(ProviderSource::Instance(Arc::new(provider)));
        self
    }

    /// Uses this shared provider.
    pub fn shared_provider(mut self, provider: Arc<dyn DynProvider>) -> Self {
        self.provider = Some(ProviderSource::Instance(provider));
        self
    }

    /// Picks the provider by the URL's scheme (`memory://`, `amqp://`, `stomp://`, ...).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.provider = Some(ProviderSource::Url(url.into()));
        self
    }

    /// Reads the URL from `EVENTING_URL`, defaulting to `memory://`.
    pub fn url_from_env(self) -> Self {
        let url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| "memory://".to_string());
        self.url(url)
    }

    /// The server name (default: host name and process id).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Adds a pipeline; pipelines run in the order they are added.
    pub fn pipeline(mut self, pipeline: impl EnvelopePipeline) -> Self {
        self.pipelines.push(Arc::new(pipeline));
        self
    }

    /// Binds a listener instance (for listeners with state). With
    /// [`only_bound_listeners`](Self::only_bound_listeners) it also selects it.
    pub fn listener<L: Any + Send + Sync>(mut self, listener: L) -> Self {
        self.instances.push((TypeId::of::<L>(), Arc::new(listener)));
        if let Some(selected) = &mut self.selected {
            selected.push(TypeId::of::<L>());
        }
        self
    }

    /// Gives listener functions that take `State<T>` this value (a clone per
    /// call); see [`State`](crate::State). One value per type `T`; a later call
    /// for the same type wins.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        let id = TypeId::of::<crate::State<T>>();
        self.instances.retain(|(bound, _)| *bound != id);
        self.instances.push((id, Arc::new(crate::State(value))));
        self
    }

    /// Selects a registered listener type that the runtime constructs itself.
    pub fn listener_type<L: Any>(mut self) -> Self {
        self.selected
            .get_or_insert_with(Vec::new)
            .push(TypeId::of::<L>());
        self
    }

    /// Runs only the listeners given with [`listener`](Self::listener) or
    /// [`listener_type`](Self::listener_type) instead of every registered one.
    pub fn only_bound_listeners(mut self) -> Self {
        let bound = self.instances.iter().map(|(id, _)| *id);
        let selected = self.selected.get_or_insert_with(Vec::new);
        selected.extend(bound);
        self
    }

    /// Sets a `{name}` placeholder value for event names (e.g. `{env}`).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Options for every listener.
    pub fn listener_options(mut self, options: ListenerOptions) -> Self {
        self.defaults = options;
        self
    }

    /// Options for the listener named `listener`.
    pub fn listener_options_for(
        mut self,
        listener: impl Into<String>,
        options: ListenerOptions,
    ) -> Self {
        self.overrides.insert(listener.into(), options);
        self
    }

    /// The codec for events that do not choose one with `#[event(codec = "...")]`
    /// (default JSON). Receivers decode by the `content-type` header.
    pub fn codec(mut self, codec: crate::codec::Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The largest body (default 8 MiB): `send_event` refuses a larger one with
    /// `Error::TooLarge`, and a larger message received is dead-lettered with the
    /// reason, without being decoded or handed to a listener.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long a send may take, waiting for an unavailable or blocked broker,
    /// before it fails with `Error::Unavailable` (default 30 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Backoff between attempts to subscribe again after a listener lost its
    /// subscription (attempts are unlimited; default 200 ms doubling to 10 s, with jitter).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: initial,
            max_backoff: max,
            delays: Vec::new(),
        };
        self
    }

    /// How long `shutdown()` waits for running listeners (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Connects the provider and builds the manager (not started yet).
    pub async fn build(self) -> Result<EventManager> {
        let server = self.server_name.unwrap_or_else(default_server_name);
        let (provider, connected_here) = match self
            .provider
            .unwrap_or(ProviderSource::Url("memory://".into()))
        {
            ProviderSource::Instance(provider) => (provider, false),
            ProviderSource::Url(url) => {
                let config = ProviderConfig::new(url, server.clone(), self.send_timeout);
                (provider::connect(config).await?, true)
            }
        };
        // A provider given as an instance may have been connected with another
        // send timeout: then the manager keeps its own timer.
        let publish_bounded = connected_here && provider.capabilities().bounded_publish;
        // The event log's address, unless the user chose one.
        let mut vars = self.vars;
        vars.entry("eventlog".to_string())
            .or_insert_with(|| "eventlog".to_string());
        let addresses = registry::events()
            .into_iter()
            .map(|event| {
                let key = event as *const _ as usize;
                let address = registry::resolve_name(event.name(), &vars)
                    .map(Arc::from)
                    .map_err(|e| e.to_string());
                (key, address)
            })
            .collect();
        let manager = EventManager {
            inner: Arc::new(Inner {
                provider,
                server,
                pipelines: self.pipelines.into(),
                vars,
                addresses,
                instances: self.instances,
                selected: self.selected,
                defaults: self.defaults,
                overrides: self.overrides,
                max_body: self.max_body,
                codec: self.codec,
                send_timeout: self.send_timeout,
                publish_bounded,
                shutdown_timeout: self.shutdown_timeout,
                reconnect: self.reconnect,
                state: Mutex::new(State::Built),
                stopped: Default::default(),
                stats: Arc::new(Counters::default()),
                subscriptions: Default::default(),
            }),
        };
        for pipeline in manager.inner.pipelines.iter() {
            pipeline.attached(manager.downgrade());
        }
        Ok(manager)
    }
}

/// `<host name>-<pid>`.
pub(crate) fn default_server_name() -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}-{}", std::process::id())
}
