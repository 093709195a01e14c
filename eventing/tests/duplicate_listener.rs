//! Two listener types with one name on one event: `start()` names both.

use eventing::{
    Context, Error, EventListener, EventManager, ListenerResult, event, event_listener,
};
use serde::{Deserialize, Serialize};

/// The event.
#[event]
#[derive(Serialize, Deserialize)]
pub struct Joined;

/// One `Greeter`.
#[event_listener(Joined, name = "Greeter")]
pub struct English;

/// Another `Greeter`.
#[event_listener(Joined, name = "Greeter")]
pub struct French;

impl EventListener<Joined> for English {
    async fn on(&self, _: Joined, _: &Context) -> ListenerResult {
        Ok(())
    }
}

impl EventListener<Joined> for French {
    async fn on(&self, _: Joined, _: &Context) -> ListenerResult {
        Ok(())
    }
}

#[tokio::test]
async fn start_reports_both_types() {
    let manager = EventManager::builder()
        .url("memory://dup")
        .build()
        .await
        .expect("build");
    let error = manager
        .start()
        .await
        .expect_err("duplicate names must fail");
    assert!(
        matches!(error, Error::DuplicateListener { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("`Greeter`") && message.contains("`Joined`"),
        "{message}"
    );
    assert!(
        message.contains("English") && message.contains("French"),
        "{message}"
    );
}
