//! The event log (after Nameko's eventlog dispatcher).
//!
//! [`EventLogPipeline`] stamps every outgoing event with the service name, the event
//! type, a call id and the call chain: the call ids of the sends that led to this
//! one, so a chain A -> B -> C can be followed (`x-call-chain: a.1,b.2,c.3`). With
//! auto-capture it also emits an [`EventLogEntry`] for every listener invocation
//! (listener, event, outcome, duration), except for excluded listeners. Entries go
//! to the event named by the `{eventlog}` variable (default `eventlog`), so one
//! listener of [`EventLogEntry`] collects them for every service.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
//! use eventing::EventManager;
//! use eventing::eventlog::{EventLogConfig, EventLogPipeline};
//! let config = EventLogConfig { service: "billing".into(), auto_capture: true, ..Default::default() };
//! let manager = EventManager::builder()
//!     .var("eventlog", "audit.eventlog")
//!     .pipeline(EventLogPipeline::new(config))
//!     .build()
//!     .await?;
//! # drop(manager); Ok(()) }
//! ```

use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::event::EventDescriptor;
use crate::listener::ListenerDescriptor;
use crate::manager::WeakManager;
use crate::pipeline::{Call, EnvelopePipeline, Outcome};

/// The service that sent an event.
pub const SERVICE: &str = "x-service";
/// The event's type (its registered name, before `{placeholders}` are filled).
pub const EVENT_TYPE: &str = "x-event-type";
/// A unique id of this send.
pub const CALL_ID: &str = "x-call-id";
/// The call ids that led to this send, oldest first, ending with [`CALL_ID`].
pub const CALL_CHAIN: &str = "x-call-chain";

/// How the event log behaves. Deserializable, so it can come from a config file;
/// [`EventLogConfig::from_env`] reads it from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventLogConfig {
    /// The service name stamped on events and log entries.
    pub service: String,
    /// Emit an [`EventLogEntry`] for every listener invocation.
    pub auto_capture: bool,
    /// Listener names not to capture.
    pub exclude: Vec<String>,
}

impl EventLogConfig {
    /// Reads `EVENTING_SERVICE`, `EVENTING_EVENTLOG_CAPTURE` (`true`/`1`) and
    /// `EVENTING_EVENTLOG_EXCLUDE` (comma-separated listener names).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Self {
            service: var("EVENTING_SERVICE"),
            auto_capture: matches!(var("EVENTING_EVENTLOG_CAPTURE").as_str(), "true" | "1"),
            exclude: var("EVENTING_EVENTLOG_EXCLUDE")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }
    }
}

/// One listener invocation, as auto-capture logs it.
#[crate::event(name = "{eventlog}", crate = "crate")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogEntry {
    /// The service whose listener ran.
    pub service: String,
    /// The listener.
    pub listener: String,
    /// The event address.
    pub event: String,
    /// `ok`, or `failed: <reason>`.
    pub outcome: String,
    /// How long the call took, in microseconds.
    pub duration_us: u64,
    /// The message id of the handled event.
    pub message_id: String,
    /// The call chain the handled event carried.
    pub call_chain: Vec<String>,
    /// When the call ended, RFC 3339.
    pub timestamp: String,
}

tokio::task_local! {
    static CHAIN: Vec<String>;
}

/// The call chain of the current listener invocation (empty outside one).
pub fn current_call_chain() -> Vec<String> {
    CHAIN.try_with(Clone::clone).unwrap_or_default()
}

/// The event-log pipeline.
pub struct EventLogPipeline {
    config: EventLogConfig,
    manager: OnceLock<WeakManager>,
}

impl EventLogPipeline {
    /// A pipeline with this configuration.
    pub fn new(config: EventLogConfig) -> Self {
        Self {
            config,
            manager: OnceLock::new(),
        }
    }
}

impl EnvelopePipeline for EventLogPipeline {
    fn name(&self) -> &'static str {
        "eventlog"
    }

    fn attached(&self, manager: WeakManager) {
        let _ = self.manager.set(manager);
    }

    fn send(&self, envelope: &mut Envelope, event: &EventDescriptor) -> Result<(), BoxError> {
        let call_id = format!(
            "{}.{}",
            self.config.service,
            crate::header::new_message_id()
        );
        let mut chain = current_call_chain();
        chain.push(call_id.clone());
        let headers = &mut envelope.headers;
        headers.insert(SERVICE, &self.config.service);
        headers.insert(EVENT_TYPE, event.name());
        headers.insert(CALL_ID, call_id);
        headers.insert(CALL_CHAIN, chain.join(","));
        Ok(())
    }

    fn around(&self, envelope: &Envelope, listener: &ListenerDescriptor, call: Call) -> Call {
        let chain: Vec<String> = envelope
            .headers
            .get(CALL_CHAIN)
            .map(|c| {
                c.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let capture = self.config.auto_capture
            && listener.event().type_name() != std::any::type_name::<EventLogEntry>()
            && !self.config.exclude.iter().any(|l| l == listener.name());
        if !capture {
            return Box::pin(CHAIN.scope(chain, call));
        }
        let manager = self.manager.get().cloned();
        let mut entry = EventLogEntry {
            service: self.config.service.clone(),
            listener: listener.name().to_string(),
            event: envelope.event().to_string(),
            outcome: String::new(),
            duration_us: 0,
            message_id: envelope.message_id().to_string(),
            call_chain: chain.clone(),
            timestamp: String::new(),
        };
        Box::pin(CHAIN.scope(chain, async move {
            let started = Instant::now();
            let outcome: Outcome = call.await;
            entry.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            entry.outcome = match outcome.error() {
                None => "ok".to_string(),
                Some(error) => format!("failed: {error}"),
            };
            entry.timestamp = crate::header::now_rfc3339();
            if let Some(manager) = manager.and_then(|m| m.upgrade()) {
                if let Err(error) = manager.send_event(&entry).await {
                    tracing::warn!(%error, "could not send an event-log entry");
                }
            }
            outcome
        }))
    }
}
