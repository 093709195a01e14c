//! The whole conformance kit on the STOMP provider over ActiveMQ Classic
//! (`EVENTING_ACTIVEMQ_URL`, default `stomp://127.0.0.1:61623?broker=activemq`, the
//! broker `scripts/activemq.sh` starts): the behaviour suite, the features suite and
//! the five fault tests (`-- --nocapture` shows their `fault <test> stomp-activemq:
//! ...` lines).
#![cfg(feature = "activemq")]

eventing_test::provider_kit!(eventing_tests::activemq::ActiveMqHarness::from_env());
