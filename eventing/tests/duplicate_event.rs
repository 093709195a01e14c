//! Two event types with one name in one binary: `start()` names both.

use eventing::memory::MemoryProvider;
use eventing::{Error, EventManager, event};
use serde::{Deserialize, Serialize};

mod billing {
    use super::*;
    /// One `Paid`.
    #[event(name = "Paid")]
    #[derive(Serialize, Deserialize)]
    pub(crate) struct Paid;
}

mod shipping {
    use super::*;
    /// Another `Paid`.
    #[event(name = "Paid")]
    #[derive(Serialize, Deserialize)]
    pub(crate) struct Paid;
}

#[tokio::test]
async fn start_reports_both_types() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .build()
        .await
        .expect("build");
    let error = manager
        .start()
        .await
        .expect_err("duplicate names must fail");
    assert!(matches!(error, Error::DuplicateEvent { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("`Paid`"), "{message}");
    assert!(message.contains("billing::Paid"), "{message}");
    assert!(message.contains("shipping::Paid"), "{message}");
    let _ = (billing::Paid, shipping::Paid);
}
