//! The issue 6 features (event log, versions, `{env}` names, singleton, trace
//! context, codecs, metrics, command line) on RabbitMQ over AMQP 0-9-1
//! (`EVENTING_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![cfg(feature = "amqp")]

eventing_test::features_tests!(eventing_tests::amqp::AmqpHarness::from_env());
