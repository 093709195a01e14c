//! Handler kinds (competing, per process, singleton) and versioned events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventing::memory::MemoryProvider;
use eventing::provider::Route;
use eventing::{
    Context, Envelope, Event, EventListener, EventManager, ListenerResult, event, event_listener,
    header,
};
use serde::{Deserialize, Serialize};

/// A versioned event.
#[event(name = "Priced", version = "1.2")]
#[derive(Serialize, Deserialize)]
pub struct Priced {
    /// Amount.
    pub cents: u64,
}

/// Accepts 1.x only.
#[event_listener(Priced, name = "V1Reader", version = "<2.0")]
pub struct V1Reader {
    calls: Arc<AtomicUsize>,
}

impl EventListener<Priced> for V1Reader {
    async fn on(&self, _: Priced, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// One of two singleton listeners of `Priced`.
#[event_listener(Priced, name = "Invoicer", singleton = true)]
pub struct Invoicer {
    calls: Arc<AtomicUsize>,
}

/// The other singleton listener of `Priced`.
#[event_listener(Priced, name = "Auditor", singleton = true)]
pub struct Auditor {
    calls: Arc<AtomicUsize>,
}

impl EventListener<Priced> for Invoicer {
    async fn on(&self, _: Priced, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl EventListener<Priced> for Auditor {
    async fn on(&self, _: Priced, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
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
async fn out_of_range_versions_are_dead_lettered_not_handled() {
    assert_eq!(Priced::descriptor().version(), Some("1.2.0"));
    let broker = MemoryProvider::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = EventManager::builder()
        .provider(broker.clone())
        .only_bound_listeners()
        .listener(V1Reader {
            calls: Arc::clone(&calls),
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    manager
        .send_event(&Priced { cents: 5 })
        .await
        .expect("send");
    assert!(eventually(|| calls.load(Ordering::SeqCst) == 1).await);

    for version in [Some("2.1.0"), None, Some("two")] {
        let mut envelope = Envelope::new(
            "Priced",
            eventing::codec::JSON,
            Bytes::from_static(b"{\"cents\":1}"),
        );
        if let Some(version) = version {
            envelope.headers.insert(header::EVENT_VERSION, version);
        }
        let route = Route::new("Priced", false);
        manager
            .provider()
            .publish(route, envelope)
            .await
            .expect("publish");
    }
    let queue = "Priced::V1Reader";
    assert!(eventually(|| manager.stats().dead_lettered == 3).await);
    let letters = manager.dead_letters(queue, 10).await.expect("list");
    let reasons: Vec<&str> = letters
        .iter()
        .filter_map(|l| l.headers.get(header::DEAD_LETTER_REASON))
        .collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons[0].contains("event version 2.1.0 is outside the range <2.0"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("no `event-version` header"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("malformed `event-version` header `two`"),
        "{reasons:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "never handed to the listener"
    );
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn singleton_listeners_share_one_queue_and_handle_each_event_once() {
    let broker = MemoryProvider::new();
    let invoiced = Arc::new(AtomicUsize::new(0));
    let audited = Arc::new(AtomicUsize::new(0));
    let mut managers = Vec::new();
    for server in ["a", "b"] {
        let manager = EventManager::builder()
            .provider(broker.clone())
            .server_name(server)
            .only_bound_listeners()
            .listener(Invoicer {
                calls: Arc::clone(&invoiced),
            })
            .listener(Auditor {
                calls: Arc::clone(&audited),
            })
            .build()
            .await
            .expect("build");
        let queues: Vec<String> = manager
            .topology()
            .expect("topology")
            .queues
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(queues, ["Priced::singleton", "Priced::singleton"]);
        manager.start().await.expect("start");
        managers.push(manager);
    }
    for cents in 0..40 {
        managers[0]
            .send_event(&Priced { cents })
            .await
            .expect("send");
    }
    let total = || invoiced.load(Ordering::SeqCst) + audited.load(Ordering::SeqCst);
    assert!(eventually(|| total() == 40).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        total(),
        40,
        "each event handled exactly once among all singleton listeners"
    );
    assert!(invoiced.load(Ordering::SeqCst) > 0 && audited.load(Ordering::SeqCst) > 0);
    assert_eq!(
        broker
            .queue_names()
            .iter()
            .filter(|q| !q.ends_with(".dlq"))
            .count(),
        1,
        "{:?}",
        broker.queue_names()
    );
    for manager in managers {
        manager.shutdown().await.expect("shutdown");
    }
}

/// A step of a chain: re-sends `Hop` with `n - 1` and records the trace it saw.
#[event(name = "Hop")]
#[derive(Serialize, Deserialize)]
pub struct Hop {
    /// Hops left.
    pub n: u32,
}

/// What each hop saw: its `traceparent` header and the current trace in `on`.
type Hops = Arc<std::sync::Mutex<Vec<(String, Option<eventing::trace::TraceContext>)>>>;

/// Records `(traceparent header, current trace)` and forwards the chain.
#[event_listener(Hop, name = "Hopper")]
pub struct Hopper {
    seen: Hops,
    manager: Arc<tokio::sync::OnceCell<EventManager>>,
}

impl EventListener<Hop> for Hopper {
    async fn on(&self, hop: Hop, ctx: &Context) -> ListenerResult {
        let header = ctx
            .header(eventing::trace::TRACEPARENT)
            .unwrap_or("")
            .to_string();
        self.seen
            .lock()
            .map_err(|_| "poisoned")?
            .push((header, eventing::trace::current_trace()));
        if hop.n > 0 {
            if let Some(manager) = self.manager.get() {
                manager.send_event(&Hop { n: hop.n - 1 }).await?;
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn trace_context_follows_a_chain_of_events() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cell = Arc::new(tokio::sync::OnceCell::new());
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .pipeline(eventing::trace::TraceContextPipeline)
        .only_bound_listeners()
        .listener(Hopper {
            seen: Arc::clone(&seen),
            manager: Arc::clone(&cell),
        })
        .build()
        .await
        .expect("build");
    cell.set(manager.clone()).ok();
    manager.start().await.expect("start");
    let root = eventing::trace::TraceContext::new_root();
    eventing::trace::with_trace(root, manager.send_event(&Hop { n: 2 }))
        .await
        .expect("send");
    assert!(eventually(|| seen.lock().map(|s| s.len()).unwrap_or(0) == 3).await);
    let seen = seen.lock().expect("lock").clone();
    let mut span_ids = Vec::new();
    for (header, current) in &seen {
        let parsed = eventing::trace::TraceContext::parse(header).expect("valid traceparent");
        assert_eq!(
            parsed.trace_id(),
            root.trace_id(),
            "one trace along the chain"
        );
        assert_eq!(
            current.as_ref(),
            Some(&parsed),
            "the received context is current in `on`"
        );
        span_ids.push(parsed.span_id());
    }
    span_ids.push(root.span_id());
    span_ids.sort();
    span_ids.dedup();
    assert_eq!(span_ids.len(), 4, "each hop is a new span");
    manager.shutdown().await.expect("shutdown");
}
