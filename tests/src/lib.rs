//! Cross-provider behaviour tests for `eventing`, through the conformance kit
//! `eventing-test`: the suites are written once there, generic over a
//! [`Harness`] that says how to reach a provider; the test files here invoke the
//! kit's macros once per provider (`tests/memory.rs`, `tests/amqp.rs`,
//! `tests/stomp.rs`, `tests/features_*.rs`, `tests/faults.rs`). What lives here is
//! what only RabbitMQ needs: the AMQP and STOMP harnesses, `rabbitmqctl`, and
//! nodes started by the tests.

#[cfg(feature = "activemq")]
pub mod activemq;
#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "nats")]
pub mod nats;
pub mod nodes;
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "stomp")]
pub mod stomp;

pub use eventing_test::{Harness, MemoryHarness, TestEnv};

/// The server URL of a harness: the environment variable `url_variable`, or
/// `default`. With `log_variable` set (e.g. `EVENTING_NATS_LOG=eventing_nats=debug`)
/// the provider's logs go to the test output as that filter says.
pub fn url_from_env(url_variable: &str, default: &str, log_variable: &str) -> String {
    if let Ok(filter) = std::env::var(log_variable) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    std::env::var(url_variable).unwrap_or_else(|_| default.to_string())
}
