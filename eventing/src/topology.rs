//! The queues a manager creates, named by the contract:
//! `<event>::<listener>` and `<event>::<listener>-<server>` for per-process listeners.

use std::fmt;
use std::time::Duration;

/// One queue: which event feeds it and who consumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// The event address it is bound to.
    pub event: String,
    /// The listener's name.
    pub listener: &'static str,
    /// Durable queue (the event is durable).
    pub durable: bool,
    /// One queue per server, removed when the server goes away.
    pub per_process: bool,
    /// The listener's delayed retry stage (its `RetryPolicy::delays`, each once,
    /// in the policy's order): a provider with the `delayed` capability prepares
    /// a place per delay at `declare` (RabbitMQ: the queue
    /// [`delay_queue`](Self::delay_queue)). Empty: no delayed stage.
    pub retry_delays: Vec<Duration>,
}

impl QueueSpec {
    /// Builds the spec with the contract's name.
    pub fn new(
        event: &str,
        listener: &'static str,
        durable: bool,
        per_process: bool,
        server: &str,
    ) -> Self {
        Self {
            name: queue_name(event, listener, per_process.then_some(server)),
            event: event.to_string(),
            listener,
            durable,
            per_process,
            retry_delays: Vec::new(),
        }
    }

    /// The queue of singleton listeners of `event`: `<event>::singleton`, shared by
    /// every singleton listener of the event, so one of them handles each event.
    pub fn singleton(event: &str, listener: &'static str, durable: bool) -> Self {
        Self {
            name: queue_name(event, SINGLETON, None),
            event: event.to_string(),
            listener,
            durable,
            per_process: false,
            retry_delays: Vec::new(),
        }
    }

    /// The same queue with a delayed retry stage after these delays (duplicates
    /// and zero delays are left out).
    #[must_use]
    pub fn with_retry_delays(mut self, delays: &[Duration]) -> Self {
        self.retry_delays.clear();
        for &delay in delays {
            if !delay.is_zero() && !self.retry_delays.contains(&delay) {
                self.retry_delays.push(delay);
            }
        }
        self
    }

    /// The name of the queue where messages of this queue wait `delay` in the
    /// delayed retry stage, for providers that keep them in queues:
    /// `<queue>.delay.<milliseconds>`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = eventing::topology::QueueSpec::new("E", "L", true, false, "srv");
    /// assert_eq!(q.delay_queue(Duration::from_secs(5)), "E::L.delay.5000");
    /// ```
    pub fn delay_queue(&self, delay: Duration) -> String {
        format!("{}.delay.{}", self.name, delay.as_millis())
    }

    /// The names of every [`delay_queue`](Self::delay_queue) of this queue.
    pub fn delay_queues(&self) -> Vec<String> {
        self.retry_delays
            .iter()
            .map(|&delay| self.delay_queue(delay))
            .collect()
    }

    /// The dead-letter queue's name: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.name)
    }
}

/// The listener part of a singleton queue's name.
pub const SINGLETON: &str = "singleton";

/// The queue name for a listener of an event: `<event>::<listener>`, or
/// `<event>::<listener>-<server>` when `server` is given (per-process listeners).
///
/// ```
/// assert_eq!(eventing::topology::queue_name("HelloEvent", "HelloListener", None), "HelloEvent::HelloListener");
/// assert_eq!(eventing::topology::queue_name("HelloEvent", "Cache", Some("web-1")), "HelloEvent::Cache-web-1");
/// ```
pub fn queue_name(event: &str, listener: &str, server: Option<&str>) -> String {
    match server {
        Some(server) => format!("{event}::{listener}-{server}"),
        None => format!("{event}::{listener}"),
    }
}

/// An event as the manager will send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// The resolved name (address).
    pub name: String,
    /// The Rust type.
    pub type_name: &'static str,
    /// Durable.
    pub durable: bool,
}

/// Everything a manager declares: the registered events and its listeners' queues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// The manager's server name.
    pub server: String,
    /// Every registered event.
    pub events: Vec<EventInfo>,
    /// One queue per active listener.
    pub queues: Vec<QueueSpec>,
    /// Queue name -> where it lives on the broker, for providers whose broker
    /// names differ from the contract's ([`Provider::broker_names`](crate::provider::Provider::broker_names)).
    pub broker_names: std::collections::BTreeMap<String, String>,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "server {}", self.server)?;
        for event in &self.events {
            let durable = if event.durable { " durable" } else { "" };
            writeln!(f, "event {}{durable} ({})", event.name, event.type_name)?;
            for queue in self.queues.iter().filter(|q| q.event == event.name) {
                let kind = if queue.per_process {
                    "per process"
                } else if queue.name.ends_with(&format!("::{SINGLETON}")) {
                    "singleton"
                } else {
                    "competing"
                };
                write!(
                    f,
                    "  queue {} <- listener {} ({kind}), dead letters {}",
                    queue.name,
                    queue.listener,
                    queue.dead_letter_queue()
                )?;
                match self.broker_names.get(&queue.name) {
                    Some(on_broker) => writeln!(f, "; on the broker: {on_broker}")?,
                    None => writeln!(f)?,
                }
                if !queue.retry_delays.is_empty() {
                    let stages: Vec<String> = queue
                        .retry_delays
                        .iter()
                        .map(|&delay| format!("{delay:?} in {}", queue.delay_queue(delay)))
                        .collect();
                    writeln!(f, "    delayed retries: {}", stages.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let q = QueueSpec::new("E", "L", true, false, "srv");
        assert_eq!(q.name, "E::L");
        assert_eq!(q.dead_letter_queue(), "E::L.dlq");
        let p = QueueSpec::new("E", "L", false, true, "srv");
        assert_eq!(p.name, "E::L-srv");
    }

    #[test]
    fn delay_queues_follow_the_rule_and_show_in_the_topology() {
        let d = |ms| Duration::from_millis(ms);
        let q = QueueSpec::new("E", "L", true, false, "srv").with_retry_delays(&[
            d(2000),
            d(0),
            d(500),
            d(2000),
        ]);
        assert_eq!(q.retry_delays, [d(2000), d(500)], "no zeros, no duplicates");
        assert_eq!(q.delay_queues(), ["E::L.delay.2000", "E::L.delay.500"]);
        let topology = Topology {
            server: "srv".into(),
            events: vec![EventInfo {
                name: "E".into(),
                type_name: "E",
                durable: true,
            }],
            queues: vec![q],
            broker_names: Default::default(),
        };
        let text = topology.to_string();
        assert!(
            text.contains("delayed retries: 2s in E::L.delay.2000, 500ms in E::L.delay.500"),
            "{text}"
        );
    }
}
