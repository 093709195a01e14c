//! The reference provider passes the whole conformance kit: the behaviour suite,
//! the features suite and the five fault tests.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use eventing::BoxFuture;
use eventing_reference::ReferenceProvider;
use eventing_test::Harness;

/// One broker per test (`reference://<env>`), in this process.
struct ReferenceHarness;

/// The brokers handed out, so a restart reaches every one of them.
static BROKERS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

impl Harness for ReferenceHarness {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn url(&self, env: &str) -> String {
        BROKERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(env.to_owned());
        format!("reference://{env}")
    }

    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            let names: Vec<String> = BROKERS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            let restarts = names.iter().map(|name| async move {
                ReferenceProvider::named(name)
                    .restart(Duration::from_millis(500))
                    .await;
            });
            futures_util::future::join_all(restarts).await;
            true
        })
    }

    fn in_process(&self) -> bool {
        true
    }
}

eventing_test::provider_kit!(ReferenceHarness);
