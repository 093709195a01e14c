//! Fault tests, written once and run on every provider (`faults_tests!`): a broker
//! restart in the middle of a stream, a consumer killed while it holds
//! unacknowledged messages, poison messages, a large backlog drained with bounded
//! memory, and a shutdown in the middle of a stream.
//!
//! [`support`] holds what they are built from (the counted [`Item`] event, the
//! [`Outcome`] line, paced sending, memory sampling, the child process, running a
//! case); [`cases`] holds the five tests. Both are re-exported here.

pub mod cases;
pub mod support;

pub use cases::*;
pub use support::*;
