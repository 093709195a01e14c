// Two mistakes in `#[event]`: both are reported, and nothing else. The type still
// implements `Event` (a stand-in), so the listener, its impl and the generic use
// below add no error of their own.
use eventing::{event, event_listener, Context, Event, EventListener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event(durable = "yes", bogus = 1)]
#[derive(Serialize, Deserialize)]
struct Shipped {
    id: u64,
}

#[event_listener(Shipped)]
struct Mailer;

impl EventListener<Shipped> for Mailer {
    async fn on(&self, event: Shipped, _: &Context) -> ListenerResult {
        let _ = event.id;
        Ok(())
    }
}

fn needs<E: Event>() {}

fn main() {
    needs::<Shipped>();
    let _ = Shipped::descriptor().name();
}
