//! The fault tests of `eventing_test::faults` on every provider built in: broker
//! restart mid-stream, a killed consumer, poison messages, backlog drain with bounded
//! memory, shutdown mid-stream; and the delayed-delivery cases of
//! `eventing_test::delayed` (delayed retry stage, scheduled sends). Each prints one `fault <test> <provider>: ...` line
//! (`cargo test -p eventing-tests --features stomp,amqp --test faults -- --nocapture`).
//!
//! These tests restart the broker and load it, which would disturb anything else
//! using it at the same time, so they run one at a time: every test takes a
//! process-wide lock (`faults_tests!`), and cargo runs test binaries one after
//! another (this binary never overlaps another test binary of the workspace).

mod memory {
    eventing_test::faults_tests!(eventing_test::MemoryHarness);
    eventing_test::delayed_tests!(eventing_test::MemoryHarness);
}

#[cfg(feature = "stomp")]
mod stomp {
    eventing_test::faults_tests!(eventing_tests::stomp::StompHarness::from_env());
    eventing_test::delayed_tests!(eventing_tests::stomp::StompHarness::from_env());
}

#[cfg(feature = "amqp")]
mod amqp {
    eventing_test::faults_tests!(eventing_tests::amqp::AmqpHarness::from_env());
    eventing_test::delayed_tests!(eventing_tests::amqp::AmqpHarness::from_env());
}
