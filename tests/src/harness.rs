//! How the suite reaches a provider.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventing::{EventManager, EventManagerBuilder, ListenerOptions, QueueSpec, RetryPolicy};
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
}

/// The in-process provider: one broker per test, named after the test's env.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn url(&self, env: &str) -> String {
        format!("memory://{env}")
    }
}

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
