#![doc = include_str!("docs/crate.md")]
// The docs link the suites, which exist only with the `suites` feature.
#![cfg_attr(not(feature = "suites"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
#[cfg(feature = "suites")]
pub mod delayed;
#[cfg(feature = "suites")]
pub mod faults;
#[cfg(feature = "suites")]
pub mod features;
pub mod harness;
mod runner;
#[cfg(feature = "suites")]
pub mod subscriptions;
#[cfg(feature = "suites")]
pub mod suite;

#[doc = include_str!("docs/guide.md")]
pub mod guide {}

pub use bus::{TestBus, TestError};
pub use harness::{Harness, MemoryHarness, TestEnv};
pub use runner::run;

/// What the macros' expansions name. Not a public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "suites")]
    pub use crate::faults::cases as faults;
    #[cfg(feature = "suites")]
    pub use crate::runner::{fault_case, fault_child, features_case, suite_case};
    #[cfg(feature = "suites")]
    pub use crate::{delayed, features, subscriptions, suite};
}

/// Generates one `#[test]` per behaviour of [`suite`] for the harness expression
/// given (evaluated in each test): each on a fresh two-worker runtime, bounded to
/// 60 s. The invoking crate needs no tokio of its own.
///
/// ```ignore
/// eventing_test::conformance_tests!(my_provider_tests::MyHarness::from_env());
/// ```
#[cfg(feature = "suites")]
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
        $crate::subscription_tests!($harness);
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::suite_case(
                    ::core::stringify!($case),
                    || $harness,
                    $crate::__private::suite::$case,
                );
            }
        )+
    };
}

/// Generates one `#[test]` per feature test of [`features`] for the harness
/// expression given: each on a fresh two-worker runtime, bounded to 60 s, and its
/// managers shut down and its queues removed from the broker whether it passed,
/// failed or timed out.
///
/// The OpenTelemetry and metrics tests install a process-wide `tracing` subscriber
/// and `metrics` recorder: give these tests a test binary of their own (a file in
/// `tests/`) rather than one with tests that install their own.
///
/// ```ignore
/// eventing_test::features_tests!(my_provider_tests::MyHarness::from_env());
/// ```
#[cfg(feature = "suites")]
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
            #[test]
            fn $case() {
                $crate::__private::features_case(
                    ::core::stringify!($case),
                    || $harness,
                    $crate::__private::features::$case,
                );
            }
        )+
    };
}

/// Generates the fault tests of [`faults`] for the harness expression given: one
/// `#[test]` per case, each on its own runtime and holding the kit's lock
/// exclusively so that they run one at a time and alone (they restart and load the
/// broker), plus the `fault_child` test that `killed_consumer` runs in a child
/// process (it does nothing when run normally). Invoke it once per module.
///
/// `faults_tests!(@all [ignore] harness)` marks every case `#[ignore]` (any one
/// attribute between the brackets).
///
/// ```ignore
/// eventing_test::faults_tests!(my_provider_tests::MyHarness::from_env());
/// ```
#[cfg(feature = "suites")]
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
            $crate::__private::fault_child();
        }
    };
    (@cases $attrs:tt $harness:expr; $($case:ident),+ $(,)?) => {
        $( $crate::faults_tests!(@one $attrs $harness; $case); )+
    };
    (@one [$($attr:meta)?] $harness:expr; $case:ident) => {
        #[test]
        $(#[$attr])?
        fn $case() {
            $crate::__private::fault_case(
                ::core::stringify!($case),
                ::core::module_path!(),
                || $harness,
                $crate::__private::faults::$case,
            );
        }
    };
}

/// Generates the delayed-delivery cases of [`delayed`] for the harness expression
/// given: one `#[test]` per case, each on its own runtime and holding the kit's
/// lock exclusively (like the fault tests: they measure time and load the
/// broker), plus the `delayed_child` test that `delayed_retry_killed_consumer`
/// runs in a child process (a no-op when run normally). Invoke it once per module.
/// A provider without delayed delivery fails these cases unless its harness lists
/// the capability as pending ([`Harness::pending`]).
///
/// ```ignore
/// eventing_test::delayed_tests!(my_provider_tests::MyHarness::from_env());
/// ```
#[cfg(feature = "suites")]
#[macro_export]
macro_rules! delayed_tests {
    ($harness:expr) => {
        $crate::delayed_tests!(@cases $harness;
            delayed_retry_outage,
            delayed_retry_exhausted,
            delayed_retry_killed_consumer,
            scheduled_send_on_time,
            scheduled_durable_send_survives_restart,
            delayed_stage_memory_flat,
        );

        /// The consumer process `delayed_retry_killed_consumer` kills; a no-op
        /// unless it set the variables.
        #[test]
        fn delayed_child() {
            $crate::__private::delayed::child_main();
        }
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::delayed::run_case(
                    ::core::stringify!($case),
                    ::core::module_path!(),
                    || $harness,
                    $crate::__private::delayed::$case,
                );
            }
        )+
    };
}

/// The whole kit for one provider: [`conformance_tests!`], [`features_tests!`],
/// [`faults_tests!`] and [`delayed_tests!`] for the harness expression given, in
/// the modules `conformance`, `features`, `faults` and `delayed` of the invoking
/// module. Invoke it once
/// per module; use the three macros instead to run only some of the suites, or to
/// give the features suite a test binary of its own.
///
/// ```ignore
/// // tests/kit.rs of a provider crate
/// eventing_test::provider_kit!(my_provider_tests::MyHarness::from_env());
/// ```
#[cfg(feature = "suites")]
#[macro_export]
macro_rules! provider_kit {
    ($harness:expr) => {
        /// The behaviour suite.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!($harness);
        }
        /// The features suite.
        mod features {
            #[allow(unused_imports)]
            use super::*;
            $crate::features_tests!($harness);
        }
        /// The fault tests.
        mod faults {
            #[allow(unused_imports)]
            use super::*;
            $crate::faults_tests!($harness);
        }
        /// Delayed delivery: the delayed retry stage and scheduled sends.
        mod delayed {
            #[allow(unused_imports)]
            use super::*;
            $crate::delayed_tests!($harness);
        }
    };
}
