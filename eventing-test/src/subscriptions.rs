//! Run-time subscriptions (`EventManager::subscribe`) on every provider: a
//! subscriber receives events, competes with a compiled listener of the same name
//! when asked to, stops receiving after `unsubscribe` without acknowledging what it
//! did not handle, its per-process queue is gone, and several async callbacks on
//! one event run concurrently. Run by [`conformance_tests!`](crate::conformance_tests)
//! (so by every provider's kit target); the test names all contain `subscri`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventing::topology::QueueSpec;
use eventing::{
    Context, Error, EventListener, EventManager, ListenerResult, SubscribeOptions, event,
    event_listener,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::harness::{Harness, TestEnv, bounded_cleanup};

const WAIT: Duration = Duration::from_secs(20);

/// The event the subscription cases send.
#[event(name = "subs.{env}.Task", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubTask {
    /// Sequence number.
    pub n: u32,
}

/// Who handled which task, in order.
#[derive(Default)]
pub struct Handled {
    seen: Mutex<Vec<(String, u32)>>,
    changed: Notify,
}

impl Handled {
    /// An empty record.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Records that `who` handled task `n`.
    pub fn record(&self, who: &str, n: u32) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((who.to_string(), n));
        self.changed.notify_waiters();
    }

    /// Everything recorded so far.
    pub fn seen(&self) -> Vec<(String, u32)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` were recorded, at most `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<(String, u32)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let seen = self.seen();
            if seen.len() >= n || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.seen();
            }
        }
    }
}

/// The compiled listener a subscription competes with.
#[event_listener(SubTask, name = "Worker")]
pub struct SubWorker {
    /// Where to record.
    pub handled: Arc<Handled>,
}

impl EventListener<SubTask> for SubWorker {
    async fn on(&self, task: SubTask, _: &Context) -> ListenerResult {
        self.handled.record("compiled", task.n);
        Ok(())
    }
}

/// A callback that records under `who`, after `delay`, counting the calls started.
fn recording(
    handled: &Arc<Handled>,
    who: &'static str,
    delay: Duration,
    started: &Arc<AtomicU32>,
) -> impl eventing::ListenerFn<SubTask> {
    let handled = Arc::clone(handled);
    let started = Arc::clone(started);
    move |task: SubTask, _ctx: Context| {
        let handled = Arc::clone(&handled);
        let started = Arc::clone(&started);
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            handled.record(who, task.n);
            Ok(())
        }
    }
}

/// Removes queues the test's managers no longer list (unsubscribed ones).
async fn cleanup(harness: &dyn Harness, queues: &[QueueSpec]) {
    let events: Vec<String> = queues.iter().map(|q| q.event.clone()).collect();
    bounded_cleanup(harness.cleanup(queues, &events)).await;
}

/// A subscriber receives events; after `unsubscribe` it receives no more, and its
/// competing queue keeps them for the next instance.
pub async fn subscriber_receives_events(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let manager = env.start(env.builder("a")).await;
    let handled = Handled::new();
    let started = Arc::new(AtomicU32::new(0));
    let sub = manager
        .subscribe::<SubTask>(
            "Audit",
            SubscribeOptions::new(),
            recording(&handled, "audit", Duration::ZERO, &started),
        )
        .await
        .expect("subscribe");
    assert_eq!(sub.queue(), format!("subs.{}.Task::Audit", env.env));
    let spec = manager
        .queues()
        .into_iter()
        .find(|q| q.name == sub.queue())
        .expect("the subscription's queue is listed");
    assert!(
        manager
            .health()
            .listeners
            .iter()
            .any(|l| l.queue == sub.queue()),
        "{}: health shows the subscription",
        harness.name()
    );
    for n in 0..5 {
        manager.send_event(&SubTask { n }).await.expect("send");
    }
    let got = handled.wait_for(5, WAIT).await;
    assert_eq!(
        got.len(),
        5,
        "{}: the subscriber got every event",
        harness.name()
    );
    sub.unsubscribe().await.expect("unsubscribe");
    assert!(!manager.queues().iter().any(|q| q.name == spec.name));
    for n in 5..8 {
        manager.send_event(&SubTask { n }).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handled.seen().len(),
        5,
        "{}: nothing arrives after unsubscribe",
        harness.name()
    );
    // The queue stayed (competing): subscribing again under the name gets them.
    let again = manager
        .subscribe::<SubTask>(
            "Audit",
            SubscribeOptions::new(),
            recording(&handled, "audit again", Duration::ZERO, &started),
        )
        .await
        .expect("subscribe again");
    let got = handled.wait_for(8, WAIT).await;
    let later: Vec<u32> = got
        .iter()
        .filter(|(who, _)| who == "audit again")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        sorted(later),
        vec![5, 6, 7],
        "{}: the competing queue kept what was sent meanwhile",
        harness.name()
    );
    again.unsubscribe().await.expect("unsubscribe");
    env.finish().await;
    cleanup(harness, &[spec]).await;
}

fn sorted(mut numbers: Vec<u32>) -> Vec<u32> {
    numbers.sort_unstable();
    numbers
}

/// A run-time subscriber with a compiled listener's name competes with it when
/// asked to (and is refused otherwise); unsubscribing mid-stream lets its running
/// calls finish, acknowledges only what it handled, and the compiled listener
/// gets the rest: every event handled exactly once.
pub async fn subscriber_competes_with_compiled_listener(harness: &dyn Harness) {
    const N: u32 = 40;
    let mut env = TestEnv::new(harness);
    let handled = Handled::new();
    let a = env
        .start(env.builder("a").listener(SubWorker {
            handled: Arc::clone(&handled),
        }))
        .await;
    let b = env.start(env.builder("b")).await;
    let started = Arc::new(AtomicU32::new(0));
    let refused = b
        .subscribe::<SubTask>(
            "Worker",
            SubscribeOptions::new(),
            recording(&handled, "subscription", Duration::ZERO, &started),
        )
        .await
        .expect_err("the name is the compiled listener's");
    assert!(
        matches!(&refused, Error::ListenerNameTaken { existing, .. } if existing.contains("SubWorker")),
        "{refused}"
    );
    let sub = b
        .subscribe::<SubTask>(
            "Worker",
            SubscribeOptions::new().compete_with_existing(),
            recording(
                &handled,
                "subscription",
                Duration::from_millis(50),
                &started,
            ),
        )
        .await
        .expect("subscribe");
    assert_eq!(sub.queue(), format!("subs.{}.Task::Worker", env.env));
    for n in 0..N {
        a.send_event(&SubTask { n }).await.expect("send");
    }
    let deadline = Instant::now() + WAIT;
    while started.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sub.unsubscribe().await.expect("unsubscribe");
    let started_by_sub = started.load(Ordering::SeqCst);
    let finished_by_sub = handled
        .seen()
        .iter()
        .filter(|(who, _)| who == "subscription")
        .count() as u32;
    assert_eq!(
        finished_by_sub,
        started_by_sub,
        "{}: every call the subscriber started finished before unsubscribe returned",
        harness.name()
    );
    let got = handled.wait_for(N as usize, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if handled.seen().len() > got.len() {
        handled.seen()
    } else {
        got
    };
    let by_sub = got.iter().filter(|(who, _)| who == "subscription").count() as u32;
    let by_compiled = got.len() as u32 - by_sub;
    let numbers = sorted(got.iter().map(|(_, n)| *n).collect());
    let mut unique = numbers.clone();
    unique.dedup();
    let lost = N - unique.len() as u32;
    let duplicated = numbers.len() as u32 - unique.len() as u32;
    println!(
        "subscriber_competes_with_compiled_listener {}: sent={N} by_subscription={by_sub} by_compiled={by_compiled} duplicated={duplicated} lost={lost}",
        harness.name()
    );
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "{}: every event exactly once (lost={lost}, duplicated={duplicated})",
        harness.name()
    );
    assert_eq!(
        by_sub,
        started_by_sub,
        "{}: no call after unsubscribe",
        harness.name()
    );
    assert!(
        by_sub > 0 && by_compiled > 0,
        "{}: both competed (subscription {by_sub}, compiled {by_compiled})",
        harness.name()
    );
    env.finish().await;
}

/// A per-process subscription's queue is gone after `unsubscribe`: the provider
/// says so, and what is sent meanwhile never reaches a later subscription of the
/// same name.
pub async fn unsubscribed_per_process_queue_is_gone(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let manager = env.start(env.builder("a")).await;
    let handled = Handled::new();
    let started = Arc::new(AtomicU32::new(0));
    let per_process = || SubscribeOptions::new().per_process(true);
    let sub = manager
        .subscribe::<SubTask>(
            "Cache",
            per_process(),
            recording(&handled, "first", Duration::ZERO, &started),
        )
        .await
        .expect("subscribe");
    assert_eq!(sub.queue(), format!("subs.{}.Task::Cache-a", env.env));
    let spec = manager
        .queues()
        .into_iter()
        .find(|q| q.name == sub.queue())
        .expect("listed");
    manager.send_event(&SubTask { n: 1 }).await.expect("send");
    assert_eq!(
        handled.wait_for(1, WAIT).await.len(),
        1,
        "{}",
        harness.name()
    );
    sub.unsubscribe().await.expect("unsubscribe");
    assert!(
        manager.subscriptions().expect("list").is_empty(),
        "{}",
        harness.name()
    );
    // The provider no longer has the queue (some remove it a moment after the
    // consumer went away).
    let provider = manager.provider();
    if provider.capabilities().dead_letters {
        let deadline = Instant::now() + WAIT;
        loop {
            match provider.dead_letter_depth(&spec).await {
                Err(Error::QueueNotFound { .. }) => break,
                Err(Error::Unsupported { operation, .. }) => {
                    println!(
                        "unsubscribed_per_process_queue_is_gone {}: no queue to look up ({operation})",
                        harness.name()
                    );
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "{}: per-process queue still there after unsubscribe: {other:?}",
                    harness.name()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for n in 2..5 {
        manager
            .send_event(&SubTask { n })
            .await
            .expect("send meanwhile");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = manager
        .subscribe::<SubTask>(
            "Cache",
            per_process(),
            recording(&handled, "second", Duration::ZERO, &started),
        )
        .await
        .expect("subscribe again");
    manager.send_event(&SubTask { n: 9 }).await.expect("send");
    handled.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second: Vec<u32> = handled
        .seen()
        .iter()
        .filter(|(who, _)| who == "second")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        second,
        vec![9],
        "{}: the old queue (and what was sent to it meanwhile) is gone",
        harness.name()
    );
    again.unsubscribe().await.expect("unsubscribe");
    env.finish().await;
    cleanup(harness, &[spec]).await;
}

/// Three async callbacks with different delays on one event run at one time: the
/// total is near the slowest, not the sum.
pub async fn subscribed_callbacks_run_concurrently(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let manager: EventManager = env.start(env.builder("a")).await;
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let done = Arc::new(Notify::new());
    let delays = [300u64, 600, 900];
    for (i, delay) in delays.into_iter().enumerate() {
        let spans = Arc::clone(&spans);
        let done = Arc::clone(&done);
        manager
            .subscribe::<SubTask>(format!("Slow{i}"), SubscribeOptions::new(), move |_, _| {
                let spans = Arc::clone(&spans);
                let done = Arc::clone(&done);
                async move {
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    spans
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((start, Instant::now()));
                    done.notify_waiters();
                    Ok(())
                }
            })
            .await
            .expect("subscribe");
    }
    let sent = Instant::now();
    manager.send_event(&SubTask { n: 0 }).await.expect("send");
    let deadline = tokio::time::Instant::now() + WAIT;
    let spans = loop {
        let notified = done.notified();
        let spans = spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if spans.len() >= 3 || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break spans;
        }
    };
    assert_eq!(spans.len(), 3, "{}: three callbacks ran", harness.name());
    let total = spans.iter().map(|(_, end)| *end).max().unwrap_or(sent) - sent;
    let last_start = spans.iter().map(|(start, _)| *start).max().unwrap_or(sent);
    let first_end = spans.iter().map(|(_, end)| *end).min().unwrap_or(sent);
    let sum: u64 = delays.iter().sum();
    println!(
        "subscribed_callbacks_run_concurrently {}: delays {delays:?} ms took {} ms in all (sum {sum} ms)",
        harness.name(),
        total.as_millis()
    );
    assert!(
        last_start < first_end,
        "{}: the three callbacks ran at one time",
        harness.name()
    );
    assert!(
        total < Duration::from_millis(sum),
        "{}: the total ({total:?}) is near the slowest, not the sum ({sum} ms)",
        harness.name()
    );
    env.finish().await;
}

/// Misuse is a typed error, never a panic: unsubscribing twice, a name taken by
/// another subscription, subscribing after `shutdown()`.
pub async fn subscription_misuse_is_a_typed_error(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let manager = env.start(env.builder("a")).await;
    let handled = Handled::new();
    let started = Arc::new(AtomicU32::new(0));
    let sub = manager
        .subscribe::<SubTask>(
            "Once",
            SubscribeOptions::new(),
            recording(&handled, "once", Duration::ZERO, &started),
        )
        .await
        .expect("subscribe");
    let spec = manager
        .queues()
        .into_iter()
        .find(|q| q.name == sub.queue())
        .expect("listed");
    let taken = manager
        .subscribe::<SubTask>(
            "Once",
            SubscribeOptions::new(),
            recording(&handled, "twice", Duration::ZERO, &started),
        )
        .await;
    assert!(
        matches!(taken, Err(Error::ListenerNameTaken { .. })),
        "{taken:?}"
    );
    let id = sub.id();
    manager.unsubscribe(id).await.expect("unsubscribe");
    let again = manager.unsubscribe(id).await;
    assert!(
        matches!(again, Err(Error::UnknownSubscription { .. })),
        "{again:?}"
    );
    manager.shutdown().await.expect("shutdown");
    let late = manager
        .subscribe::<SubTask>(
            "Late",
            SubscribeOptions::new(),
            recording(&handled, "late", Duration::ZERO, &started),
        )
        .await;
    assert!(matches!(late, Err(Error::ShutDown { .. })), "{late:?}");
    env.finish().await;
    cleanup(harness, &[spec]).await;
}

/// Generates the subscription cases for a harness (part of
/// [`conformance_tests!`](crate::conformance_tests)).
#[macro_export]
#[doc(hidden)]
macro_rules! subscription_tests {
    ($harness:expr) => {
        $crate::subscription_tests!(@cases $harness;
            subscriber_receives_events,
            subscriber_competes_with_compiled_listener,
            unsubscribed_per_process_queue_is_gone,
            subscribed_callbacks_run_concurrently,
            subscription_misuse_is_a_typed_error,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::suite_case(
                    ::core::stringify!($case),
                    || $harness,
                    $crate::__private::subscriptions::$case,
                );
            }
        )+
    };
}
