//! The whole conformance kit on NATS JetStream (`EVENTING_NATS_URL`, default
//! `nats://127.0.0.1:4222`, the nats-server `scripts/nats.sh` starts): the behaviour
//! suite, the features suite and the five fault tests (`-- --nocapture` shows their
//! `fault <test> nats: ...` lines).
#![cfg(feature = "nats")]

eventing_test::provider_kit!(eventing_tests::nats::NatsHarness::from_env());
