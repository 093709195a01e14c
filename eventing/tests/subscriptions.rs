//! Listener functions (`#[event_listener]` on an `async fn`) and run-time
//! subscriptions (`EventManager::subscribe`) on the in-process provider: delivery,
//! state, competing with a compiled listener, unsubscribing (draining, removing a
//! per-process queue), the typed errors, and concurrency of async callbacks. The
//! same behaviours run on every broker through the kit (`eventing_test::subscriptions`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventing::manager::{ListenerKind, ListenerState};
use eventing::memory::MemoryProvider;
use eventing::topology::QueueSpec;
use eventing::{
    Context, Error, EventManager, ListenerOrigin, ListenerResult, State, SubscribeOptions, event,
    event_listener,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// An event for the listener functions.
#[event(name = "fns.{env}.Paid")]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Paid {
    /// Cents.
    pub cents: u64,
}

/// What the stateful listener function adds to.
#[derive(Clone, Default)]
pub struct Ledger(Arc<AtomicUsize>);

/// A listener function without state or context.
#[event_listener(Paid, name = "plain")]
async fn plain(paid: Paid) -> ListenerResult {
    PLAIN.fetch_add(paid.cents as usize, Ordering::SeqCst);
    Ok(())
}

static PLAIN: AtomicUsize = AtomicUsize::new(0);

/// A per-process listener function with context and state.
#[event_listener(Paid, name = "ledger", per_process = true)]
async fn book(paid: Paid, ctx: &Context, State(ledger): State<Ledger>) -> ListenerResult {
    assert_eq!(ctx.listener().name(), "ledger");
    ledger.0.fetch_add(paid.cents as usize, Ordering::SeqCst);
    Ok(())
}

/// State first, then an owned context.
#[event_listener(Paid, name = "owned")]
async fn owned(_paid: Paid, ledger: State<Ledger>, ctx: Context) -> ListenerResult {
    let _ = (ledger.0.0.load(Ordering::SeqCst), ctx.message_id());
    Ok(())
}

async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_functions_run_with_their_state() {
    let ledger = Ledger::default();
    let manager = EventManager::builder()
        .url("memory://fns-state")
        .server_name("s1")
        .var("env", "state")
        .state(ledger.clone())
        .state(Seen(mpsc::unbounded_channel().0))
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    let listeners = manager.subscriptions().expect("list");
    let ledger_info = listeners
        .iter()
        .find(|l| l.listener == "ledger")
        .expect("the function is listed");
    assert_eq!(ledger_info.origin, ListenerOrigin::Function);
    assert_eq!(ledger_info.kind, ListenerKind::PerProcess);
    assert_eq!(ledger_info.queue.name, "fns.state.Paid::ledger-s1");
    assert!(
        ledger_info.type_name.ends_with("::book"),
        "{}",
        ledger_info.type_name
    );
    assert_eq!(ledger_info.state, Some(ListenerState::Consuming));
    for cents in [100, 20, 3] {
        manager.send_event(&Paid { cents }).await.expect("send");
    }
    assert!(until(WAIT, || ledger.0.load(Ordering::SeqCst) == 123).await);
    assert!(until(WAIT, || PLAIN.load(Ordering::SeqCst) >= 123).await);
    // The registry and the topology show the functions like any listener.
    assert!(
        eventing::registry::listeners()
            .iter()
            .any(|l| l.name() == "plain" && l.origin() == ListenerOrigin::Function)
    );
    let topology = manager.topology().expect("topology").to_string();
    assert!(
        topology.contains("queue fns.state.Paid::ledger-s1 <- listener ledger (per process)"),
        "{topology}"
    );
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_listener_function_without_its_state_fails_start() {
    let manager = EventManager::builder()
        .url("memory://fns-no-state")
        .var("env", "nostate")
        .build()
        .await
        .expect("build");
    let error = manager.start().await.expect_err("no Ledger");
    assert!(
        matches!(error, Error::StateNotProvided { listener, state, .. } if (listener == "ledger" || listener == "owned") && state == "Ledger"),
        "{error}"
    );
    assert!(
        error.to_string().contains("EventManagerBuilder::state"),
        "{error}"
    );
}

#[tokio::test]
async fn a_listener_function_is_selected_by_passing_it() {
    let manager = EventManager::builder()
        .url("memory://fns-select")
        .var("env", "select")
        .only_bound_listeners()
        .listener(plain)
        .build()
        .await
        .expect("build");
    let names: Vec<&str> = manager
        .topology()
        .expect("topology")
        .queues
        .iter()
        .map(|q| q.listener)
        .collect();
    assert_eq!(names, vec!["plain"]);
}

// ---------------------------------------------------------------------------------
// run-time subscriptions

/// An event for subscriptions.
#[event(name = "subs.{env}.Job", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Number.
    pub n: u32,
}

/// A compiled listener the subscriptions may compete with.
#[event_listener(Job, name = "worker")]
async fn compiled_worker(job: Job, State(seen): State<Seen>) -> ListenerResult {
    let _ = seen.0.send(("compiled", job.n));
    Ok(())
}

/// Where the compiled worker reports.
#[derive(Clone)]
pub struct Seen(mpsc::UnboundedSender<(&'static str, u32)>);

async fn manager(broker: &str, server: &str, env: &str) -> EventManager {
    EventManager::builder()
        .provider(MemoryProvider::named(broker))
        .server_name(server)
        .var("env", env)
        .only_bound_listeners()
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build")
}

async fn drain(
    rx: &mut mpsc::UnboundedReceiver<(&'static str, u32)>,
    n: usize,
) -> Vec<(&'static str, u32)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(item)) => got.push(item),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_before_start_receives_and_is_listed() {
    let m = manager("subs-before", "s1", "before").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = m
        .subscribe::<Job>(
            "audit",
            SubscribeOptions::new().metadata("team", "ops"),
            move |job, ctx| {
                let tx = tx.clone();
                async move {
                    assert_eq!(ctx.listener().name(), "audit");
                    tx.send(("audit", job.n))?;
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribe before start");
    assert_eq!(sub.queue(), "subs.before.Job::audit");
    let listed = m.subscriptions().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, Some(sub.id()));
    assert_eq!(listed[0].state, None, "not started yet");
    assert_eq!(listed[0].metadata, vec![("team".into(), "ops".into())]);
    assert!(
        m.topology()
            .expect("topology")
            .queues
            .iter()
            .any(|q| q.name == sub.queue())
    );
    let doc = eventing::asyncapi::document(&m, "subs", "1").expect("asyncapi");
    assert!(
        doc["operations"]
            .as_object()
            .expect("operations")
            .keys()
            .any(|k| k.starts_with("receive.subs.before.Job__audit")),
        "{doc:#}"
    );
    m.start().await.expect("start");
    for n in 0..5 {
        m.send_event(&Job { n }).await.expect("send");
    }
    let got = drain(&mut rx, 5).await;
    assert_eq!(got.len(), 5);
    let health = m.health();
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.listeners[0].queue, sub.queue());
    // The listener sends before it returns: the runtime counts the fifth a moment later.
    let counted = until(Duration::from_secs(5), || m.stats().handled == 5).await;
    assert!(counted, "handled: {}", m.stats().handled);
    assert!(m.queues().iter().any(|q| q.name == sub.queue()));
    m.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_collide_unless_asked_to_compete() {
    let m = manager("subs-collide", "s1", "collide").await;
    m.start().await.expect("start");
    let noop = |_: Job, _: Context| async { Ok(()) };
    // A compiled listener of the event has this name (even one this manager does not run).
    let error = m
        .subscribe::<Job>("worker", SubscribeOptions::new(), noop)
        .await
        .expect_err("collides with the compiled `worker`");
    assert!(
        matches!(&error, Error::ListenerNameTaken { name, existing, .. } if name == "worker" && existing.contains("compiled_worker")),
        "{error}"
    );
    let first = m
        .subscribe::<Job>("twice", SubscribeOptions::new(), noop)
        .await
        .expect("subscribe");
    let error = m
        .subscribe::<Job>("twice", SubscribeOptions::new(), noop)
        .await
        .expect_err("collides with the first subscription");
    assert!(
        error
            .to_string()
            .contains(&format!("subscription {}", first.id())),
        "{error}"
    );
    // Competing is allowed only with a listener of the same kind.
    let error = m
        .subscribe::<Job>(
            "twice",
            SubscribeOptions::new()
                .per_process(true)
                .compete_with_existing(),
            noop,
        )
        .await
        .expect_err("a per-process queue is another queue");
    assert!(error.to_string().contains("same kind"), "{error}");
    let second = m
        .subscribe::<Job>(
            "twice",
            SubscribeOptions::new().compete_with_existing(),
            noop,
        )
        .await
        .expect("joins the queue");
    assert_eq!(second.queue(), first.queue());
    for bad in ["", "two words"] {
        assert!(matches!(
            m.subscribe::<Job>(bad, SubscribeOptions::new(), noop).await,
            Err(Error::InvalidListenerName { .. })
        ));
    }
    // Unsubscribing twice is a typed error.
    let id = first.id();
    first.unsubscribe().await.expect("unsubscribe");
    assert!(
        matches!(m.unsubscribe(id).await, Err(Error::UnknownSubscription { id: n }) if n == id.get())
    );
    m.shutdown().await.expect("shutdown");
    // After shutdown: typed errors.
    assert!(matches!(
        m.subscribe::<Job>("late", SubscribeOptions::new(), noop)
            .await,
        Err(Error::ShutDown {
            operation: "subscribe()"
        })
    ));
    assert!(matches!(
        second.unsubscribe().await,
        Err(Error::UnknownSubscription { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_competes_with_the_compiled_listener_and_stops_cleanly() {
    const N: u32 = 60;
    let broker = "subs-compete";
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Server a runs the compiled `worker`.
    let a = EventManager::builder()
        .provider(MemoryProvider::named(broker))
        .server_name("a")
        .var("env", "compete")
        .only_bound_listeners()
        .listener(compiled_worker)
        .state(Seen(tx.clone()))
        .build()
        .await
        .expect("build a");
    a.start().await.expect("start a");
    // Server b subscribes under the same name at run time, asking to compete.
    let b = manager(broker, "b", "compete").await;
    b.start().await.expect("start b");
    let started = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&started);
    let sub_tx = tx.clone();
    let sub = b
        .subscribe::<Job>(
            "worker",
            SubscribeOptions::new().compete_with_existing(),
            move |job, _| {
                let tx = sub_tx.clone();
                let started = Arc::clone(&counter);
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tx.send(("subscription", job.n))?;
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribe");
    assert_eq!(sub.queue(), "subs.compete.Job::worker");
    for n in 0..N {
        a.send_event(&Job { n }).await.expect("send");
    }
    // Unsubscribe mid-stream: running calls finish, the rest goes to `a`.
    assert!(until(WAIT, || started.load(Ordering::SeqCst) >= 3).await);
    sub.unsubscribe().await.expect("unsubscribe");
    let started_by_sub = started.load(Ordering::SeqCst);
    let got = drain(&mut rx, N as usize).await;
    let by_sub = got.iter().filter(|(who, _)| *who == "subscription").count() as u32;
    assert_eq!(
        by_sub, started_by_sub,
        "every call the subscription started finished before unsubscribe returned, and no more came"
    );
    let mut numbers: Vec<u32> = got.iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "each event once, none lost"
    );
    assert!(by_sub > 0 && by_sub < N, "both competed: {by_sub} of {N}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "nothing handled twice");
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_a_per_process_subscription_removes_its_queue() {
    let broker = "subs-per-process";
    let m = manager(broker, "s1", "pp").await;
    m.start().await.expect("start");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = m
        .subscribe::<Job>(
            "cache",
            SubscribeOptions::new().per_process(true),
            move |job, _| {
                let tx = tx.clone();
                async move {
                    tx.send(("cache", job.n))?;
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribe");
    assert_eq!(sub.queue(), "subs.pp.Job::cache-s1");
    m.send_event(&Job { n: 1 }).await.expect("send");
    assert_eq!(drain(&mut rx, 1).await, vec![("cache", 1)]);
    let spec = QueueSpec::new("subs.pp.Job", "cache", true, true, "s1");
    assert_eq!(
        m.provider().dead_letter_depth(&spec).await.expect("exists"),
        0
    );
    sub.unsubscribe().await.expect("unsubscribe");
    assert!(matches!(
        m.provider().dead_letter_depth(&spec).await,
        Err(Error::QueueNotFound { .. })
    ));
    assert!(m.subscriptions().expect("list").is_empty());
    assert!(m.queues().is_empty());
    m.send_event(&Job { n: 2 })
        .await
        .expect("send with nobody listening");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(rx.try_recv().is_err(), "stopped receiving");
    m.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callbacks_on_one_event_run_concurrently() {
    let m = manager("subs-concurrent", "s1", "concurrent").await;
    m.start().await.expect("start");
    let delays = [300u64, 600, 900];
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (i, delay) in delays.into_iter().enumerate() {
        let tx = tx.clone();
        m.subscribe::<Job>(format!("slow-{i}"), SubscribeOptions::new(), move |_, _| {
            let tx = tx.clone();
            async move {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(delay)).await;
                tx.send((start, Instant::now()))?;
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    }
    let sent = Instant::now();
    m.send_event(&Job { n: 0 }).await.expect("send");
    let mut spans = Vec::new();
    for _ in 0..3 {
        spans.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("in time")
                .expect("span"),
        );
    }
    let total = spans.iter().map(|(_, end)| *end).max().expect("three") - sent;
    let last_start = spans.iter().map(|(start, _)| *start).max().expect("three");
    let first_end = spans.iter().map(|(_, end)| *end).min().expect("three");
    println!("three callbacks of 300/600/900 ms took {total:?} in all");
    assert!(last_start < first_end, "all three ran at one time");
    assert!(
        total < Duration::from_millis(1500),
        "near the slowest (900 ms), not the sum (1800 ms): {total:?}"
    );
    m.shutdown().await.expect("shutdown");
}
