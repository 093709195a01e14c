//! The behaviour suite on RabbitMQ over AMQP 0-9-1 (`EVENTING_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![cfg(feature = "amqp")]

eventing_test::conformance_tests!(eventing_tests::amqp::AmqpHarness::from_env());
