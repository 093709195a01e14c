//! How the suites reach a provider: the [`Harness`] a provider author writes, the
//! in-process [`MemoryHarness`], and the per-test [`TestEnv`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventing::memory::MemoryProvider;
use eventing::topology::QueueSpec;
use eventing::{EventManager, EventManagerBuilder, ListenerOptions, RetryPolicy};
use futures_util::future::BoxFuture;

/// A provider under test.
pub trait Harness: Send + Sync + 'static {
    /// Short name for messages (`memory`, `amqp`, `stomp`).
    fn name(&self) -> &'static str;

    /// The URL managers of one test connect to; `env` is unique per test.
    fn url(&self, env: &str) -> String;

    /// Removes what a test left on the broker (its queues and their dead-letter
    /// queues, and the event addresses). Called at the end of each test.
    fn cleanup<'a>(&'a self, queues: &'a [QueueSpec], events: &'a [String]) -> BoxFuture<'a, ()> {
        let _ = (queues, events);
        Box::pin(async {})
    }

    /// Restarts the broker (every connection to it drops; durable queues and
    /// persistent messages stay) and returns once it answers again. Returns false
    /// if this harness cannot restart its broker (the default); the fault tests then
    /// say so instead of restarting.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }

    /// True if the broker lives in the test's own process (an in-memory provider):
    /// the fault tests then stand in for a killed consumer process by dropping its
    /// manager, and size the backlog to what the process holds beside the test.
    /// False by default (a broker reached over the network).
    fn in_process(&self) -> bool {
        false
    }

    /// How many messages the backlog fault test (`backlog_drain`) piles up before
    /// its consumer starts, if not the kit's default (200,000 on a broker). A
    /// harness lowers it only for a broker too slow to store and hand out the
    /// default within the test's time limit on the machine that runs it, and says
    /// why; the test prints the size it used (`sent=`).
    fn backlog(&self) -> Option<u64> {
        None
    }

    /// Optional capabilities this provider does not have yet, on purpose: their
    /// kit cases print `pending` and pass instead of failing. A case of a
    /// capability the provider lacks and the harness does not list here fails,
    /// and so does one the harness lists although the provider has it, so the
    /// list cannot go stale. None by default.
    ///
    /// ```
    /// use eventing::provider::Capabilities;
    /// struct Mine;
    /// impl eventing_test::Harness for Mine {
    ///     fn name(&self) -> &'static str { "mine" }
    ///     fn url(&self, env: &str) -> String { format!("memory://{env}") }
    ///     // Delayed delivery is not written yet.
    ///     fn pending(&self) -> Capabilities { Capabilities::NONE.with_delayed() }
    /// }
    /// ```
    fn pending(&self) -> eventing::provider::Capabilities {
        eventing::provider::Capabilities::NONE
    }
}

/// The in-process provider: one broker per test, named after the test's env.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn in_process(&self) -> bool {
        true
    }

    fn url(&self, env: &str) -> String {
        MEMORY_BROKERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(env.to_string());
        format!("memory://{env}")
    }

    /// Simulates a restart of every in-process broker this harness handed out:
    /// `set_available(false)` (every consumer stream ends as on a lost connection,
    /// publishes wait), a short outage, `set_available(true)`. Queued messages stay,
    /// as persistent messages in durable queues do on a broker.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            let brokers: Vec<MemoryProvider> = MEMORY_BROKERS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|name| MemoryProvider::named(name))
                .collect();
            for broker in &brokers {
                broker.set_available(false);
            }
            tokio::time::sleep(MEMORY_OUTAGE).await;
            for broker in &brokers {
                broker.set_available(true);
            }
            true
        })
    }
}

/// How long a simulated restart of the in-process broker keeps it down.
pub const MEMORY_OUTAGE: Duration = Duration::from_millis(500);

/// The names of the in-process brokers [`MemoryHarness`] handed out (`memory://<env>`).
static MEMORY_BROKERS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One test's environment: a unique `{env}` for event names, so tests (and providers
/// sharing one broker) never see each other's messages.
pub struct TestEnv<'h> {
    /// The harness.
    pub harness: &'h dyn Harness,
    /// The unique value of `{env}`.
    pub env: String,
    managers: Vec<EventManager>,
}

impl<'h> TestEnv<'h> {
    /// A new unique environment.
    pub fn new(harness: &'h dyn Harness) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or(0);
        let env = format!(
            "{}-{}-{nanos}-{}",
            harness.name(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            harness,
            env,
            managers: Vec::new(),
        }
    }

    /// A builder for a manager of this test: the harness URL, `{env}`, fast retries,
    /// and only the listeners the test binds.
    pub fn builder(&self, server: &str) -> EventManagerBuilder {
        EventManager::builder()
            .url(self.harness.url(&self.env))
            .server_name(server)
            .var("env", &self.env)
            .only_bound_listeners()
            .shutdown_timeout(Duration::from_secs(10))
            .listener_options(ListenerOptions {
                prefetch: 50,
                concurrency: 8,
                retry: RetryPolicy {
                    max_attempts: 3,
                    initial_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(50),
                    delays: Vec::new(),
                },
            })
    }

    /// Builds and starts a manager, remembering it for cleanup.
    pub async fn start(&mut self, builder: EventManagerBuilder) -> EventManager {
        let manager = builder.build().await.expect("build manager");
        manager.start().await.expect("start manager");
        self.managers.push(manager.clone());
        manager
    }

    /// Shuts every manager down and removes what the test created on the broker.
    pub async fn finish(self) {
        let mut queues = Vec::new();
        let mut events = Vec::new();
        for manager in &self.managers {
            for queue in manager.queues() {
                if !events.contains(&queue.event) {
                    events.push(queue.event.clone());
                }
                queues.push(queue);
            }
            let _ = manager.shutdown().await;
        }
        self.harness.cleanup(&queues, &events).await;
    }
}

/// The names of `queues`, of their dead-letter queues and of their delay queues
/// ([`QueueSpec::delay_queues`]).
pub fn with_dead_letter_queues(queues: &[QueueSpec]) -> Vec<String> {
    queues
        .iter()
        .flat_map(|q| {
            let mut names = vec![q.name.clone(), q.dead_letter_queue()];
            names.extend(q.delay_queues());
            names
        })
        .collect()
}

/// Runs a broker clean-up, giving up with a warning after 20 s.
pub async fn bounded_cleanup(cleanup: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(20), cleanup)
        .await
        .is_err()
    {
        tracing::warn!("cleanup timed out; queues may be left on the broker");
    }
}
