use serde::{Deserialize, Serialize};

mod runtime {
    pub use eventing::*;
}

#[eventing::event(crate = "crate::runtime")]
#[derive(Serialize, Deserialize)]
struct Renamed;

#[eventing::event_listener(Renamed, crate = "crate::runtime")]
struct Listener;

impl runtime::EventListener<Renamed> for Listener {
    async fn on(&self, _: Renamed, _: &runtime::Context) -> runtime::ListenerResult {
        Ok(())
    }
}

fn main() {
    use runtime::Event;
    assert_eq!(Renamed::descriptor().name(), "Renamed");
}
