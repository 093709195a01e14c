// A mistake in `#[event_listener]` on a listener whose impl exists: only the
// mistake is reported (the listener is not registered).
use eventing::{event, event_listener, Context, EventListener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Hello;

#[event_listener(Hello, per_proces = true)]
struct Typo;

impl EventListener<Hello> for Typo {
    async fn on(&self, _: Hello, _: &Context) -> ListenerResult {
        Ok(())
    }
}

fn main() {}
