//! Cross-provider behaviour tests for `eventing`.
//!
//! The suite in [`suite`] is written once, generic over a [`Harness`] that says how to
//! reach a provider. `conformance_tests!` instantiates it as `#[tokio::test]`s, once
//! per provider (`tests/memory.rs`, `tests/amqp.rs`, `tests/stomp.rs`).

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod faults;
pub mod features;
pub mod harness;
pub mod nodes;
#[cfg(feature = "stomp")]
pub mod stomp;
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
            dead_letters_are_replayed,
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

/// Generates one `#[tokio::test]` per feature test of [`features`] for the harness
/// expression given: each bounded to 60 s, and its managers shut down and its
/// queues removed from the broker whether it passed, failed or timed out.
#[macro_export]
macro_rules! features_tests {
    ($harness:expr) => {
        $crate::features_tests!(@cases $harness;
            event_log_chain,
            versioned_events,
            env_templates,
            singleton_kind,
            trace_context_chain,
            opentelemetry_chain,
            codecs,
            metrics_counters,
            cli_send_and_dead_letters,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                let mut env = $crate::TestEnv::new(&harness);
                let limit = std::time::Duration::from_secs(60);
                let outcome =
                    $crate::features::bounded_unwind($crate::features::$case(&mut env), limit)
                        .await;
                // Clean up even after a failure; bounded too.
                let finished = tokio::time::timeout(limit, env.finish()).await;
                $crate::features::rethrow(stringify!($case), outcome, limit);
                assert!(finished.is_ok(), "{}: cleanup timed out", stringify!($case));
            }
        )+
    };
}

/// Generates the fault tests of [`faults`] for the harness expression given: one
/// `#[test]` per case, each on its own runtime and holding a process-wide lock so
/// that they run one at a time (they restart and load the broker), plus the
/// `fault_child` test that `killed_consumer` runs in a child process (it does
/// nothing when run normally). Invoke it once per module.
#[macro_export]
macro_rules! faults_tests {
    ($harness:expr) => {
        $crate::faults_tests!(@all [] $harness);
    };
    (@all $attrs:tt $harness:expr) => {
        $crate::faults_tests!(@cases $attrs $harness;
            broker_restart_during_stream,
            killed_consumer,
            poison_messages,
            backlog_drain,
            graceful_shutdown_during_stream,
        );

        /// The consumer process `killed_consumer` kills; a no-op unless it set
        /// the variables.
        #[test]
        fn fault_child() {
            $crate::faults::child_main();
        }
    };
    (@cases $attrs:tt $harness:expr; $($case:ident),+ $(,)?) => {
        $( $crate::faults_tests!(@one $attrs $harness; $case); )+
    };
    (@one [$($attr:meta)?] $harness:expr; $case:ident) => {
        #[test]
        $(#[$attr])?
        fn $case() {
            let _one_at_a_time = $crate::faults::serial();
            let harness = $harness;
            let ctx = $crate::faults::Ctx::new(module_path!());
            $crate::faults::block_on(
                stringify!($case),
                $crate::faults::$case(&harness, &ctx),
            );
        }
    };
}
