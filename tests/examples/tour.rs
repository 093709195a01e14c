//! A tour of the features beyond send-and-listen: an event chain A -> B -> C that
//! carries one trace (`traceparent`) and one call chain (event log, with
//! auto-captured log entries), versioned events with a listener that accepts only
//! an older range (its messages are dead-lettered with the reason), and singleton
//! listeners (exactly one of them handles each event).
//!
//! Runs on the in-process provider; set `EVENTING_URL` (and build with the
//! provider's feature) to run the same code on a broker:
//!
//! ```text
//! cargo run --example tour
//! EVENTING_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example tour --features amqp
//! EVENTING_URL=stomp://guest:guest@127.0.0.1:61613 cargo run --example tour --features stomp
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventing::eventlog::{CALL_CHAIN, EventLogConfig, EventLogEntry, EventLogPipeline};
use eventing::trace::{TraceContextPipeline, current_trace};
use eventing::{
    Context, EventListener, EventManager, ListenerResult, event, event_listener, header,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

#[cfg(feature = "amqp")]
use eventing_amqp as _;
#[cfg(feature = "nats")]
use eventing_nats as _;
#[cfg(feature = "redis")]
use eventing_redis as _;
#[cfg(feature = "stomp")]
use eventing_stomp as _;

/// A: an order was placed. Version 1.1 travels in the `event-version` header.
#[event(name = "tour.{env}.OrderPlaced", version = "1.1", durable = true)]
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
}

/// B: it was paid.
#[event(name = "tour.{env}.OrderPaid", durable = true)]
#[derive(Debug, Serialize, Deserialize)]
struct OrderPaid {
    order: u64,
}

/// C: it was shipped.
#[event(name = "tour.{env}.OrderShipped", durable = true)]
#[derive(Debug, Serialize, Deserialize)]
struct OrderShipped {
    order: u64,
}

/// The manager, for listeners that send the next event of the chain.
type Sender = Arc<OnceCell<EventManager>>;

async fn send_next<E: eventing::Event>(sender: &Sender, event: &E) -> ListenerResult {
    let manager = sender.get().ok_or("the manager is not built yet")?;
    manager.send_event(event).await?;
    Ok(())
}

/// A -> B.
#[event_listener(OrderPlaced, name = "Billing")]
struct Billing {
    sender: Sender,
}

impl EventListener<OrderPlaced> for Billing {
    async fn on(&self, placed: OrderPlaced, _: &Context) -> ListenerResult {
        send_next(
            &self.sender,
            &OrderPaid {
                order: placed.order,
            },
        )
        .await
    }
}

/// B -> C. A singleton: of all singleton listeners of `OrderPaid` (here also
/// `StandbyShipping`), on every server, exactly one handles each event.
#[event_listener(OrderPaid, name = "Shipping", singleton = true)]
struct Shipping {
    sender: Sender,
    calls: Arc<AtomicUsize>,
}

impl EventListener<OrderPaid> for Shipping {
    async fn on(&self, paid: OrderPaid, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        send_next(&self.sender, &OrderShipped { order: paid.order }).await
    }
}

/// The other singleton listener of `OrderPaid`, with the same job.
#[event_listener(OrderPaid, name = "StandbyShipping", singleton = true)]
struct StandbyShipping {
    sender: Sender,
    calls: Arc<AtomicUsize>,
}

impl EventListener<OrderPaid> for StandbyShipping {
    async fn on(&self, paid: OrderPaid, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        send_next(&self.sender, &OrderShipped { order: paid.order }).await
    }
}

/// The end of the chain: shows the trace and the call chain it arrived with.
#[event_listener(OrderShipped, name = "Notifier")]
struct Notifier {
    done: Arc<AtomicUsize>,
}

impl EventListener<OrderShipped> for Notifier {
    async fn on(&self, shipped: OrderShipped, ctx: &Context) -> ListenerResult {
        let trace = current_trace().map(|t| t.trace_id()).unwrap_or_default();
        println!(
            "order {} shipped: trace {trace}, call chain {}",
            shipped.order,
            ctx.header(CALL_CHAIN).unwrap_or("-")
        );
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Written for version 0.x of `OrderPlaced`: 1.1 is outside its range, so those
/// messages go to its dead-letter queue with the reason and never reach `on`.
#[event_listener(OrderPlaced, name = "LegacyReader", version = "<1.0")]
struct LegacyReader;

impl EventListener<OrderPlaced> for LegacyReader {
    async fn on(&self, placed: OrderPlaced, _: &Context) -> ListenerResult {
        Err(format!("LegacyReader must not see {placed:?}").into())
    }
}

/// Collects the auto-captured log entries (one per listener call).
#[event_listener(EventLogEntry, name = "LogCollector")]
struct LogCollector {
    entries: Arc<AtomicUsize>,
}

impl EventListener<EventLogEntry> for LogCollector {
    async fn on(&self, entry: EventLogEntry, _: &Context) -> ListenerResult {
        println!(
            "  log: {} handled {} -> {} in {} µs",
            entry.listener, entry.event, entry.outcome, entry.duration_us
        );
        self.entries.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let sender: Sender = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let shipping = Arc::new(AtomicUsize::new(0));
    let standby = Arc::new(AtomicUsize::new(0));
    let eventlog = EventLogConfig {
        service: "shop".into(),
        auto_capture: true,
        exclude: vec!["LogCollector".into()],
    };
    let manager = EventManager::builder()
        .url_from_env()
        .var("env", "demo")
        .var("eventlog", "tour.demo.eventlog")
        .pipeline(TraceContextPipeline)
        .pipeline(EventLogPipeline::new(eventlog))
        .only_bound_listeners()
        .listener(Billing {
            sender: Arc::clone(&sender),
        })
        .listener(Shipping {
            sender: Arc::clone(&sender),
            calls: Arc::clone(&shipping),
        })
        .listener(StandbyShipping {
            sender: Arc::clone(&sender),
            calls: Arc::clone(&standby),
        })
        .listener(Notifier {
            done: Arc::clone(&done),
        })
        .listener(LegacyReader)
        .listener(LogCollector {
            entries: Arc::clone(&entries),
        })
        .build()
        .await?;
    print!("{}", manager.topology()?);
    let _ = sender.set(manager.clone());
    manager.start().await?;

    const ORDERS: u64 = 3;
    for order in 1..=ORDERS {
        manager.send_event(&OrderPlaced { order }).await?;
    }

    // Wait (bounded) for the chains, their log entries (Billing, Shipping or
    // StandbyShipping, Notifier: 3 per order) and the legacy reader's dead letters.
    let legacy = "tour.demo.OrderPlaced::LegacyReader";
    let mut letters = Vec::new();
    for _ in 0..200 {
        letters = manager.dead_letters(legacy, 10).await?;
        if done.load(Ordering::SeqCst) as u64 == ORDERS
            && entries.load(Ordering::SeqCst) as u64 >= 3 * ORDERS
            && letters.len() as u64 >= ORDERS
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for letter in &letters {
        println!(
            "dead letter of LegacyReader: {}",
            letter
                .headers
                .get(header::DEAD_LETTER_REASON)
                .unwrap_or("(no reason)")
        );
    }
    let singletons = (
        shipping.load(Ordering::SeqCst),
        standby.load(Ordering::SeqCst),
    );
    println!(
        "OrderPaid singletons: Shipping handled {}, StandbyShipping {} (of {ORDERS} events)",
        singletons.0, singletons.1
    );
    manager.shutdown().await?;
    let shipped = done.load(Ordering::SeqCst) as u64;
    println!("done: {shipped} of {ORDERS} orders shipped");
    if shipped != ORDERS
        || (singletons.0 + singletons.1) as u64 != ORDERS
        || letters.len() as u64 != ORDERS
    {
        return Err("the tour did not complete".into());
    }
    Ok(())
}
