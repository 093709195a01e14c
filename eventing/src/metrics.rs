//! Metrics through the `metrics` facade (cargo feature `metrics`); without the
//! feature these are no-ops that compile away.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `eventing_sent_total` | counter | `event` |
//! | `eventing_handled_total` | counter | `event`, `listener` |
//! | `eventing_failed_total` | counter | `event`, `listener` (calls that failed) |
//! | `eventing_retried_total` | counter | `event`, `listener` |
//! | `eventing_delayed_total` | counter | `event`, `listener` (hand-overs to the delayed retry stage) |
//! | `eventing_dead_lettered_total` | counter | `event`, `listener` |
//! | `eventing_handling_seconds` | histogram | `event`, `listener` (successful calls) |

#[cfg(feature = "metrics")]
mod enabled {
    use std::time::Instant;

    /// Handles for one listener, registered once at start.
    pub(crate) struct ListenerMetrics {
        handled: metrics::Counter,
        failed: metrics::Counter,
        retried: metrics::Counter,
        delayed: metrics::Counter,
        dead_lettered: metrics::Counter,
        handling: metrics::Histogram,
    }

    /// When a call started.
    pub(crate) type Started = Instant;

    pub(crate) fn now() -> Started {
        Instant::now()
    }

    impl ListenerMetrics {
        pub(crate) fn new(event: &str, listener: &'static str) -> Self {
            let labels = [
                ("event", event.to_string()),
                ("listener", listener.to_string()),
            ];
            Self {
                handled: metrics::counter!("eventing_handled_total", &labels),
                failed: metrics::counter!("eventing_failed_total", &labels),
                retried: metrics::counter!("eventing_retried_total", &labels),
                delayed: metrics::counter!("eventing_delayed_total", &labels),
                dead_lettered: metrics::counter!("eventing_dead_lettered_total", &labels),
                handling: metrics::histogram!("eventing_handling_seconds", &labels),
            }
        }

        pub(crate) fn handled(&self, started: Started) {
            self.handled.increment(1);
            self.handling.record(started.elapsed().as_secs_f64());
        }

        pub(crate) fn failed(&self) {
            self.failed.increment(1);
        }

        pub(crate) fn retried(&self) {
            self.retried.increment(1);
        }

        pub(crate) fn delayed(&self) {
            self.delayed.increment(1);
        }

        pub(crate) fn dead_lettered(&self) {
            self.dead_lettered.increment(1);
        }
    }

    pub(crate) fn sent(event: &str) {
        metrics::counter!("eventing_sent_total", "event" => event.to_string()).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod enabled {
    /// Nothing to record without the `metrics` feature.
    pub(crate) struct ListenerMetrics;

    /// Zero-sized without the feature.
    #[derive(Clone, Copy)]
    pub(crate) struct Started;

    pub(crate) fn now() -> Started {
        Started
    }

    impl ListenerMetrics {
        pub(crate) fn new(_: &str, _: &'static str) -> Self {
            Self
        }
        pub(crate) fn handled(&self, _: Started) {}
        pub(crate) fn failed(&self) {}
        pub(crate) fn retried(&self) {}
        pub(crate) fn delayed(&self) {}
        pub(crate) fn dead_lettered(&self) {}
    }

    pub(crate) fn sent(_: &str) {}
}

pub(crate) use enabled::{ListenerMetrics, Started, now, sent};
