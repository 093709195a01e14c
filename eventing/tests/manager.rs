//! The manager and the in-process provider: topology, configuration errors and
//! broker semantics that the shared suite does not pin down exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventing::memory::MemoryProvider;
use eventing::{
    Context, Error, EventListener, EventManager, ListenerOptions, ListenerResult, RetryPolicy,
    event, event_listener,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// An event with a templated name.
#[event(name = "orders.{env}.Placed", durable = true)]
#[derive(Serialize, Deserialize)]
pub struct Placed {
    /// Order number.
    pub n: usize,
}

/// Stateless: constructed by the runtime.
#[event_listener(Placed)]
pub struct Stateless;

impl EventListener<Placed> for Stateless {
    async fn on(&self, _: Placed, _: &Context) -> ListenerResult {
        Ok(())
    }
}

/// With state: must be bound. Counts calls, records the server, may block on a gate.
#[event_listener(Placed, name = "Counter")]
pub struct Counter {
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

impl Counter {
    fn new(gate: Option<Arc<Semaphore>>) -> Self {
        Self {
            calls: Arc::default(),
            running: Arc::default(),
            peak: Arc::default(),
            gate,
        }
    }

    fn probe(&self) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (Arc::clone(&self.calls), Arc::clone(&self.peak))
    }
}

impl EventListener<Placed> for Counter {
    async fn on(&self, _: Placed, _: &Context) -> ListenerResult {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await?;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Per process: one queue per server.
#[event_listener(Placed, name = "Cache", per_process = true)]
pub struct Cache;

impl EventListener<Placed> for Cache {
    async fn on(&self, _: Placed, _: &Context) -> ListenerResult {
        Ok(())
    }
}

async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

#[tokio::test]
async fn topology_follows_the_naming_rule() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .server_name("web-1")
        .var("env", "prod")
        .listener(Counter::new(None))
        .build()
        .await
        .expect("build");
    let topology = manager.topology().expect("topology");
    let names: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "orders.prod.Placed::Cache-web-1",
            "orders.prod.Placed::Counter",
            "orders.prod.Placed::Picky",
            "orders.prod.Placed::Stateless"
        ]
    );
    assert!(topology.queues.iter().all(|q| q.durable));
    assert!(
        topology
            .events
            .iter()
            .any(|e| e.name == "orders.prod.Placed" && e.durable)
    );
    let printed = topology.to_string();
    assert!(
        printed.contains("queue orders.prod.Placed::Cache-web-1 <- listener Cache (per process)"),
        "{printed}"
    );
    assert!(
        printed.contains("dead letters orders.prod.Placed::Counter.dlq"),
        "{printed}"
    );
    assert!(manager.server_name() == "web-1");
}

#[tokio::test]
async fn default_server_name_is_host_and_pid() {
    let manager = EventManager::builder().build().await.expect("build");
    assert!(
        manager
            .server_name()
            .ends_with(&format!("-{}", std::process::id())),
        "{}",
        manager.server_name()
    );
}

#[tokio::test]
async fn unbound_stateful_listener_is_a_start_error() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .var("env", "t")
        .build()
        .await
        .expect("build");
    let error = manager
        .start()
        .await
        .expect_err("Counter has state and no instance");
    assert!(
        matches!(
            error,
            Error::ListenerNotBound {
                listener: "Counter",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn missing_template_value_is_an_error() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .listener(Counter::new(None))
        .build()
        .await
        .expect("build");
    let error = manager.start().await.expect_err("{env} has no value");
    assert!(error.to_string().contains("{env}"), "{error}");
    let error = manager
        .send_event(&Placed { n: 1 })
        .await
        .expect_err("send");
    assert!(matches!(error, Error::UnresolvedName { .. }), "{error:?}");
}

#[tokio::test]
async fn unknown_scheme_and_bad_url_are_errors_without_credentials() {
    let error = EventManager::builder()
        .url("kafka://user:hunter2@127.0.0.1:9092")
        .build()
        .await
        .err()
        .expect("no kafka provider");
    let message = error.to_string();
    assert!(matches!(error, Error::UnknownScheme { .. }), "{error:?}");
    assert!(
        message.contains("kafka") && message.contains("memory"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let error = EventManager::builder()
        .url("user:hunter2@nowhere")
        .build()
        .await
        .err()
        .expect("not a URL");
    assert!(!format!("{error} {error:?}").contains("hunter2"));
}

#[tokio::test]
async fn lifecycle_errors() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .var("env", "t")
        .only_bound_listeners()
        .listener(Counter::new(None))
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    assert!(matches!(manager.start().await, Err(Error::AlreadyStarted)));
    manager.shutdown().await.expect("shutdown");
    let error = manager
        .send_event(&Placed { n: 1 })
        .await
        .expect_err("after shutdown");
    assert!(matches!(error, Error::ShutDown { .. }), "{error:?}");
}

#[tokio::test]
async fn oversized_body_is_refused_on_send() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .var("env", "t")
        .max_body_size(4)
        .build()
        .await
        .expect("build");
    let error = manager
        .send_event(&Placed { n: 12345 })
        .await
        .expect_err("too large");
    assert!(
        matches!(error, Error::TooLarge { limit: 4, .. }),
        "{error:?}"
    );
}

async fn counter_manager(
    broker: &MemoryProvider,
    server: &str,
    counter: Counter,
    options: ListenerOptions,
) -> EventManager {
    let manager = EventManager::builder()
        .provider(broker.clone())
        .server_name(server)
        .var("env", "mem")
        .only_bound_listeners()
        .listener(counter)
        .listener_options(options)
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    manager
}

#[tokio::test]
async fn competing_consumers_are_served_round_robin() {
    let broker = MemoryProvider::new();
    let a = Counter::new(None);
    let b = Counter::new(None);
    let (calls_a, _) = a.probe();
    let (calls_b, _) = b.probe();
    let ma = counter_manager(&broker, "a", a, ListenerOptions::default()).await;
    let mb = counter_manager(&broker, "b", b, ListenerOptions::default()).await;
    for n in 0..100 {
        ma.send_event(&Placed { n }).await.expect("send");
    }
    assert!(
        eventually(|| calls_a.load(Ordering::SeqCst) + calls_b.load(Ordering::SeqCst) == 100).await
    );
    assert_eq!(calls_a.load(Ordering::SeqCst), 50);
    assert_eq!(calls_b.load(Ordering::SeqCst), 50);
    ma.shutdown().await.expect("shutdown");
    mb.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn in_flight_calls_are_bounded_and_backlog_waits_on_the_broker() {
    let broker = MemoryProvider::new();
    let gate = Arc::new(Semaphore::new(0));
    let counter = Counter::new(Some(Arc::clone(&gate)));
    let (calls, peak) = counter.probe();
    let options = ListenerOptions {
        prefetch: 8,
        concurrency: 4,
        retry: RetryPolicy::default(),
    };
    let manager = counter_manager(&broker, "a", counter, options).await;
    for n in 0..100 {
        manager.send_event(&Placed { n }).await.expect("send");
    }
    let queue = "orders.mem.Placed::Counter";
    assert!(
        eventually(|| broker.queue_depth(queue) == Some(92)).await,
        "{:?}",
        broker.queue_depth(queue)
    );
    assert!(eventually(|| peak.load(Ordering::SeqCst) == 4).await);
    gate.add_permits(1000);
    assert!(eventually(|| calls.load(Ordering::SeqCst) == 100).await);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        4,
        "never more than `concurrency` calls at once"
    );
    assert_eq!(broker.queue_depth(queue), Some(0));
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dropping_a_manager_returns_its_unacked_messages() {
    let broker = MemoryProvider::new();
    let gate = Arc::new(Semaphore::new(0));
    let stuck = Counter::new(Some(gate));
    let (_, peak) = stuck.probe();
    let options = ListenerOptions {
        prefetch: 10,
        concurrency: 10,
        retry: RetryPolicy::default(),
    };
    let a = counter_manager(&broker, "a", stuck, options.clone()).await;
    for n in 0..10 {
        a.send_event(&Placed { n }).await.expect("send");
    }
    assert!(
        eventually(|| peak.load(Ordering::SeqCst) == 10).await,
        "a holds all ten"
    );
    drop(a); // no shutdown: a crash, as far as the broker can tell
    let b = Counter::new(None);
    let (calls_b, _) = b.probe();
    let mb = counter_manager(&broker, "b", b, options).await;
    assert!(
        eventually(|| calls_b.load(Ordering::SeqCst) == 10).await,
        "b gets all ten"
    );
    mb.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn per_process_queue_goes_away_with_its_server() {
    let broker = MemoryProvider::new();
    let manager = EventManager::builder()
        .provider(broker.clone())
        .server_name("temp")
        .var("env", "pp")
        .only_bound_listeners()
        .listener_type::<Cache>()
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    assert!(
        broker
            .queue_names()
            .contains(&"orders.pp.Placed::Cache-temp".to_string())
    );
    manager.shutdown().await.expect("shutdown");
    assert!(
        !broker
            .queue_names()
            .contains(&"orders.pp.Placed::Cache-temp".to_string())
    );
}

#[tokio::test]
async fn a_full_queue_makes_publishers_wait_then_fail() {
    let broker = MemoryProvider::with_limits(5, Duration::from_millis(200));
    let gate = Arc::new(Semaphore::new(0));
    let counter = Counter::new(Some(Arc::clone(&gate)));
    let (calls, _) = counter.probe();
    let options = ListenerOptions {
        prefetch: 1,
        concurrency: 1,
        retry: RetryPolicy::default(),
    };
    let manager = counter_manager(&broker, "a", counter, options).await;
    // One in the listener's hands, five ready: the queue is full.
    for n in 0..6 {
        manager.send_event(&Placed { n }).await.expect("send");
    }
    let error = manager
        .send_event(&Placed { n: 6 })
        .await
        .expect_err("full");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    // A waiting publisher goes through once the listener makes room.
    let sender = manager.clone();
    let waiting = tokio::spawn(async move { sender.send_event(&Placed { n: 7 }).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(100);
    waiting.await.expect("join").expect("send after room");
    assert!(eventually(|| calls.load(Ordering::SeqCst) == 7).await);
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn listeners_resubscribe_after_an_outage_and_sends_time_out_during_it() {
    let broker = MemoryProvider::new();
    let counter = Counter::new(None);
    let (calls, _) = counter.probe();
    let manager = EventManager::builder()
        .provider(broker.clone())
        .server_name("a")
        .var("env", "outage")
        .only_bound_listeners()
        .listener(counter)
        .send_timeout(Duration::from_millis(100))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    assert!(manager.health().healthy);
    for n in 0..5 {
        manager.send_event(&Placed { n }).await.expect("send");
    }
    assert!(eventually(|| calls.load(Ordering::SeqCst) == 5).await);

    broker.set_available(false);
    assert!(
        eventually(|| manager.health().listeners[0].state
            == eventing::manager::ListenerState::Reconnecting)
        .await,
        "{:?}",
        manager.health()
    );
    let error = manager
        .send_event(&Placed { n: 99 })
        .await
        .expect_err("broker down");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

    broker.set_available(true);
    assert!(
        eventually(|| manager.health().healthy).await,
        "{:?}",
        manager.health()
    );
    for n in 5..10 {
        manager
            .send_event(&Placed { n })
            .await
            .expect("send after outage");
    }
    assert!(eventually(|| calls.load(Ordering::SeqCst) == 10).await);
    let stats = manager.health().stats;
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.sent, 10);
    manager.shutdown().await.expect("shutdown");
    assert_eq!(manager.health().listeners.len(), 0);
}

/// Fails while `FAIL` is set.
#[event_listener(Placed, name = "Picky")]
pub struct Picky {
    fail: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl EventListener<Placed> for Picky {
    async fn on(&self, _: Placed, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err("not today".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_replayed() {
    let broker = MemoryProvider::new();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = EventManager::builder()
        .provider(broker.clone())
        .var("env", "replay")
        .only_bound_listeners()
        .listener(Picky {
            fail: Arc::clone(&fail),
            calls: Arc::clone(&calls),
        })
        .listener_options(ListenerOptions {
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                delays: Vec::new(),
            },
            ..ListenerOptions::default()
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    manager.send_event(&Placed { n: 1 }).await.expect("send");
    let queue = "orders.replay.Placed::Picky";
    assert!(eventually(|| manager.stats().dead_lettered == 1).await);
    let letters = manager.dead_letters(queue, 10).await.expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].headers.get(eventing::header::DEAD_LETTER_REASON),
        Some("listener failed 2 times; last error: not today")
    );
    fail.store(false, Ordering::SeqCst);
    assert_eq!(
        manager
            .replay_dead_letters(queue, 10)
            .await
            .expect("replay"),
        1
    );
    assert!(eventually(|| manager.stats().handled == 1).await);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        manager
            .dead_letters(queue, 10)
            .await
            .expect("list")
            .is_empty()
    );
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn oversized_body_is_dead_lettered_on_receive() {
    let broker = MemoryProvider::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let receiver = EventManager::builder()
        .provider(broker.clone())
        .var("env", "big")
        .max_body_size(8)
        .only_bound_listeners()
        .listener(Picky {
            fail: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            calls: Arc::clone(&calls),
        })
        .build()
        .await
        .expect("build receiver");
    receiver.start().await.expect("start");
    // The sender allows more than the receiver: `{"n":123456789}` is 15 bytes.
    let sender = EventManager::builder()
        .provider(broker.clone())
        .var("env", "big")
        .build()
        .await
        .expect("build sender");
    sender
        .send_event(&Placed { n: 123_456_789 })
        .await
        .expect("send");
    sender.send_event(&Placed { n: 1 }).await.expect("send");
    assert!(
        eventually(|| receiver.stats().dead_lettered == 1 && receiver.stats().handled == 1).await
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the listener saw only the small one"
    );
    let letters = receiver
        .dead_letters("orders.big.Placed::Picky", 10)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].headers.get(eventing::header::DEAD_LETTER_REASON),
        Some("body of 15 bytes exceeds the limit of 8 bytes (max_body_size)")
    );
    assert_eq!(letters[0].body.len(), 15, "the dead letter keeps the body");
    receiver.shutdown().await.expect("shutdown");
}
