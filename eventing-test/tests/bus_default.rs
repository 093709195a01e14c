//! `TestBus::start()` runs every registered listener, as a manager does by default:
//! with the kit's suites linked (the `suites` feature) that cannot work, and
//! the error says what to do instead.

use std::time::Duration;

use eventing::{Context, EventListener, ListenerResult, event, event_listener};
use eventing_test::{TestBus, TestError};
use serde::{Deserialize, Serialize};

#[event(name = "bus-default.Rang")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Rang {
    n: u32,
}

#[event_listener(Rang)]
struct Bell;

impl EventListener<Rang> for Bell {
    async fn on(&self, _: Rang, _: &Context) -> ListenerResult {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_listener_or_a_clear_error() -> Result<(), TestError> {
    let kit_linked = eventing::registry::listeners()
        .iter()
        .any(|l| l.type_name().starts_with("eventing_test::"));
    assert_eq!(
        kit_linked,
        cfg!(feature = "suites"),
        "the suites' listeners are in the registry exactly when the feature is on"
    );
    match TestBus::start().await {
        Ok(bus) => {
            assert!(!kit_linked);
            bus.send(&Rang { n: 1 }).await?;
            let rang = bus
                .wait_handled::<Rang>("Bell", 1, Duration::from_secs(10))
                .await?;
            assert_eq!(rang, [Rang { n: 1 }]);
            bus.shutdown().await
        }
        Err(error @ TestError::SuitesLinked { .. }) => {
            assert!(kit_linked);
            let text = error.to_string();
            assert!(text.contains("default-features = false"), "{text}");
            assert!(text.contains("only_bound_listeners"), "{text}");
            // Selecting the listener under test works.
            let bus = TestBus::with(|b| b.listener_type::<Bell>()).await?;
            bus.send(&Rang { n: 2 }).await?;
            let rang = bus
                .wait_handled::<Rang>("Bell", 1, Duration::from_secs(10))
                .await?;
            assert_eq!(rang, [Rang { n: 2 }]);
            bus.shutdown().await
        }
        Err(other) => panic!("{other}"),
    }
}
