//! How the suite reaches a provider.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventing::{
    EventManager, EventManagerBuilder, ListenerOptions, MemoryProvider, QueueSpec, RetryPolicy,
};
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
}

/// The in-process provider: one broker per test, named after the test's env.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
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

/// Restarts the RabbitMQ application on this machine (`rabbitmqctl stop_app`, then
/// `start_app`, as `scripts/broker.sh restart` does; needs root or the rabbitmq
/// user) and waits until every port in `ports` of `host` accepts TCP connections
/// again. Returns how long that took, or `None` without doing anything if it cannot
/// restart that broker: `host` is not this machine, or `rabbitmqctl` is not
/// installed. Tries hard to leave the broker running: `start_app` is retried.
pub async fn restart_rabbitmq_app(
    host: &str,
    ports: &[u16],
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]");
    let installed = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("rabbitmqctl").is_file())
    });
    if !local || !installed {
        return Ok(None);
    }
    let began = tokio::time::Instant::now();
    let deadline = began + limit;
    rabbitmqctl_status(&["stop_app"], deadline).await?;
    let mut started = Err(String::new());
    for _ in 0..3 {
        started = rabbitmqctl_status(&["start_app"], deadline).await;
        if started.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    started?;
    for &port in ports {
        loop {
            let connect = tokio::net::TcpStream::connect((host, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("port {port} did not answer within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(Some(began.elapsed()))
}

/// Runs `rabbitmqctl -q <args>` until `deadline`; its stderr on failure.
async fn rabbitmqctl_status(args: &[&str], deadline: tokio::time::Instant) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = args.join(" ");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    });
    let output = tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| format!("rabbitmqctl {what} did not finish in time"))?
        .map_err(|e| format!("rabbitmqctl {what}: {e}"))?
        .map_err(|e| format!("cannot run rabbitmqctl {what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
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

/// Runs `rabbitmqctl -q <args>` (needs root or the rabbitmq user) and returns its
/// output; panics with its stderr if it fails.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("rabbitmqctl timed out")
        .expect("rabbitmqctl task")
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// The names of `queues` and of their dead-letter queues.
pub fn with_dead_letter_queues(queues: &[QueueSpec]) -> Vec<String> {
    queues
        .iter()
        .flat_map(|q| [q.name.clone(), q.dead_letter_queue()])
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
