//! The issue 6 features (event log, versions, `{env}` names, singleton, trace
//! context, codecs, metrics, command line) on RabbitMQ's STOMP plugin
//! (`EVENTING_STOMP_URL`, default `stomp://guest:guest@127.0.0.1:61613`).
#![cfg(feature = "stomp")]

eventing_test::features_tests!(eventing_tests::stomp::StompHarness::from_env());
