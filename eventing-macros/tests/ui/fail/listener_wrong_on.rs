use eventing::{event, event_listener, EventListener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Hello;

#[event_listener(Hello)]
struct NoContext;

impl EventListener<Hello> for NoContext {
    async fn on(&self, _: Hello) -> ListenerResult {
        Ok(())
    }
}

#[event_listener(Hello, name = "Sync")]
struct NotAsync;

impl EventListener<Hello> for NotAsync {
    fn on(&self, _: Hello, _: &eventing::Context) -> ListenerResult {
        Ok(())
    }
}

fn main() {}
