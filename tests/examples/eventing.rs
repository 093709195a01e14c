//! The `eventing` command-line tool over the events of this workspace's behaviour
//! suite (a binary sees only the events it links; in your service, call
//! `eventing::cli::main()` from a binary that links your events):
//!
//! ```text
//! cargo run --example eventing -- registry
//! cargo run --example eventing -- topology --server web-1 --var env=prod
//! EVENTING_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example eventing --features amqp -- \
//!     dead-letters --queue suite.prod.Flaky::Flaky --var env=prod
//! ```

// Link the suite's events and listeners, and the providers the build enables.
#[cfg(feature = "amqp")]
use eventing_amqp as _;
#[cfg(feature = "nats")]
use eventing_nats as _;
#[cfg(feature = "redis")]
use eventing_redis as _;
#[cfg(feature = "stomp")]
use eventing_stomp as _;
use eventing_tests as _;

fn main() -> std::process::ExitCode {
    eventing::cli::main()
}
