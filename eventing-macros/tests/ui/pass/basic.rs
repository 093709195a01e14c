use eventing::{event, event_listener, Context, Event, EventListener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Plain {
    x: u32,
}

#[event(name = "orders.{env}.Placed", durable = true)]
#[derive(Serialize, Deserialize)]
enum Placed {
    Small(u32),
    Large { amount: u64 },
}

#[event_listener(Plain)]
struct Stateless;

impl EventListener<Plain> for Stateless {
    async fn on(&self, event: Plain, _: &Context) -> ListenerResult {
        let _ = event.x;
        Ok(())
    }
}

/// One type listening to two events, with state.
#[event_listener(Plain, name = "Audit", per_process = true)]
#[event_listener(Placed, name = "Audit")]
struct Audit {
    _log: Vec<String>,
}

impl EventListener<Plain> for Audit {
    async fn on(&self, _: Plain, _: &Context) -> ListenerResult {
        Ok(())
    }
}

impl EventListener<Placed> for Audit {
    async fn on(&self, _: Placed, ctx: &Context) -> ListenerResult {
        Err(format!("no audit for {}", ctx.message_id()).into())
    }
}

fn main() {
    assert_eq!(Plain::descriptor().name(), "Plain");
    assert!(!Plain::descriptor().durable());
    assert_eq!(Placed::descriptor().name(), "orders.{env}.Placed");
    assert!(Placed::descriptor().durable());
}
