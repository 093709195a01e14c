// Every option of `#[event]` and `#[event_listener]`, as their docs list them (the
// docs' examples are `ignore`d doctests of a proc-macro crate; this compiles them).
use std::sync::atomic::{AtomicUsize, Ordering};

use eventing::{event, event_listener, Context, Event, EventListener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Joined {
    name: String,
}

#[event(version = "1.2")]
#[derive(Serialize, Deserialize)]
struct Greeted {
    name: String,
}

#[event(name = "orders.{env}.Placed", durable = true, version = "1.2", codec = "json", crate = "::eventing")]
#[derive(Serialize, Deserialize)]
enum OrderPlaced {
    Small(u32),
    Large { amount: u64 },
}

#[event_listener(Greeted, name = "Printer", version = "<2.0")]
struct Printer;

impl EventListener<Greeted> for Printer {
    async fn on(&self, event: Greeted, _ctx: &Context) -> ListenerResult {
        println!("hello, {}", event.name);
        Ok(())
    }
}

#[event_listener(Greeted, name = "Counter", per_process = true)]
struct Counter {
    seen: AtomicUsize,
}

impl EventListener<Greeted> for Counter {
    async fn on(&self, _event: Greeted, _ctx: &Context) -> ListenerResult {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[event_listener(OrderPlaced, name = "Biller", singleton = true, per_process = false, crate = "::eventing")]
struct Biller;

impl EventListener<OrderPlaced> for Biller {
    async fn on(&self, event: OrderPlaced, _ctx: &Context) -> ListenerResult {
        let (OrderPlaced::Small(_) | OrderPlaced::Large { .. }) = event;
        Ok(())
    }
}

fn main() {
    let joined = Joined::descriptor();
    assert_eq!(joined.name(), "Joined");
    assert!(!joined.durable());
    assert_eq!(joined.version(), None);
    assert!(joined.codec().is_none());
    assert_eq!(Greeted::descriptor().version(), Some("1.2.0"));

    let placed = OrderPlaced::descriptor();
    assert_eq!(placed.name(), "orders.{env}.Placed");
    assert!(placed.durable());
    assert_eq!(placed.version(), Some("1.2.0"));
    assert!(placed.codec().is_some());

    let listeners = eventing::registry::listeners();
    let find = |name: &str| {
        listeners
            .iter()
            .find(|listener| listener.name() == name)
            .unwrap_or_else(|| panic!("{name} is registered"))
    };
    assert_eq!(find("Printer").version(), Some("<2.0"));
    assert!(find("Printer").constructible());
    assert!(find("Counter").per_process());
    assert!(!find("Counter").constructible());
    assert!(find("Biller").singleton());
    assert!(!find("Biller").per_process());
    let _ = Counter { seen: AtomicUsize::new(0) }.seen.load(Ordering::Relaxed);
}
