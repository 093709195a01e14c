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
