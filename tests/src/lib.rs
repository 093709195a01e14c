//! Cross-provider behaviour tests for `eventing`.
//!
//! The suite in [`suite`] is written once, generic over a [`Harness`] that says how to
//! reach a provider. `conformance_tests!` instantiates it as `#[tokio::test]`s, once
//! per provider (`tests/memory.rs`, `tests/amqp.rs`, `tests/stomp.rs`).

pub mod harness;
pub mod suite;

pub use harness::{Harness, MemoryHarness, TestEnv};

/// Generates one `#[tokio::test]` per behaviour of [`suite`] for the harness
/// expression given.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            round_trip,
            headers_and_session,
            competing_consumers,
            per_process_broadcast,
            retry_then_dead_letter,
            panic_is_retried_then_dead_lettered,
            undecodable_body_is_dead_lettered,
            unknown_event_is_dead_lettered,
            shutdown_drains,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                let result = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    $crate::suite::$case(&harness),
                )
                .await;
                match result {
                    Ok(()) => {}
                    Err(_) => panic!("{} timed out after 60 s", stringify!($case)),
                }
            }
        )+
    };
}
